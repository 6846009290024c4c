"""Load Scorer: PickScore, HPSv2, ImageReward, LAION aesthetic, CLIPScore or an SPM from models/spo, as the
SPM-typed input StepAwareScore (best-of-k) and SPOSampler take. Glue over spo_studio.scorers (trainer/scorers in a checkout)."""
from __future__ import annotations

import os

import torch

from .errors import library_imports, one_line
from .host import SPM_FOLDER, filename_list, full_path, torch_device
from .spm_nodes import CATEGORY, _bundled_clip_tokenizer, load_spm_for_comfy

KINDS = ["hpsv2", "imagereward", "pickscore", "aesthetic", "clipscore", "spm"]


def load_scorer_for_comfy(kind: str, path: str, device: torch.device, dtype: torch.dtype):
    """trainer.scorers.load_scorer for a file picked from models/spo.

    A file inside a folder with config.json (PickScore or any CLIP saved by transformers) stands
    for that folder. Tokenizers come from beside the file (tokenizer/), else ComfyUI's bundled CLIP
    tokenizer (OpenCLIP's BPE vocabulary) for HPSv2; the aesthetic MLP takes the CLIP ViT-L/14 in clip/ beside it.
    """
    from types import SimpleNamespace

    with library_imports("Load Scorer"):
        from spo_studio.scorers import ScorerSpec, load_scorer

    if kind == "spm":
        return load_spm_for_comfy(path, device, dtype)
    folder = os.path.dirname(path)
    if kind in ("pickscore", "clipscore") and os.path.isfile(os.path.join(folder, "config.json")):
        path = folder
    clip_tok = ""
    if kind == "hpsv2" and not os.path.isdir(os.path.join(folder, "tokenizer")):
        clip_tok = _bundled_clip_tokenizer() or ""
    assets = SimpleNamespace(clip_tokenizer=clip_tok, bert_tokenizer="", aesthetic_clip="")
    return load_scorer(ScorerSpec(kind, kind, path), device=device, dtype=dtype, assets=assets)


class LoadScorer:
    """Load an image-text scorer for best-of-k: HPSv2, ImageReward, PickScore, LAION aesthetic, CLIPScore, SPM."""

    DESCRIPTION = (
        "Loads a released scorer from models/spo, offline: HPSv2/HPSv2.1 (HPS_v2*_compressed.pt), ImageReward "
        "(ImageReward.pt with tokenizer/ = bert-base-uncased beside it), PickScore or any CLIP folder (CLIPScore), "
        "the LAION aesthetic MLP (with clip/ = CLIP ViT-L/14 beside it), or an SPM. Connect it to StepAwareScore."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("SPM",)
    RETURN_NAMES = ("scorer",)
    OUTPUT_TOOLTIPS = ("The scorer, for StepAwareScore (best-of-k) and SPOSampler.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "kind": (KINDS, {"default": "hpsv2", "tooltip": "Which scorer the file is (see the node's description)."}),
                "scorer_name": (filename_list(SPM_FOLDER), {
                    "tooltip": "Checkpoint in models/spo; for a CLIP folder (PickScore, CLIPScore) pick any file in it.",
                }),
                "precision": (["auto", "fp32", "fp16", "bf16"], {
                    "default": "auto", "tooltip": "Weights dtype. auto: fp16 on a GPU, fp32 on the CPU.",
                }),
            }
        }

    def load(self, kind: str, scorer_name: str, precision: str = "auto"):
        path = full_path(SPM_FOLDER, scorer_name, "Load Scorer")
        device = torch_device()
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(
            precision, torch.float16 if device.type == "cuda" else torch.float32
        )
        try:
            scorer = load_scorer_for_comfy(kind, path, device, dtype)
        except (ValueError, OSError, RuntimeError) as e:
            raise one_line(f"Load Scorer ({kind}: {scorer_name})", e) from None
        return (scorer,)
