"""Torch preprocessing against transformers' own CLIP image processor on PIL images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.spm.preprocess import PreprocessConfig, clip_preprocess


def _hf_processor(size: int):
    try:
        from transformers import CLIPImageProcessorPil as cls  # transformers >= 5 without torchvision
    except ImportError:
        from transformers import CLIPImageProcessor as cls
    return cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _test_image(h: int, w: int, seed: int) -> Image.Image:
    """Smooth gradients plus shapes and some noise: edges, flat areas and texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx / w * 255, yy / h * 255, (xx + yy) % 64 * 4], -1)
    img[h // 4 : h // 2, w // 3 : w // 2] = [250, 20, 30]
    img = img + rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


@pytest.mark.parametrize("h, w, size", [(512, 512, 224), (300, 420, 224), (640, 360, 224), (150, 200, 224), (64, 64, 32), (97, 61, 32)])
def test_matches_clip_image_processor(h, w, size):
    pil = _test_image(h, w, seed=h + w)
    expected = torch.from_numpy(np.asarray(_hf_processor(size)(images=pil, return_tensors="np")["pixel_values"]))
    images = torch.from_numpy(np.array(pil)).permute(2, 0, 1)[None].float() / 127.5 - 1
    cfg = PreprocessConfig(image_size=size)
    ours = clip_preprocess(images, cfg)
    assert ours.shape == expected.shape == (1, 3, size, size)
    std = torch.tensor(cfg.image_std).view(1, 3, 1, 1)
    pixel_diff = ((ours - expected) * std).abs()  # back in [0, 1] pixel units
    assert pixel_diff.mean() < 1 / 255, f"mean abs diff {pixel_diff.mean() * 255:.3f}/255"


def test_runs_on_half_precision_input_and_keeps_float32():
    images = torch.rand(2, 3, 64, 80, dtype=torch.float16) * 2 - 1
    out = clip_preprocess(images, PreprocessConfig(image_size=32))
    assert out.dtype == torch.float32 and out.shape == (2, 3, 32, 32)


def test_gradients_flow_through_preprocessing():
    images = (torch.rand(1, 3, 48, 48) * 2 - 1).requires_grad_(True)
    clip_preprocess(images, PreprocessConfig(image_size=32)).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
