"""The "SPO Scorer" tab: drop images, enter a prompt, see them ranked by the SPM or by a released
scorer (HPSv2, ImageReward, PickScore, LAION aesthetic, CLIPScore; trainer.scorers), from the SPM folder.

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
from .spm_files import SPMCache, SPMUnavailable

SCORER_KINDS = ("spm", "hpsv2", "imagereward", "pickscore", "aesthetic", "clipscore")
_CACHES: dict[str, SPMCache] = {}  # one loaded model per kind


def load_scorer(kind: str, path: str, device=None, dtype=None):
    """A trainer.scorers scorer of `kind` from `path` in the SPM folder, loaded once (reloaded when the file
    changes). A file inside a CLIP folder (PickScore, CLIPScore) stands for the folder; tokenizers and the
    aesthetic MLP's CLIP come from beside the checkpoint (tokenizer/, clip/)."""

    def load(p: str):
        from spo_studio.scorers import ScorerSpec, load_scorer as load_any

        folder = os.path.dirname(p)
        if kind in ("pickscore", "clipscore") and os.path.isfile(p) and os.path.isfile(os.path.join(folder, "config.json")):
            p = folder
        return load_any(ScorerSpec(kind, kind, p), device=device or "cpu", dtype=dtype or torch.float32)

    if kind not in _CACHES:
        _CACHES[kind] = SPMCache(loader=load)
    return _CACHES[kind].get(path).model


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


def create_tab(list_spms, load_spm, load_other=None):
    """The gradio tab; list_spms() -> names, load_spm(name) -> SPM, load_other(kind, name) -> a scorer of
    another kind (None: the SPM only). Returns on_ui_tabs' list."""
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
                kind = gr.Dropdown(list(SCORER_KINDS) if load_other else ["spm"], value="spm", label="Scorer",
                                   info="spm: the file is an SPM; else the file is that scorer's checkpoint")
                timestep = gr.Slider(0, 999, value=0, step=1, label="Timestep (0 = finished image)")
                run = gr.Button("Score", variant="primary")
            with gr.Column():
                message = gr.Markdown()
                table = gr.Dataframe(headers=["rank", "image", "score"], datatype=["number", "str", "number"],
                                     interactive=False)
                gallery = gr.Gallery(label="Ranked", columns=4)
        refresh.click(fn=lambda: gr.update(choices=list_spms()), inputs=[], outputs=[spm])
        def loader(k):
            return load_spm if k == "spm" or load_other is None else (lambda name: load_other(k, name))

        run.click(
            fn=lambda f, pr, s, t, k="spm": score_uploads(f, pr, s, t, loader(k)),
            inputs=[files, prompt, spm, timestep, kind],
            outputs=[gallery, table, message],
        )
    return [(tab, "SPO Scorer", "spo_scorer")]
