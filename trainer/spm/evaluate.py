"""Pairwise accuracy of an SPM on held-out pairs, by timestep bucket.

For each bucket t, both images of a pair are noised with the same (seeded) noise, denoised
to x̂0 by the base model, decoded and scored at t; a pair counts as right when the higher
score is on the preferred side. Ties are left out. Clean images (t = 0 bucket) still go
through the VAE and the UNet, as in training.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from tqdm.auto import tqdm

from ..atomic import write_text
from .data import PairCollate
from .denoise import noised_pair_images
from .objective import pair_correct

if TYPE_CHECKING:
    from ..models import DiffusionModel
    from .model import StepAwarePreferenceModel

DEFAULT_BUCKETS = (0, 250, 500, 750, 950)


@torch.no_grad()
def accuracy_by_timestep(
    spm: "StepAwarePreferenceModel",
    model: "DiffusionModel | None",
    pairs: torch.utils.data.Dataset,
    timesteps: Sequence[int] = DEFAULT_BUCKETS,
    batch_size: int = 8,
    guidance_scale: float = 5.0,
    seed: int = 0,
    max_pairs: int | None = None,
    progress: bool = True,
) -> dict:
    """{"buckets": {t: {"accuracy": float, "pairs": int}}, "mean_accuracy": float}.

    Noise and VAE samples are seeded per bucket, so two SPMs evaluated with the same seed see
    the same x̂0 images. model None: the clean images themselves are scored, one bucket t = 0
    (a PickScore-style model trained without noise).
    """
    was_training = spm.training
    spm.eval()
    n = len(pairs) if max_pairs is None else min(len(pairs), max_pairs)
    subset = torch.utils.data.Subset(pairs, range(n))
    if model is None:
        timesteps = (0,)
    resolution = model.resolution if model is not None else spm.preprocess.image_size
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, collate_fn=PairCollate(resolution))
    device = model.device if model is not None else "cpu"
    # one generator per bucket, drawn from batch after batch: buckets see independent, seeded noise
    gens = {int(t): torch.Generator(device).manual_seed(seed * 1009 + int(t)) for t in timesteps}
    right: dict[int, list] = {int(t): [] for t in timesteps}
    bar = tqdm(total=len(timesteps) * len(loader), desc="SPM eval", disable=not progress, leave=False)
    for batch in loader:  # images are decoded once per batch and never all held at once
        for t in gens:
            ts = torch.full((len(batch),), t, dtype=torch.long)
            if model is None:
                img0, img1 = batch.images_0, batch.images_1
            else:
                img0, img1 = noised_pair_images(model, batch.images_0, batch.images_1, batch.prompts, ts, guidance_scale, gens[t])
            s0 = spm(img0, batch.prompts, ts)
            s1 = spm(img1, batch.prompts, ts)
            right[t].append(pair_correct(s0.cpu(), s1.cpu(), batch.label_0, batch.label_1))
            bar.update()
    result = {}
    for t, parts in right.items():
        both = torch.cat(parts)
        decided = both[~both.isnan()]
        acc = float(decided.mean()) if decided.numel() else float("nan")
        result[t] = {"accuracy": acc, "pairs": int(decided.numel())}
    bar.close()
    spm.train(was_training)
    accs = [v["accuracy"] for v in result.values()]
    return {"buckets": result, "mean_accuracy": sum(accs) / len(accs)}


def format_accuracy_table(report: dict, title: str = "SPM pairwise accuracy") -> str:
    """A Markdown table: one row per timestep bucket."""
    lines = [f"{title}", "", "| t | accuracy | pairs |", "|---:|---:|---:|"]
    for t, v in report["buckets"].items():
        lines.append(f"| {t} | {v['accuracy']:.3f} | {v['pairs']} |")
    lines.append(f"| mean | {report['mean_accuracy']:.3f} | |")
    return "\n".join(lines)


def write_report(report: dict, path: str | os.PathLike) -> Path:
    """Write the accuracy report as JSON (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, json.dumps(report, indent=2))
