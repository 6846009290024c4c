"""Deterministic renderer of ShapesWorld scenes at a hidden quality.

Quality q ∈ [0, 1] (1 = clean). Its severity 1 − q is spread over five degradations with random
weights, so equally bad images are bad in different ways:
    blur (Gaussian σ ≤ 2 px), jaggies (mask point-sampled on a 2- or 4-px grid, no anti-aliasing),
    washed-out colour (blend toward luminance), smudges (soft dark blobs), pixel noise (σ ≤ 0.08 of the [0, 1] range).
All of them except fine noise survive a 64 → 16×16×4 autoencoder, so a diffusion model can learn them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .world import COLOURS, IMAGE_SIZE, POSITIONS, SIZES, Scene

DEGRADATIONS = ("blur", "jaggies", "washout", "smudge", "noise")
_JAG_FACTORS = (1, 2, 4)


@dataclass(frozen=True)
class Geometry:
    """Per-image shape placement: centre (x, y) in pixels and equal-area radius, Tensors[B]."""

    cx: torch.Tensor
    cy: torch.Tensor
    radius: torch.Tensor


def shape_inside(shape: str, dx: torch.Tensor, dy: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Boolean inside-test of an equal-area shape; dx, dy offsets from its centre (pixels, y down).

    All shapes have the area of a circle of `radius`, so size words mean the same for each.
    """
    if shape == "circle":
        return dx * dx + dy * dy <= radius * radius
    if shape == "square":
        return torch.maximum(dx.abs(), dy.abs()) <= radius * (math.pi**0.5 / 2)
    if shape == "diamond":
        return dx.abs() + dy.abs() <= radius * (math.pi / 2) ** 0.5
    if shape == "triangle":
        # Equilateral, apex up, centroid at the centre; circumradius from equal area.
        circum = radius * (4 * math.pi / (3 * 3**0.5)) ** 0.5
        inside = dy <= circum / 2
        for angle in (math.radians(210), math.radians(330)):
            inside = inside & (dx * math.cos(angle) + dy * math.sin(angle) <= circum / 2)
        return inside
    raise ValueError(f"unknown shape {shape!r}; known: circle, square, triangle, diamond")


def coverage(
    shapes: list[str], geom: Geometry, size: int = IMAGE_SIZE, jag: torch.Tensor | None = None, supersample: int = 4
) -> torch.Tensor:
    """Anti-aliased coverage α ∈ [0, 1], Tensor[B, 1, size, size].

    jag: Tensor[B] long, coarse-grid factor per image (1 = anti-aliased; f > 1 = point-sampled on an
    (size/f)² grid and upsampled by repetition, i.e. staircase edges). supersample: samples per pixel
    side for anti-aliasing.
    """
    b = len(shapes)
    out = torch.empty(b, 1, size, size)
    jag = torch.ones(b, dtype=torch.long) if jag is None else jag
    for i, shape in enumerate(shapes):
        f = int(jag[i])
        if f <= 1:
            n = size * supersample
            coords = (torch.arange(n, dtype=torch.float32) + 0.5) / supersample
        else:
            n = size // f
            coords = (torch.arange(n, dtype=torch.float32) + 0.5) * f
        dy, dx = torch.meshgrid(coords - geom.cy[i], coords - geom.cx[i], indexing="ij")
        inside = shape_inside(shape, dx, dy, geom.radius[i]).float()[None, None]
        if f <= 1:
            out[i] = F.avg_pool2d(inside, supersample)[0]
        else:
            out[i] = inside.repeat_interleave(f, 2).repeat_interleave(f, 3)[0]
    return out


def sample_geometry(scenes: list[Scene], generator: torch.Generator) -> Geometry:
    """Position jitter ±3 px, radius jitter ±1 px; unspecified size drawn uniformly from SIZES."""
    b = len(scenes)
    u = torch.rand(b, 4, generator=generator)
    sizes = list(SIZES.values())
    cx = torch.tensor([POSITIONS[s.position][0] for s in scenes]) + (u[:, 0] * 6 - 3)
    cy = torch.tensor([POSITIONS[s.position][1] for s in scenes]) + (u[:, 1] * 6 - 3)
    base = torch.tensor([SIZES[s.size] if s.size else sizes[int(u[i, 3] * len(sizes))] for i, s in enumerate(scenes)])
    return Geometry(cx, cy, base + (u[:, 2] * 2 - 1))


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, radius: int = 5) -> torch.Tensor:
    """Per-image Gaussian blur. images Tensor[B, C, H, W]; sigma Tensor[B] in pixels (0 = unchanged)."""
    b, c, h, w = images.shape
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    s = sigma.clamp_min(1e-3)[:, None]
    k = torch.exp(-0.5 * (x[None] / s) ** 2)
    k = k / k.sum(1, keepdim=True)  # Tensor[B, 2r+1]; σ→0 gives a delta
    k = k.repeat_interleave(c, 0)
    flat = images.reshape(1, b * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), k[:, None, None, :], groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), k[:, None, :, None], groups=b * c)
    return flat.reshape(b, c, h, w)


def degradation_strengths(quality: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Tensor[B, 5] in [0, 1], columns DEGRADATIONS: (1 − q) times random weights whose max is 1."""
    w = torch.rand(quality.shape[0], len(DEGRADATIONS), generator=generator)
    w = w / w.max(1, keepdim=True).values
    return (1 - quality.clamp(0, 1))[:, None] * w


def render(
    scenes: list[Scene],
    quality: torch.Tensor,
    generator: torch.Generator,
    strengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Render scenes -> images Tensor[B, 3, 64, 64] in [−1, 1].

    quality: Tensor[B] in [0, 1]. strengths: optional Tensor[B, 5] overriding the random split of
    1 − q over DEGRADATIONS (each in [0, 1]); used by tests to set one degradation at a time.
    Deterministic given the generator's state.
    """
    b = len(scenes)
    geom = sample_geometry(scenes, generator)
    s = degradation_strengths(quality, generator) if strengths is None else strengths.float()
    s_blur, s_jag, s_wash, s_smudge, s_noise = s.unbind(1)
    jag = torch.tensor(_JAG_FACTORS)[(s_jag * (len(_JAG_FACTORS) - 1)).round().long()]
    alpha = coverage([sc.shape for sc in scenes], geom, jag=jag)
    fg = torch.tensor([COLOURS[sc.colour] for sc in scenes])[:, :, None, None]
    bg = torch.tensor([COLOURS[sc.background] for sc in scenes])[:, :, None, None]
    img = bg * (1 - alpha) + fg * alpha
    img = _smudge(img, s_smudge, generator)
    img = gaussian_blur(img, 2.0 * s_blur)
    lum = (img * torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]).sum(1, keepdim=True)
    a = 0.8 * s_wash[:, None, None, None]
    img = img * (1 - a) + lum * a
    noise = torch.randn(img.shape, generator=generator)
    img = img + 0.08 * s_noise[:, None, None, None] * noise
    return (img.clamp(0, 1) * 2 - 1).contiguous()


def _smudge(img: torch.Tensor, strength: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Up to three soft dark-brown blobs (radius 5–9 px) with opacity ≤ 0.6 × strength."""
    b, _, h, w = img.shape
    u = torch.rand(b, 3, 4, generator=generator)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    opacity = torch.zeros(b, 1, h, w)
    for k in range(3):
        cx, cy = u[:, k, 0] * w, u[:, k, 1] * h
        r = 5 + 4 * u[:, k, 2]
        on = (u[:, k, 3] < strength * 1.5 + 0.34 * (k == 0)).float() * (strength > 0).float()
        d2 = (xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2
        blob = torch.exp(-d2 / (2 * (r[:, None, None] / 1.5) ** 2)) * on[:, None, None]
        opacity = torch.maximum(opacity, blob[:, None])
    opacity = opacity * (0.6 * strength)[:, None, None, None]
    dirt = torch.tensor([0.30, 0.22, 0.15])[None, :, None, None]
    return img * (1 - opacity) + dirt * opacity


def render_captions(captions: list[str], quality: torch.Tensor, seed: int) -> torch.Tensor:
    """Convenience: parse captions and render them with a fresh generator seeded by `seed`."""
    from .world import parse_caption

    g = torch.Generator().manual_seed(seed)
    return render([parse_caption(c) for c in captions], quality, g)
