"""CLIP image preprocessing in torch, on the images' device, for decoded images (nominally [−1, 1]).

Four recipes, chosen per checkpoint by `PreprocessConfig.method`, because a scorer must see
images exactly as its checkpoint saw them in training:

- "spo": what the released step-aware preference models were trained and used with (and what
  `trainer.spm` trains with): bicubic resize of the shortest side WITHOUT antialias (a = −0.75),
  sizes rounded half up, a centre crop whose offsets round like torchvision's `CenterCrop`,
  and the clamp to [0, 1] only AFTER the resize (the decoded x̂0 arrives unclamped).
- "clip": transformers' `CLIPImageProcessor` (PickScore-style, step-agnostic CLIP folders): the
  image is a clamped uint8 picture, resized with the antialiased PIL-like kernel (a = −0.5),
  sizes and offsets truncated.
- "openai": OpenAI CLIP's `_transform` on a PIL picture (ImageReward, the LAION aesthetic
  predictor): the "clip" recipe with the centre crop's offsets rounded as torchvision's
  `CenterCrop` rounds them (one pixel apart from "clip" when the resized side exceeds the crop by
  an odd number).
- "hpsv2": HPSv2's `preprocess_val` (its open_clip `image_transform` with `resize_longest_max`):
  the picture as a [0, 1] tensor, the LONGEST side resized to the crop size with antialiased
  bicubic (sides rounded), bicubic overshoot kept, zero padding to a square (the odd pixel at the
  bottom / right). On square images it differs from "clip" only by that overshoot.

All four work without a PIL round trip, so decoded VAE outputs are scored where they are (GPU,
half precision) and gradients can flow.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
METHODS = ("spo", "clip", "openai", "hpsv2")
# Own-format SPM checkpoints written before `method` was recorded were all trained by trainer.spm
# with the CLIPImageProcessor recipe, so that is what they are read back with.
LEGACY_METHOD = "clip"


@dataclass(frozen=True)
class PreprocessConfig:
    """image_size: side of the square crop the vision tower takes (CLIP-H: 224).
    method: "spo" (released SPMs, trainer.spm) | "clip" (CLIPImageProcessor, PickScore-style)."""

    image_size: int = 224
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    resample: str = "bicubic"
    method: str = "spo"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"preprocess method must be one of {', '.join(METHODS)} (got {self.method!r})")

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessConfig":
        return cls(
            int(d["image_size"]), tuple(d["image_mean"]), tuple(d["image_std"]), d.get("resample", "bicubic"),
            d.get("method", LEGACY_METHOD),
        )

    def to_dict(self) -> dict:
        return {
            "image_size": self.image_size, "image_mean": list(self.image_mean), "image_std": list(self.image_std),
            "resample": self.resample, "method": self.method,
        }


# -- the reference recipe ("spo") -----------------------------------------------------------------
def spo_resized_size(h: int, w: int, size: int) -> tuple[int, int]:
    """(H', W') with the shorter side scaled to `size`, each side rounded half up: int(x·s + 0.5)."""
    scale = size / min(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def center_crop_offsets(h: int, w: int, size: int) -> tuple[int, int]:
    """(top, left) of a central size×size window, rounded as torchvision's CenterCrop rounds them
    (Python's round: halves go to the even integer)."""
    return int(round((h - size) / 2.0)), int(round((w - size) / 2.0))


def spo_preprocess(images: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """Images [B, 3, H, W] (decoded, any range) -> pixel values [B, 3, S, S] float32, reference recipe.

    Resize in the images' own [−1, 1] scale with torch's non-antialiased bicubic, crop, then map
    to [0, 1] and clamp: bicubic overshoot and decoder overshoot are both cut only here.
    """
    size = config.image_size
    x = images.float()
    h, w = x.shape[-2:]
    new_h, new_w = spo_resized_size(h, w, size)
    x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False)
    top, left = center_crop_offsets(new_h, new_w, size)
    x = x[..., top : top + size, left : left + size]
    x = (x / 2 + 0.5).clamp(0, 1)
    return _normalise(x, config)


# -- CLIPImageProcessor's recipe ("clip") ------------------------------------------------------------
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


def center_crop(images: torch.Tensor, size: int, rounded: bool = False) -> torch.Tensor:
    """Central size×size window of Tensor[B, C, H, W] (H, W ≥ size); offsets truncated as HF's
    processor does, or with rounded=True rounded as torchvision's CenterCrop does."""
    h, w = images.shape[-2:]
    if rounded:
        top, left = center_crop_offsets(h, w, size)
    else:
        top, left = int((h - size) / 2.0), int((w - size) / 2.0)
    return images[..., top : top + size, left : left + size]


def clip_processor_preprocess(images: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """Images [B, 3, H, W] -> pixel values [B, 3, S, S] float32, as CLIPImageProcessor makes them
    (method "clip"), or OpenAI CLIP's PIL transform (method "openai": crop offsets rounded).

    The processor sees a uint8 picture, so the input is clamped first; resize of the shortest
    side (antialiased bicubic), centre crop, clamp again (bicubic overshoots, uint8 cannot), normalise.
    """
    x = (images.float().clamp(-1, 1) + 1) / 2
    x = center_crop(resize_shortest_side(x, config.image_size), config.image_size, rounded=config.method == "openai")
    return _normalise(x.clamp(0, 1), config)


# -- HPSv2's recipe ("hpsv2") ------------------------------------------------------------------------
def hpsv2_preprocess(images: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """Images [B, 3, H, W] -> pixel values [B, 3, S, S] float32, as HPSv2's `preprocess_val` makes them.

    HPSv2 reads a picture (so the input is clamped to [0, 1]), converts it to a float tensor and
    only then resizes: scale = S / max(H, W), sides round(H·scale) × round(W·scale), torchvision's
    tensor resize (antialiased bicubic, no clamp after), then pads with 0 (black) to S × S,
    left/top getting the smaller half.
    """
    size = config.image_size
    x = (images.float().clamp(-1, 1) + 1) / 2
    h, w = x.shape[-2:]
    scale = size / max(h, w)
    if scale != 1.0:
        x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bicubic", align_corners=False, antialias=True)
    # HPSv2 pads only when it resized, so a picture whose longest side is already S stays
    # non-square and its ViT fails; padding it too is what that code evidently means.
    pad_h, pad_w = size - x.shape[-2], size - x.shape[-1]
    x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
    return _normalise(x, config)


def _normalise(x: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    mean = torch.tensor(config.image_mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(config.image_std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def clip_preprocess(images: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """Images [B, 3, H, W] -> pixel values [B, 3, S, S] for the CLIP vision tower (float32),
    with the recipe the checkpoint was trained with (config.method)."""
    if config.method == "spo":
        return spo_preprocess(images, config)
    if config.method == "hpsv2":
        return hpsv2_preprocess(images, config)
    return clip_processor_preprocess(images, config)
