"""Shared fixtures for SPO tests: tiny pipelines on disk and a deterministic reward."""
from pathlib import Path

import torch

from tiny_models import save_tiny_pipeline


class Brightness:
    """Reward = 20 × mean pixel value: a defined, differentiable-free ground truth for tests."""

    def score(self, images, prompts, timesteps):
        assert images.ndim == 4 and len(prompts) == images.shape[0] == timesteps.shape[0]
        return images.float().mean(dim=(1, 2, 3)) * 20


def tiny_dir(root: Path, sdxl: bool) -> Path:
    d = root / ("tiny-sdxl" if sdxl else "tiny-sd15")
    if not (d / "model_index.json").exists():
        save_tiny_pipeline(d, sdxl=sdxl)
    return d


class CountingUNet(torch.nn.Module):
    """Wraps a UNet and counts forward calls and the batch size of each."""

    def __init__(self, unet):
        super().__init__()
        self.inner = unet
        self.config = unet.config
        self.calls = []

    def forward(self, x, *args, **kwargs):
        self.calls.append(x.shape[0])
        return self.inner(x, *args, **kwargs)
