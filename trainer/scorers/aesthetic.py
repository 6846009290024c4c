"""LAION aesthetic predictor v2 (christophschuhmann/improved-aesthetic-predictor): an MLP on the
L2-normalised CLIP ViT-L/14 image embedding, trained on 1–10 ratings (SAC + LOGOS + AVA).

Released weights `sac+logos+ava1-l14-linearMSE.pth`: keys layers.{0,2,4,6,7}.{weight,bias}, a Linear
stack 768 → 1024 → 128 → 64 → 16 → 1 with dropouts at 1, 3, 5 and no activations (as released).
The CLIP is openai/clip-vit-large-patch14 as a transformers folder; its projected image embedding
(`get_image_features`) is the `clip` package's `encode_image`, with CLIP's own preprocessing
(shortest side 224 bicubic, centre crop, OpenAI mean/std).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .files import ScorerError, check_keys, read_weights

LINEAR_INDICES = (0, 2, 4, 6, 7)  # positions of the Linear layers in the released nn.Sequential
HIDDEN = (1024, 128, 64, 16, 1)


def aesthetic_mlp(input_size: int = 768) -> nn.Sequential:
    """The released layer stack (dropouts inert in eval), so state-dict keys match the file."""
    sizes = (input_size, *HIDDEN)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < 3:
            layers.append(nn.Dropout((0.2, 0.2, 0.1)[i]))
    return nn.Sequential(*layers)


def expected_shapes(input_size: int) -> dict[str, tuple[int, ...]]:
    sizes = (input_size, *HIDDEN)
    out = {}
    for idx, a, b in zip(LINEAR_INDICES, sizes, sizes[1:]):
        out[f"layers.{idx}.weight"] = (b, a)
        out[f"layers.{idx}.bias"] = (b,)
    return out


class LaionAesthetic(nn.Module):
    kind = "aesthetic"
    family = None  # not tied to a diffusion model family

    def __init__(self, clip, mlp: nn.Sequential):
        super().__init__()
        self.clip = clip  # step-agnostic StepAwarePreferenceModel over the CLIP ViT-L/14 folder
        self.layers = mlp

    @torch.inference_mode()
    def score(self, images: torch.Tensor, prompts: Sequence[str] | None = None, timesteps=None) -> torch.Tensor:
        """Predicted aesthetic rating (≈1–10), Tensor[B] float32; prompts and timesteps are ignored."""
        emb = self.clip.encode_images(images, torch.zeros(images.shape[0], dtype=torch.long))
        return self.layers(emb.to(self.layers[0].weight.dtype)).squeeze(-1).float()


def load_aesthetic(path: str | os.PathLike, device="cpu", dtype=torch.float32, clip: str = "") -> LaionAesthetic:
    """The released MLP file (strict keys) + a CLIP folder: `clip`, else clip/ beside the file."""
    from ..spm import SPMError
    from ..spm.weights import spm_from_clip

    path = Path(path)
    state = read_weights(path, "LAION aesthetic MLP")
    w0 = state.get("layers.0.weight")
    if w0 is None or w0.ndim != 2:
        raise ScorerError(f"{path}: no layers.0.weight; not the LAION aesthetic predictor's MLP")
    check_keys(state, expected_shapes(int(w0.shape[1])), path, "LAION aesthetic MLP")
    clip_dir = Path(clip) if clip else path.parent / "clip"
    if not clip_dir.is_dir():
        raise ScorerError(
            f"{path}: the aesthetic MLP runs on CLIP ViT-L/14 embeddings; pass --assets.aesthetic_clip DIR "
            f"(openai/clip-vit-large-patch14 saved locally) or put that folder at {clip_dir}"
        )
    try:
        model = spm_from_clip(clip_dir, step_aware=False)
    except SPMError as e:
        raise ScorerError(f"--assets.aesthetic_clip: {e}") from None
    if model.model.config.projection_dim != w0.shape[1]:
        raise ScorerError(f"{clip_dir}: CLIP embeddings have {model.model.config.projection_dim} dims but the MLP {path} takes {w0.shape[1]} (use CLIP ViT-L/14)")
    # The predictor was fitted on embeddings of the `clip` package's PIL transform, not of the
    # folder's CLIPImageProcessor: the same resize, crop offsets rounded instead of truncated.
    model.preprocess = dataclasses.replace(model.preprocess, method="openai")
    mlp = aesthetic_mlp(int(w0.shape[1]))
    mlp.load_state_dict({k.removeprefix("layers."): v for k, v in state.items()}, strict=True)
    return LaionAesthetic(model, mlp).to(device=device, dtype=dtype).eval().requires_grad_(False)
