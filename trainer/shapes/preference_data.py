"""Generic preference pairs of ShapesWorld, as Pick-a-Pic has them: two images of one caption,
a noisy label from the rater's mix of taste and layout (ties when close)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from .evaluate import generate
from .render import render
from .truth import label_from_utilities, preference_utility
from .world import COLOURS, POSITIONS, SHAPES, Scene, parse_caption

_ATTRIBUTES = {"shape": SHAPES, "colour": tuple(COLOURS), "background": tuple(COLOURS), "position": tuple(POSITIONS)}


@dataclass
class Pairs:
    """images_0/1: Tensor[N, 3, 64, 64] in [−1, 1]; label_0: Tensor[N] in {0, 0.5, 1};
    utility_0/1: Tensor[N], the noise-free rater utility (for measuring accuracy against the truth)."""

    captions: list[str]
    images_0: torch.Tensor
    images_1: torch.Tensor
    label_0: torch.Tensor
    utility_0: torch.Tensor
    utility_1: torch.Tensor

    TENSORS = ("images_0", "images_1", "label_0", "utility_0", "utility_1")

    def every(self, stride: int) -> "Pairs":
        """Every `stride`-th pair."""
        return Pairs(self.captions[::stride], *(getattr(self, k)[::stride] for k in self.TENSORS))


def perturb(scene: Scene, generator: torch.Generator) -> Scene:
    """The scene with one attribute changed (colour and background kept distinct)."""
    names = list(_ATTRIBUTES)
    while True:
        name = names[int(torch.randint(len(names), (1,), generator=generator))]
        options = _ATTRIBUTES[name]
        value = options[int(torch.randint(len(options), (1,), generator=generator))]
        new = dataclasses.replace(scene, **{name: value})
        if new != scene and new.colour != new.background:
            return new


def make_pairs(captions: list[str], n: int, seed: int, misaligned: float = 0.3, chunk: int = 1024) -> Pairs:
    """n pairs: a caption drawn from `captions`, two renders at independent quality ~ U(0, 1);
    with probability `misaligned` one side shows a scene with one attribute wrong."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(captions), (n,), generator=g)
    caps = [captions[i] for i in pick.tolist()]
    scenes = [parse_caption(c) for c in caps]
    wrong = torch.rand(n, generator=g) < misaligned
    side = torch.rand(n, generator=g) < 0.5
    s0 = [perturb(s, g) if w and not sd else s for s, w, sd in zip(scenes, wrong.tolist(), side.tolist())]
    s1 = [perturb(s, g) if w and sd else s for s, w, sd in zip(scenes, wrong.tolist(), side.tolist())]
    parts = {k: [] for k in ("x0", "x1", "l0", "u0", "u1")}
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        x0 = render(s0[a:b], torch.rand(b - a, generator=g), g)
        x1 = render(s1[a:b], torch.rand(b - a, generator=g), g)
        u0, u1 = preference_utility(x0, caps[a:b]), preference_utility(x1, caps[a:b])
        parts["x0"].append(x0)
        parts["x1"].append(x1)
        parts["l0"].append(label_from_utilities(u0, u1, g))
        parts["u0"].append(u0)
        parts["u1"].append(u1)
    cat = {k: torch.cat(v) for k, v in parts.items()}
    return Pairs(caps, cat["x0"], cat["x1"], cat["l0"], cat["u0"], cat["u1"])


def concat(a: Pairs, b: Pairs) -> Pairs:
    """The pairs of a, then those of b."""
    return Pairs(a.captions + b.captions, *(torch.cat([getattr(a, k), getattr(b, k)]) for k in Pairs.TENSORS))


def write_pairs(pairs: Pairs, out_dir: str | Path) -> Path:
    """Write as a Pick-a-Pic-layout directory (metadata.jsonl + PNGs) with the SPM package's writer."""
    from ..spm.data import write_pickapic_dir

    rows = ({"caption": c, "jpg_0": pairs.images_0[i], "jpg_1": pairs.images_1[i], "label_0": float(pairs.label_0[i]),
             "label_1": 1.0 - float(pairs.label_0[i])} for i, c in enumerate(pairs.captions))
    return write_pickapic_dir(rows, out_dir)


@torch.no_grad()
def sample_pairs(pipe, captions: list[str], n: int, seed: int, steps: int = 10, batch: int = 128) -> Pairs:
    """n pairs of two samples of the base pipeline for one caption (DDIM, η = 0, `steps` steps, two
    seeds), labelled by the same noisy rater. Images Tensor[n, 3, 64, 64] in [−1, 1].

    Pick-a-Pic's pairs, too, are images of the models its preference models then rank.

    Renders alone show the world's exact colours and outlines; the base model's samples are softer,
    with hues between colours and shapes between outlines, and it is among those that the SPO
    trainer's preference model has to choose.
    """
    g = torch.Generator().manual_seed(seed)
    caps = [captions[i] for i in torch.randint(len(captions), (n,), generator=g).tolist()]
    seeds = torch.randint(2**31 - 1, (n, 2), generator=g).tolist()
    x0, x1 = [], []
    for a in range(0, n, batch // 2):
        prompts = [c for c in caps[a:a + batch // 2] for _ in range(2)]
        x = generate(pipe, prompts, [s for pair in seeds[a:a + batch // 2] for s in pair], steps, guidance=5.0)
        x0.append(x[0::2])
        x1.append(x[1::2])
    x0, x1 = torch.cat(x0), torch.cat(x1)
    u0, u1 = preference_utility(x0, caps), preference_utility(x1, caps)
    return Pairs(caps, x0, x1, label_from_utilities(u0, u1, g), u0, u1)
