"""Load SPM and StepAwareScore: the step-aware preference model in ComfyUI (glue over trainer.spm)."""
from __future__ import annotations

import os

import torch

from .convert import comfy_image_to_ours, select_rows
from .errors import NodeInputError, check_spm, library_imports, one_line
from .host import SPM_FOLDER, filename_list, full_path, show_text_on_node, torch_device

CATEGORY = "spo-studio"
SCORE_CHUNK = 16  # images per SPM forward: bounds memory for large batches


def load_spm_for_comfy(path: str, device: torch.device, dtype: torch.dtype):
    """spo_studio.spm.load_spm for a file picked from models/spo.

    A file whose folder also holds a config.json (our own format, or a CLIP model folder such
    as PickScore's) loads the whole folder. A lone released .bin/.safetensors carries no
    tokenizer; ComfyUI's bundled CLIP tokenizer (the same BPE vocabulary PickScore uses) is used
    so that loading stays offline.
    """
    with library_imports("Load SPM"):
        from spo_studio.spm.weights import load_spm

    folder = os.path.dirname(path)
    if os.path.isfile(os.path.join(folder, "config.json")):
        return load_spm(folder, device=device, dtype=dtype)
    return load_spm(path, device=device, dtype=dtype, tokenizer=_bundled_clip_tokenizer())


def _bundled_clip_tokenizer() -> str | None:
    try:
        import comfy.sd1_clip
    except ImportError:
        return None
    folder = os.path.join(os.path.dirname(os.path.abspath(comfy.sd1_clip.__file__)), "sd1_tokenizer")
    return folder if os.path.isdir(folder) else None


def score_images(spm, images: torch.Tensor, prompt: str, timestep: int | torch.Tensor) -> torch.Tensor:
    """SPM scores Tensor[B] (float32, CPU) of our-layout images [B, 3, H, W] in [−1, 1], in chunks
    (spo_studio.scoring.score_batch: the one batch-scoring path of both hosts)."""
    with library_imports("SPO scoring"):
        from spo_studio.scoring import score_batch

    return score_batch(spm, images, prompt, timestep, chunk=SCORE_CHUNK)


class LoadSPM:
    """Load a step-aware preference model (SPM) from models/spo."""

    DESCRIPTION = (
        "Loads a step-aware preference model from models/spo: the released SPO .bin/.safetensors files, "
        "an spo-studio SPM folder, or a PickScore-style CLIP folder (step-agnostic). Works offline."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("SPM",)
    RETURN_NAMES = ("spm",)
    OUTPUT_TOOLTIPS = ("The preference model, for StepAwareScore and SPOSampler.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "spm_name": (filename_list(SPM_FOLDER), {
                    "tooltip": "SPM file in models/spo. For a folder-format SPM pick its model.safetensors; "
                               "the folder's config.json is read with it.",
                }),
                "precision": (["auto", "fp32", "fp16", "bf16"], {
                    "default": "auto",
                    "tooltip": "Weights dtype. auto: fp16 on a GPU, fp32 on the CPU. The released SPMs are "
                               "1.3 B parameters (5.2 GB in fp32).",
                }),
            }
        }

    def load(self, spm_name: str, precision: str = "auto"):
        path = full_path(SPM_FOLDER, spm_name, "Load SPM")
        device = torch_device()
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(
            precision, torch.float16 if device.type == "cuda" else torch.float32
        )
        try:
            spm = load_spm_for_comfy(path, device, dtype)
        except (ValueError, OSError, RuntimeError) as e:
            raise one_line(f"Load SPM ({spm_name})", e) from None
        return (spm,)


class StepAwareScore:
    """Score an IMAGE batch with the SPM: scores, the batch sorted best-first, and the top n."""

    DESCRIPTION = (
        "Best-of-k in one node: scores every image of the batch against the prompt with the step-aware "
        "preference model and returns the batch sorted best-first, the scores, and the top n images."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "FLOAT", "IMAGE")
    RETURN_NAMES = ("sorted_images", "scores", "top_images")
    OUTPUT_IS_LIST = (False, True, False)
    OUTPUT_TOOLTIPS = (
        "The whole batch, best first.",
        "One score per image, in the same best-first order (higher is better).",
        "The top_n best images.",
    )
    FUNCTION = "score"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The batch to rank, e.g. a VAE Decode of k samples of one prompt."}),
                "spm": ("SPM", {"tooltip": "A preference model from Load SPM."}),
                "prompt": ("STRING", {
                    "multiline": True, "default": "",
                    "tooltip": "The text the images should match; usually the positive prompt.",
                }),
                "timestep": ("INT", {
                    "default": 0, "min": 0, "max": 999,
                    "tooltip": "Denoising step the images come from; 0 for finished images.",
                }),
                "top_n": ("INT", {
                    "default": 1, "min": 1, "max": 4096,
                    "tooltip": "How many of the best images the top_images output keeps.",
                }),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def score(self, images, spm, prompt: str, timestep: int = 0, top_n: int = 1, unique_id=None):
        with library_imports("StepAwareScore"):
            from spo_studio.spo.guided_sampler import rank_best_first

        if not isinstance(prompt, str) or not prompt.strip():
            raise NodeInputError("StepAwareScore: the prompt is empty; type the text the images should match")
        check_spm("StepAwareScore", spm)
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise NodeInputError(f"StepAwareScore: expected an IMAGE batch [B, H, W, 3] with B >= 1, got {shape}")
        if not 0 <= int(timestep) <= 999:
            raise NodeInputError(f"StepAwareScore: timestep must be 0..999, got {timestep}")
        try:
            scores = score_images(spm, comfy_image_to_ours(images), prompt, timestep)
        except (ValueError, RuntimeError) as e:
            raise one_line("StepAwareScore", e) from None
        ranking = rank_best_first(scores)
        sorted_images = select_rows(images, ranking.order)
        top = sorted_images[: max(1, min(top_n, images.shape[0]))]
        lines = [f"#{r + 1}: image {int(i)}  score {float(s):.4f}" for r, (i, s) in enumerate(zip(ranking.order, ranking.scores))]
        show_text_on_node("\n".join(lines), unique_id)
        return {
            "ui": {"text": ["\n".join(lines)]},
            "result": (sorted_images, [float(s) for s in ranking.scores], top),
        }
