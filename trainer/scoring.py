"""The one signature every scorer fits: ground truth, PickScore-style models, the SPM.

    score(images, prompts, timesteps) -> Tensor[B]

images: Tensor[B, 3, H, W] in [−1, 1] (as the VAE decodes them);
prompts: sequence of B strings; timesteps: Tensor[B] long in [0, 1000), the
denoising step the images come from (0 = clean). Higher scores are better.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class Scorer(Protocol):
    def score(self, images: torch.Tensor, prompts: Sequence[str], timesteps: torch.Tensor) -> torch.Tensor: ...


def scorer_device(scorer, default: torch.device | str = "cpu") -> torch.device:
    """Where a scorer's weights live: its `device` attribute, else its first parameter, else `default`."""
    dev = getattr(scorer, "device", None)
    if isinstance(dev, torch.device):
        return dev
    params = getattr(scorer, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device(default)


def scorer_dtype(scorer) -> torch.dtype:
    """The dtype a scorer's weights use (float32 when it has none)."""
    params = getattr(scorer, "parameters", None)
    if callable(params):
        for p in params():
            if p.is_floating_point():
                return p.dtype
    return torch.float32


@torch.no_grad()
def score_batch(
    scorer: Scorer, images: torch.Tensor, prompts: Sequence[str], timesteps, chunk: int = 16
) -> torch.Tensor:
    """Score a batch in chunks of `chunk` images on the scorer's device and dtype.

    The one batch-scoring path of both hosts and the guided sampling strategies.
    images: Tensor[N, 3, H, W] in [−1, 1] (clamped here); prompts: N strings, or one string
    for all; timesteps: int or Tensor[N] long. Returns Tensor[N] float32 on the CPU.
    """
    n = images.shape[0]
    prompts = [prompts] * n if isinstance(prompts, str) else list(prompts)
    if len(prompts) != n:
        raise ValueError(f"score_batch: {n} images but {len(prompts)} prompts")
    t = torch.as_tensor(timesteps).long().reshape(-1).cpu().expand(n) if n else torch.zeros(0, dtype=torch.long)
    device, dtype = scorer_device(scorer, images.device), scorer_dtype(scorer)
    out = []
    for i in range(0, n, max(1, int(chunk))):
        part = images[i : i + chunk].to(device=device, dtype=dtype).clamp(-1, 1)
        out.append(scorer.score(part, prompts[i : i + chunk], t[i : i + chunk].to(device)).detach().float().cpu().reshape(-1))
    return torch.cat(out) if out else torch.zeros(0)
