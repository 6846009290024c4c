"""The "SPO Scorer" tab: drop images, enter a prompt, see them ranked by the SPM.

`rank_images` is the tab's logic (no UI); `create_tab` builds the gradio tab for
`script_callbacks.on_ui_tabs`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .guided import score_images
from .prompt_text import plain_prompt
from .spm_files import SPMUnavailable


@dataclass(frozen=True)
class RankedImage:
    rank: int
    name: str
    score: float
    image: Image.Image


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> Tensor[1, 3, H, W] in [-1, 1] (alpha dropped, greyscale expanded)."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def rank_images(spm, images: list[Image.Image], names: list[str], prompt: str, timestep: int = 0) -> list[RankedImage]:
    """Score each image against `prompt` at `timestep` (0 = a finished image), best first.

    Images are scored one at a time: uploads differ in size, and the SPM resizes each to 224.
    Ties keep upload order.
    """
    if len(images) != len(names):
        raise ValueError(f"got {len(images)} images but {len(names)} names")
    scores = [
        float(score_images(spm, pil_to_tensor(img), [prompt], torch.tensor([int(timestep)]))[0]) for img in images
    ]
    order = sorted(range(len(images)), key=lambda i: -scores[i])
    return [RankedImage(r + 1, names[i], scores[i], images[i]) for r, i in enumerate(order)]


def score_uploads(files, prompt: str, spm_name: str, timestep: float, load_spm):
    """The tab's button: (gallery items, table rows, message). Never raises.

    files: what gr.Files gives (paths, or objects with `.name`). load_spm(name) -> SPM.
    """
    if not files:
        return [], [], "Drop one or more images first."
    if not str(prompt or "").strip():
        return [], [], "Enter the prompt the images were made for."
    try:
        spm = load_spm(spm_name)
        paths = [getattr(f, "name", f) for f in files]
        images = [Image.open(path) for path in paths]
        names = [os.path.basename(path) for path in paths]
        ranked = rank_images(spm, images, names, plain_prompt(prompt), int(timestep))
    except SPMUnavailable as e:
        return [], [], str(e)
    except Exception as e:  # a bad upload or a prompt the SPM rejects: say so in the tab
        return [], [], f"SPO Scorer: {type(e).__name__}: {e}"
    gallery = [(r.image, f"#{r.rank}  {r.score:.3f}  {r.name}") for r in ranked]
    rows = [[r.rank, r.name, round(r.score, 4)] for r in ranked]
    return gallery, rows, f"Scored {len(rows)} image(s) with {spm_name}."


def create_tab(list_spms, load_spm):
    """The gradio tab; list_spms() -> names, load_spm(name) -> SPM. Returns on_ui_tabs' list."""
    import gradio as gr

    with gr.Blocks(analytics_enabled=False) as tab:
        with gr.Row():
            with gr.Column():
                files = gr.Files(label="Images", file_types=["image"])
                prompt = gr.Textbox(label="Prompt", lines=2)
                with gr.Row():
                    choices = list_spms()
                    spm = gr.Dropdown(choices, value=choices[0] if choices else None,
                                      label="Step-aware preference model",
                                      allow_custom_value=True)
                    refresh = gr.Button("\U0001f504", scale=0)
                timestep = gr.Slider(0, 999, value=0, step=1, label="Timestep (0 = finished image)")
                run = gr.Button("Score", variant="primary")
            with gr.Column():
                message = gr.Markdown()
                table = gr.Dataframe(headers=["rank", "image", "score"], datatype=["number", "str", "number"],
                                     interactive=False)
                gallery = gr.Gallery(label="Ranked", columns=4)
        refresh.click(fn=lambda: gr.update(choices=list_spms()), inputs=[], outputs=[spm])
        run.click(
            fn=lambda f, pr, s, t: score_uploads(f, pr, s, t, load_spm),
            inputs=[files, prompt, spm, timestep],
            outputs=[gallery, table, message],
        )
    return [(tab, "SPO Scorer", "spo_scorer")]
