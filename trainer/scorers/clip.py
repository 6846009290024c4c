"""CLIP-based scorers on transformers' CLIPModel: PickScore_v1, CLIPScore, and the SPM family.

All three reuse trainer.spm's StepAwarePreferenceModel (step-agnostic when built from a plain CLIP
folder) for tokenisation, the checkpoint's own image preprocessing and the embeddings, so one
code path computes every CLIP similarity in the project.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .files import ScorerError


def _load(path, device, dtype, tokenizer=None):
    from ..spm import SPMError, load_spm

    try:
        return load_spm(path, device=device, dtype=dtype, tokenizer=tokenizer or None)
    except (SPMError, OSError) as e:
        raise ScorerError(str(e).splitlines()[0]) from None


class PickScore(nn.Module):
    """PickScore_v1 (Kirstain et al. 2023): logit_scale.exp() · cos(image, text), i.e. 100·cos for the
    released checkpoint. path: its transformers CLIP folder (config.json, weights, tokenizer and
    preprocessor_config.json, as `yuvalkirstain/PickScore_v1` is saved)."""

    kind = "pickscore"
    family = None  # not tied to a diffusion model family

    def __init__(self, path: str | os.PathLike, device="cpu", dtype=torch.float32, tokenizer: str = ""):
        super().__init__()
        if not Path(path).is_dir():
            raise ScorerError(f"{path}: PickScore is a CLIP folder (config.json, model weights, tokenizer, preprocessor_config.json)")
        self.model = _load(path, device, dtype, tokenizer)
        if self.model.step_aware:
            raise ScorerError(f"{path}: a step-aware SPM, not PickScore; score it as spm={path}")

    @torch.inference_mode()
    def score(self, images: torch.Tensor, prompts: Sequence[str], timesteps=None) -> torch.Tensor:
        return self.model.score(images, prompts, torch.zeros(images.shape[0], dtype=torch.long))


class CLIPScore(nn.Module):
    """CLIPScore as torchmetrics and most text-to-image papers report it: 100 · max(cos(image, text), 0)
    (Hessel et al.'s CLIP-S is 2.5 · max(cos, 0), i.e. this number × 0.025). Any transformers CLIP folder."""

    kind = "clipscore"
    family = None

    def __init__(self, path: str | os.PathLike, device="cpu", dtype=torch.float32, tokenizer: str = ""):
        super().__init__()
        if not Path(path).is_dir():
            raise ScorerError(f"{path}: CLIPScore needs a transformers CLIP folder (config.json + weights + tokenizer)")
        self.model = _load(path, device, dtype, tokenizer)

    @torch.inference_mode()
    def score(self, images: torch.Tensor, prompts: Sequence[str], timesteps=None) -> torch.Tensor:
        from ..spm.model import check_score_inputs

        check_score_inputs(images, prompts, 0)
        t = torch.zeros(images.shape[0], dtype=torch.long)
        unique = list(dict.fromkeys(prompts))
        text = self.model.encode_text(unique)[[unique.index(p) for p in prompts]]
        cos = (self.model.encode_images(images, t) * text).sum(-1).float()
        return 100 * cos.clamp_min(0)


class SPMScore(nn.Module):
    """Every SPM / preference model trainer.spm loads (released .bin/.safetensors, own-format folders,
    PickScore-style CLIP folders), scored at the images' timesteps (0 for finished images)."""

    kind = "spm"

    def __init__(self, path: str | os.PathLike, device="cpu", dtype=torch.float32, tokenizer: str = ""):
        super().__init__()
        self.model = _load(path, device, dtype, tokenizer)

    @property
    def family(self) -> str | None:
        """The diffusion model family the SPM was trained for (hosts refuse a mismatch)."""
        return self.model.family

    @torch.inference_mode()
    def score(self, images: torch.Tensor, prompts: Sequence[str], timesteps=None) -> torch.Tensor:
        t = torch.zeros(images.shape[0], dtype=torch.long) if timesteps is None else timesteps
        return self.model.score(images, prompts, t)
