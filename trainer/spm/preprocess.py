"""CLIP image preprocessing in torch, on the images' device, for images in [−1, 1].

Equivalent to transformers' `CLIPImageProcessor` (resize the shortest side, bicubic; centre
crop; rescale to [0, 1]; mean/std normalisation) without a round trip through PIL, so
decoded VAE outputs are scored where they are (GPU, half precision) and gradients can flow.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PreprocessConfig:
    """image_size: side of the square crop the vision tower takes (CLIP-H: 224)."""

    image_size: int = 224
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    resample: str = "bicubic"

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessConfig":
        return cls(int(d["image_size"]), tuple(d["image_mean"]), tuple(d["image_std"]), d.get("resample", "bicubic"))

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "image_mean": list(self.image_mean), "image_std": list(self.image_std), "resample": self.resample}


def resize_shortest_side(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic resize so the shorter side is `size`; the longer side is truncated like HF's processor.

    images: Tensor[B, C, H, W] float. antialias=True selects torch's PIL-compatible bicubic
    kernel (a = −0.5, widened when shrinking), the filter CLIPImageProcessor applies.
    """
    h, w = images.shape[-2:]
    if min(h, w) == size:
        return images
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)
    new_hw = (size, new_long) if h <= w else (new_long, size)
    return F.interpolate(images, size=new_hw, mode="bicubic", align_corners=False, antialias=True)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Central size×size window of Tensor[B, C, H, W] (H, W ≥ size), offsets rounded as HF rounds them."""
    h, w = images.shape[-2:]
    top, left = int((h - size) / 2.0), int((w - size) / 2.0)
    return images[..., top : top + size, left : left + size]


def clip_preprocess(images: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """Images [B, 3, H, W] in [−1, 1] -> pixel values [B, 3, S, S] for the CLIP vision tower (float32).

    Resize of the shortest side to S (bicubic), centre crop S, map to [0, 1] (clamped: bicubic
    overshoots, and the uint8 images CLIPImageProcessor sees cannot), then (x − mean)/std.
    """
    x = (images.float() + 1) / 2
    x = center_crop(resize_shortest_side(x, config.image_size), config.image_size).clamp(0, 1)
    mean = torch.tensor(config.image_mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(config.image_std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
