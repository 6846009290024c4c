"""ShapesWorld's ground truth: alignment, aesthetic and the generic preference label.

Plain deterministic code, no learned parts. Everything works on a batch of images
Tensor[B, 3, H, W] in [−1, 1] (as a VAE decodes them) and starts from a two-colour
segmentation: background colour = median of the border, foreground = the other cluster.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .render import Geometry, coverage, gaussian_blur
from .world import COLOURS, POSITIONS, SHAPES, parse_caption

_PALETTE = torch.tensor(list(COLOURS.values()))  # Tensor[5, 3]
_COLOUR_INDEX = {c: i for i, c in enumerate(COLOURS)}
_SHAPE_INDEX = {s: i for i, s in enumerate(SHAPES)}
_MIN_AREA = 12.0  # px; below this no shape is considered present


@dataclass(frozen=True)
class Segmentation:
    """Two-colour split of each image. colours Tensor[B, 3] in [0, 1]; alpha Tensor[B, 1, H, W] ∈ [0, 1]
    is the soft foreground share of each pixel (projection onto the bg→fg segment)."""

    background: torch.Tensor
    foreground: torch.Tensor
    alpha: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        return (self.alpha > 0.5).float()

    @property
    def contrast(self) -> torch.Tensor:
        return _length(self.foreground - self.background)


def segment(images: torch.Tensor, iterations: int = 4) -> Segmentation:
    """2-means colour clustering with the background seeded from the border median."""
    x = (images.float().clamp(-1, 1) + 1) / 2
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w)
    border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], dim=2)
    bg = border.median(dim=2).values
    dist = _length(flat - bg[:, :, None])
    far = dist >= 0.6 * dist.max(dim=1, keepdim=True).values
    fg = (flat * far[:, None]).sum(2) / far.sum(1, keepdim=True).clamp_min(1)
    for _ in range(iterations):
        is_fg = (_length(flat - fg[:, :, None]) < _length(flat - bg[:, :, None])).float()
        n_fg = is_fg.sum(1, keepdim=True)
        fg = torch.where(n_fg > 0, (flat * is_fg[:, None]).sum(2) / n_fg.clamp_min(1), fg)
        bg_w = 1 - is_fg
        bg = (flat * bg_w[:, None]).sum(2) / bg_w.sum(1, keepdim=True).clamp_min(1)
    seg = fg - bg
    alpha = ((flat - bg[:, :, None]) * seg[:, :, None]).sum(1) / (seg * seg).sum(1, keepdim=True).clamp_min(1e-6)
    return Segmentation(bg, fg, alpha.clamp(0, 1).reshape(b, 1, h, w))


def _length(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Euclidean length along dim (torch's vector norm is slow on CPU for this layout)."""
    return (x * x).sum(dim).sqrt()


def _box(x: torch.Tensor, k: int) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, stride=1)


def _gradient_norm(x: torch.Tensor) -> torch.Tensor:
    """|∇x| over channels with forward differences, Tensor[B, 1, H-1, W-1]."""
    gx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
    gy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
    return (gx * gx + gy * gy).sum(1, keepdim=True).sqrt()


_PALETTE_HUE = F.normalize(_PALETTE - _PALETTE.mean(1, keepdim=True), dim=1)  # Tensor[5, 3]
_PALETTE_CHROMA = _PALETTE.max(1).values - _PALETTE.min(1).values  # Tensor[5]


def _relative_chroma(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel chroma of x Tensor[B, 3, H, W] in [0, 1] over the chroma of the palette colour whose
    hue direction is nearest, capped at 1 -> Tensor[B, H, W]."""
    hue = F.normalize(x - x.mean(1, keepdim=True), dim=1, eps=1e-6)
    nearest = torch.einsum("bchw,kc->bkhw", hue, _PALETTE_HUE).argmax(1)
    chroma = x.max(1).values - x.min(1).values
    return (chroma / _PALETTE_CHROMA[nearest]).clamp(max=1)


@dataclass(frozen=True)
class AestheticTerms:
    """Each term Tensor[B] in [0, 1], 1 = clean. total() is the 0–10 aesthetic score."""

    sharpness: torch.Tensor
    noise: torch.Tensor
    saturation: torch.Tensor
    smudge: torch.Tensor
    jaggies: torch.Tensor

    WEIGHTS = (0.25, 0.15, 0.25, 0.2, 0.15)

    def total(self) -> torch.Tensor:
        terms = (self.sharpness, self.noise, self.saturation, self.smudge, self.jaggies)
        return 10 * sum(w * t for w, t in zip(self.WEIGHTS, terms))


def aesthetic_terms(images: torch.Tensor) -> AestheticTerms:
    """The five aesthetic measurements of images Tensor[B, 3, H, W] in [−1, 1]."""
    x = (images.float().clamp(-1, 1) + 1) / 2
    seg = segment(images)
    mask = seg.mask
    # Pixels whose 5×5 neighbourhood is one label are "flat"; the rest is the edge zone.
    local = _box(mask, 5)
    flat = ((local < 0.01) | (local > 0.99)).float()
    edge = 1 - flat
    # Flat-region noise: RMS of the 3×3 high-pass residual.
    resid = x - _box(x, 3)
    noise_rms = ((resid * resid).sum(1, keepdim=True) * flat).sum((1, 2, 3)) / (3 * flat.sum((1, 2, 3)).clamp_min(1))
    noise = (1 - noise_rms.sqrt() / 0.05).clamp(0, 1)
    # Sharpness: Σ|∇|² / Σ|∇| in the edge zone ≈ contrast / edge width; divided by contrast.
    g = _gradient_norm(_box(x, 3))
    e = edge[:, :, :-1, :-1]
    ratio = (g * g * e).sum((1, 2, 3)) / (g * e).sum((1, 2, 3)).clamp_min(1e-6)
    ratio = ratio / seg.contrast.clamp_min(0.05)
    sharpness = ((ratio - 0.17) / 0.13).clamp(0, 1)
    # Saturation: chroma (max − min channel) relative to that of the palette colour nearest in hue,
    # so every colour of the world is equally saturated at full strength and a hue drift (purple
    # → blue) is no gain; washing out toward luminance scales it by 1 − 0.8·strength.
    saturation = ((_relative_chroma(x).mean((1, 2)) - 0.2) / 0.75).clamp(0, 1)
    # Smudges: in flat regions, how far the low-passed colour strays from its cluster colour (97th pct).
    low = _box(x, 5)
    ref = seg.background[:, :, None, None] * (1 - mask) + seg.foreground[:, :, None, None] * mask
    dev = _length(low - ref).flatten(1)
    dev = torch.where(flat.flatten(1) > 0, dev, torch.zeros_like(dev))
    smudge_level = torch.quantile(dev, 0.97, dim=1)
    smudge = (1 - (smudge_level - 0.03) / 0.15).clamp(0, 1)
    # Jaggies: anti-aliased edges have pixels of partial coverage; staircases rasterised without
    # anti-aliasing have none. Count partial pixels per unit of (city-block) boundary length.
    partial = ((seg.alpha > 0.25) & (seg.alpha < 0.75)).float() * edge
    length = (mask[:, :, 1:] - mask[:, :, :-1]).abs().sum((1, 2, 3)) + (mask[..., 1:] - mask[..., :-1]).abs().sum((1, 2, 3))
    aa_share = partial.sum((1, 2, 3)) / length.clamp_min(4.0)
    jaggies = ((aa_share - 0.03) / 0.18).clamp(0, 1)
    return AestheticTerms(sharpness, noise, saturation, smudge, jaggies)


def aesthetic(images: torch.Tensor) -> torch.Tensor:
    """Ground-truth aesthetic on 0–10 of images Tensor[B, 3, H, W] in [−1, 1] -> Tensor[B]."""
    return aesthetic_terms(images).total()


@dataclass(frozen=True)
class AlignmentTerms:
    """Each Tensor[B] in [0, 1]; total() is their product (one wrong attribute makes it low)."""

    shape: torch.Tensor
    colour: torch.Tensor
    background: torch.Tensor
    position: torch.Tensor

    def total(self) -> torch.Tensor:
        return self.shape * self.colour * self.background * self.position


def _colour_prob(rgb: torch.Tensor, target: torch.Tensor, temperature: float = 0.08) -> torch.Tensor:
    """P(target palette colour | rgb) by hue direction, so washed-out colours still count."""
    chroma = rgb - rgb.mean(1, keepdim=True)
    pal = _PALETTE - _PALETTE.mean(1, keepdim=True)
    cos = F.normalize(chroma, dim=1, eps=1e-6) @ F.normalize(pal, dim=1).T
    weak = _length(chroma) < 0.03  # grey: no hue to judge
    p = torch.softmax(cos / temperature, dim=1).gather(1, target[:, None])[:, 0]
    return torch.where(weak, torch.zeros_like(p), p)


def alignment_terms(images: torch.Tensor, captions: Sequence[str]) -> AlignmentTerms:
    """Per-attribute alignment of images Tensor[B, 3, H, W] in [−1, 1] with their captions."""
    scenes = [parse_caption(c) for c in captions]
    if len(scenes) != images.shape[0]:
        raise ValueError(f"alignment: {images.shape[0]} images but {len(scenes)} captions")
    seg = segment(images)
    b, _, h, w = seg.alpha.shape
    mask = seg.mask
    area = mask.sum((1, 2, 3))
    present = (area >= _MIN_AREA).float()
    colour = _colour_prob(seg.foreground, torch.tensor([_COLOUR_INDEX[s.colour] for s in scenes])) * present
    background = _colour_prob(seg.background, torch.tensor([_COLOUR_INDEX[s.background] for s in scenes]))
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    cx = (mask[:, 0] * xx).sum((1, 2)) / area.clamp_min(1)
    cy = (mask[:, 0] * yy).sum((1, 2)) / area.clamp_min(1)
    target = torch.tensor([POSITIONS[s.position] for s in scenes])
    dist = ((cx - target[:, 0]) ** 2 + (cy - target[:, 1]) ** 2).sqrt()
    position = torch.exp(-((dist - 5).clamp_min(0) ** 2) / (2 * 5.0**2)) * present
    # Shape: IoU with each template placed at the centroid with the same area; softmax over shapes.
    geom = Geometry(cx, cy, (area / torch.pi).sqrt())
    ious = []
    for shape in SHAPES:
        tmpl = coverage([shape] * b, geom, supersample=1)
        inter = (tmpl * mask).sum((1, 2, 3))
        ious.append(inter / ((tmpl + mask).clamp(max=1).sum((1, 2, 3))).clamp_min(1))
    ious = torch.stack(ious, 1)
    shape_idx = torch.tensor([_SHAPE_INDEX[s.shape] for s in scenes])
    shape = torch.softmax(ious / 0.03, dim=1).gather(1, shape_idx[:, None])[:, 0] * present
    return AlignmentTerms(shape, colour, background, position)


def alignment(images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
    """Ground-truth alignment in [0, 1] of images Tensor[B, 3, H, W] in [−1, 1] -> Tensor[B]."""
    return alignment_terms(images, captions).total()


def preference_utility(images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
    """What a generic rater likes, Tensor[B] in [0, 1]: 0.6 · aesthetic/10 + 0.4 · alignment."""
    return 0.6 * aesthetic(images) / 10 + 0.4 * alignment(images, captions)


def label_from_utilities(u0: torch.Tensor, u1: torch.Tensor, generator: torch.Generator, temperature: float = 0.05,
                         tie_margin: float = 0.02) -> torch.Tensor:
    """label_0 ∈ {0, 0.5, 1}, Tensor[B]: P(0 preferred) = sigmoid((u0 − u1) / temperature), a tie (0.5)
    when |u0 − u1| < tie_margin, like Pick-a-Pic raters who could not decide."""
    p = torch.sigmoid((u0 - u1) / temperature)
    won = (torch.rand(p.shape, generator=generator) < p).float()
    return torch.where((u0 - u1).abs() < tie_margin, torch.full_like(p, 0.5), won)


def preference_label(
    images_0: torch.Tensor,
    images_1: torch.Tensor,
    captions: Sequence[str],
    generator: torch.Generator,
    temperature: float = 0.05,
    tie_margin: float = 0.02,
) -> torch.Tensor:
    """Noisy generic preference between two images of each caption: label_0 ∈ {0, 0.5, 1}, Tensor[B],
    drawn from the rater's utility (`preference_utility`) by `label_from_utilities`."""
    u0 = preference_utility(images_0, captions)
    u1 = preference_utility(images_1, captions)
    return label_from_utilities(u0, u1, generator, temperature, tie_margin)


class AestheticScore:
    """Ground-truth aesthetic (0–10) behind the project's scorer signature; ignores prompts and timesteps."""

    def score(self, images: torch.Tensor, prompts: Sequence[str], timesteps: torch.Tensor) -> torch.Tensor:
        return aesthetic(images)


class AlignmentScore:
    """Ground-truth alignment (0–1) behind the project's scorer signature; ignores timesteps."""

    def score(self, images: torch.Tensor, prompts: Sequence[str], timesteps: torch.Tensor) -> torch.Tensor:
        return alignment(images, prompts)


class CombinedScore:
    """The generic rater's utility (0–1), the quantity the preference labels are drawn from."""

    def score(self, images: torch.Tensor, prompts: Sequence[str], timesteps: torch.Tensor) -> torch.Tensor:
        return preference_utility(images, prompts)
