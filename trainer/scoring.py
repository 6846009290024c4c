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
