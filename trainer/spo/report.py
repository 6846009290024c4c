"""What a run shows a person: validation grids, and on ShapesWorld the before/after table.

Before = the base UNet (adapter disabled), after = with the trained LoRA; the same
held-out captions and the same fixed seeds, so the two columns differ only by the LoRA.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from ..models import DiffusionModel
from .rollout import sample_images
from .step import adapter_disabled


def _save_grid(rows: list[torch.Tensor], path: Path, labels: list[str]) -> Path:
    from ..shapes import image_grid  # a plain [-1, 1] image grid; nothing ShapesWorld-specific

    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(rows, labels, scale=max(1, 128 // rows[0].shape[-1])).save(path)
    return path


def validation_grid(model: DiffusionModel, prompts: Sequence[str], path: Path, n: int = 8, seed: int = 1234) -> Path:
    """A grid of n fixed-seed samples for the first n prompts: one row base, one row with the LoRA."""
    prompts = list(prompts)[:n]
    seeds = [seed + i for i in range(len(prompts))]
    with adapter_disabled(model.unet):
        before = sample_images(model, prompts, seeds)
    after = sample_images(model, prompts, seeds)
    return _save_grid([before, after], path, ["base", "SPO"])


ALIGNMENT_TERMS = ("shape", "colour", "background", "position")


def evaluate_shapes(model: DiffusionModel, captions: Sequence[str], seeds: int, batch: int = 32) -> dict[str, torch.Tensor]:
    """Ground-truth aesthetic, alignment and its four terms (Tensor[N] each) of fixed-seed samples:
    each caption × seeds 0..seeds-1; "images" Tensor[N, 3, H, W]."""
    from ..shapes import aesthetic
    from ..shapes.truth import alignment_terms

    pairs = [(c, s) for c in captions for s in range(seeds)]
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("aesthetic", "alignment", *ALIGNMENT_TERMS, "images")}
    for i in range(0, len(pairs), batch):
        chunk = pairs[i : i + batch]
        imgs = sample_images(model, [c for c, _ in chunk], [10_000 + s for _, s in chunk])
        terms = alignment_terms(imgs, [c for c, _ in chunk])
        parts["aesthetic"].append(aesthetic(imgs))
        parts["alignment"].append(terms.total())
        for k in ALIGNMENT_TERMS:
            parts[k].append(getattr(terms, k))
        parts["images"].append(imgs)
    return {k: torch.cat(v) for k, v in parts.items()}


def shapes_report(model: DiffusionModel, out: Path, seeds: int = 4) -> dict:
    """Before/after table (Markdown + JSON) and image grid on held-out captions, fixed seeds."""
    from ..shapes import heldout_captions, mean_ci95

    captions = heldout_captions()
    with adapter_disabled(model.unet):
        before = evaluate_shapes(model, captions, seeds)
    after = evaluate_shapes(model, captions, seeds)
    table = {"captions": len(captions), "seeds_per_caption": seeds, "metrics": {}}
    lines = [
        f"Ground truth on {len(captions)} held-out captions × {seeds} fixed seeds (mean [95% interval])",
        "",
        "| metric | before (base) | after (SPO LoRA) | change |",
        "|---|---|---|---|",
    ]
    # The four alignment terms show which attribute a run trades away when alignment drops.
    for name in ("aesthetic", "alignment", *ALIGNMENT_TERMS):
        b, a = mean_ci95(before[name]), mean_ci95(after[name])
        d = mean_ci95(after[name] - before[name])  # paired: same caption and seed
        table["metrics"][name] = {"before": b, "after": a, "paired_change": d}
        label = f"· {name}" if name in ALIGNMENT_TERMS else name
        lines.append(
            f"| {label} | {b[0]:.3f} [{b[1]:.3f}, {b[2]:.3f}] | {a[0]:.3f} [{a[1]:.3f}, {a[2]:.3f}] "
            f"| {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}] |"
        )
    markdown = "\n".join(lines) + "\n"
    out = Path(out)
    (out / "report.md").write_text(markdown)
    (out / "report.json").write_text(json.dumps(table, indent=1))
    n = min(8, len(captions))
    idx = torch.arange(n) * seeds  # first seed of the first n captions
    grid = _save_grid([before["images"][idx], after["images"][idx]], out / "before_after.png", ["base", "SPO"])
    return {"markdown": markdown, "table": table, "grid": grid, "table_md": out / "report.md", "table_json": out / "report.json"}
