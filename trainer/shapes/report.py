"""Small helpers for reporting results on ShapesWorld: a mean with its 95% interval, an image grid."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from PIL import Image, ImageDraw

# Two-sided 97.5% Student-t quantiles for small samples (df 1..30); normal beyond.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def mean_ci95(values: Sequence[float] | torch.Tensor) -> tuple[float, float, float]:
    """(mean, lo, hi): Student-t 95% interval of the mean. One value gives lo = hi = mean."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() == 0:
        raise ValueError("mean_ci95: no values")
    mean = float(v.mean())
    if v.numel() == 1:
        return mean, mean, mean
    df = v.numel() - 1
    t = _T975[df - 1] if df <= len(_T975) else 1.960
    half = t * float(v.std(unbiased=True)) / math.sqrt(v.numel())
    return mean, mean - half, mean + half


def image_grid(rows: list[torch.Tensor], labels: Sequence[str] | None = None, scale: int = 2) -> Image.Image:
    """Rows of images Tensor[N, 3, H, W] in [−1, 1] -> one RGB PIL image; optional label left of each row."""
    if not rows:
        raise ValueError("image_grid: no rows")
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"image_grid: {len(rows)} rows but {len(labels)} labels")
    h, w = rows[0].shape[-2:]
    cols = max(r.shape[0] for r in rows)
    margin = 0 if labels is None else 8 * max(len(s) for s in labels) // 1 + 8
    grid = Image.new("RGB", (margin + cols * w * scale, len(rows) * h * scale), "white")
    draw = ImageDraw.Draw(grid)
    for i, row in enumerate(rows):
        pix = ((row.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        for j, p in enumerate(pix):
            tile = Image.fromarray(p).resize((w * scale, h * scale), Image.NEAREST)
            grid.paste(tile, (margin + j * w * scale, i * h * scale))
        if labels is not None:
            draw.text((4, i * h * scale + h * scale // 2 - 6), labels[i], fill="black")
    return grid
