"""Summary statistics of a paired evaluation (same prompts and seeds for every model).

The unit of replication is the prompt: scores of the images of one prompt are averaged first,
then intervals are Student-t 95% over prompts, so several seeds per prompt do not pass for
independent evidence.
"""
from __future__ import annotations

import torch

from ..shapes.report import mean_ci95


def per_prompt(values: torch.Tensor, prompt_index: torch.Tensor, n_prompts: int) -> torch.Tensor:
    """Mean per prompt: values Tensor[N], prompt_index Tensor[N] long in [0, n_prompts) -> Tensor[n_prompts]."""
    sums = torch.zeros(n_prompts, dtype=torch.float64).index_add_(0, prompt_index, values.double())
    counts = torch.zeros(n_prompts, dtype=torch.float64).index_add_(0, prompt_index, torch.ones_like(values, dtype=torch.float64))
    return sums / counts


def summarize(values: torch.Tensor, prompt_index: torch.Tensor, n_prompts: int) -> dict:
    """{"mean", "lo", "hi", "n_images", "n_prompts"} of one model's scores Tensor[N]."""
    m, lo, hi = mean_ci95(per_prompt(values, prompt_index, n_prompts))
    return {"mean": m, "lo": lo, "hi": hi, "n_images": int(values.numel()), "n_prompts": n_prompts}


def paired(model: torch.Tensor, base: torch.Tensor, prompt_index: torch.Tensor, n_prompts: int) -> dict:
    """Difference model − base (same prompt and seed) and the win rate of model over base.

    win: 1 when the model's image scores higher, 0.5 on a tie, 0 otherwise; both with a 95% interval over prompts.
    """
    diff = model.double() - base.double()
    win = (diff > 0).double() + 0.5 * (diff == 0).double()
    d = mean_ci95(per_prompt(diff, prompt_index, n_prompts))
    m, lo, hi = mean_ci95(per_prompt(win, prompt_index, n_prompts))
    w = (m, max(0.0, lo), min(1.0, hi))  # a rate: the t interval is cut to [0, 1]
    return {"diff": dict(zip(("mean", "lo", "hi"), d)), "win_rate": dict(zip(("mean", "lo", "hi"), w))}
