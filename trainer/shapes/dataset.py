"""In-memory training data for ShapesWorld's models, rendered once with a fixed seed."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .render import render
from .world import parse_caption


@dataclass
class RenderedSet:
    """images: Tensor[N, 3, 64, 64] uint8 (0–255); caption_ids: Tensor[N] long into captions;
    quality: Tensor[N] in [0, 1], the hidden quality each image was rendered at."""

    images: torch.Tensor
    caption_ids: torch.Tensor
    quality: torch.Tensor
    captions: list[str]

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        """Images at idx as float Tensor[B, 3, 64, 64] in [−1, 1]."""
        return self.images[idx].float() / 127.5 - 1


def render_set(captions: list[str], per_caption: int, seed: int, chunk: int = 2048) -> RenderedSet:
    """Render `per_caption` images of every caption at quality ~ U(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.arange(len(captions)).repeat(per_caption)
    quality = torch.rand(ids.shape[0], generator=g)
    scenes = [parse_caption(c) for c in captions]
    out = torch.empty(ids.shape[0], 3, 64, 64, dtype=torch.uint8)
    for s in range(0, ids.shape[0], chunk):
        part = ids[s:s + chunk]
        x = render([scenes[i] for i in part.tolist()], quality[s:s + chunk], g)
        out[s:s + chunk] = ((x + 1) * 127.5).round().to(torch.uint8)
    return RenderedSet(out, ids, quality, list(captions))


def clip_pixels(images: torch.Tensor) -> torch.Tensor:
    """Images in [−1, 1] -> CLIP pixel_values (OpenAI mean/std), size unchanged (64×64)."""
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[None, :, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[None, :, None, None]
    return ((images + 1) / 2 - mean) / std
