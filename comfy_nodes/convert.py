"""Tensor layouts between ComfyUI and trainer/: IMAGE is [B, H, W, C] in 0..1, ours [B, 3, H, W] in −1..1."""
from __future__ import annotations

import torch


def comfy_image_to_ours(image: torch.Tensor) -> torch.Tensor:
    """IMAGE [B, H, W, C] float in [0, 1] (C = 3, or 4 with alpha, dropped) -> Tensor[B, 3, H, W] in [−1, 1]."""
    if image.ndim != 4 or image.shape[-1] not in (3, 4):
        raise ValueError(f"expected an IMAGE batch [B, H, W, 3], got shape {tuple(image.shape)}")
    return image[..., :3].movedim(-1, 1).float().clamp(0, 1) * 2 - 1


def select_rows(batch: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """batch[order] with `order` moved to the batch's device (IMAGE, LATENT samples, ...)."""
    return batch[order.to(batch.device)]
