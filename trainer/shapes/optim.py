"""The one learning-rate schedule every ShapesWorld model trains with."""
from __future__ import annotations

import math

import torch


def warmup_cosine(opt: torch.optim.Optimizer, steps: int, warmup_fraction: float = 0.05, floor: float = 0.02):
    """Linear warm-up over warmup_fraction of the steps, then cosine decay to floor × lr."""
    warm = max(1, int(steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        p = min(1.0, (step - warm) / max(1, steps - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
