"""Torch preprocessing: the reference (released SPM) recipe against hand-built torch expectations,
and the CLIPImageProcessor recipe against transformers' own processor on PIL images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import torch.nn.functional as F

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
    cfg = PreprocessConfig(image_size=size, method="clip")
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


# (H, W) -> resized (H', W') with int(x·224/short + 0.5), and torchvision CenterCrop's (top, left),
# worked out by hand: 1216·224/832 = 327.38 -> 327, (327 − 224)/2 = 51.5 rounds to the even 52;
# 1536·224/640 = 537.6 -> 538, offset 157.
REFERENCE_CASES = [
    ((512, 512), (224, 224), (0, 0)),
    ((768, 768), (224, 224), (0, 0)),
    ((832, 1216), (224, 327), (0, 52)),
    ((1216, 832), (327, 224), (52, 0)),
    ((640, 1536), (224, 538), (0, 157)),
]


def _by_hand(images, resized, offsets, size=224):
    """The reference recipe spelled out with torch calls only."""
    x = F.interpolate(images.float(), size=resized, mode="bicubic", align_corners=False, antialias=False)
    top, left = offsets
    x = x[..., top : top + size, left : left + size]
    x = (x / 2 + 0.5).clamp(0, 1)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize("hw, resized, offsets", REFERENCE_CASES)
def test_spo_recipe_matches_non_antialiased_torch_by_hand(hw, resized, offsets):
    g = torch.Generator().manual_seed(hw[0] + hw[1])
    # decoded x̂0 overshoots ±1: values in [−1.3, 1.3], so the clamp position matters
    images = torch.rand(2, 3, *hw, generator=g) * 2.6 - 1.3
    ours = clip_preprocess(images, PreprocessConfig(image_size=224, method="spo"))
    expected = _by_hand(images, resized, offsets)
    assert ours.shape == (2, 3, 224, 224)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    # and it is not the antialiased kernel, nor clamping before the resize
    if hw != (224, 224):
        aa = F.interpolate(images, size=resized, mode="bicubic", align_corners=False, antialias=True)
        assert not torch.allclose(ours, _by_hand(aa, resized, offsets).nan_to_num(), atol=1e-3)
    clamped_first = _by_hand(images.clamp(-1, 1), resized, offsets)
    assert (ours - clamped_first).abs().max() > 1e-3


def test_spo_recipe_crop_offset_is_not_truncated():
    """832×1216: truncating 51.5 would crop one column to the left of the reference's window."""
    images = torch.linspace(-1, 1, 1216).view(1, 1, 1, 1216).expand(1, 3, 832, 1216).contiguous()
    ours = clip_preprocess(images, PreprocessConfig(image_size=224, method="spo"))
    assert not torch.allclose(ours, _by_hand(images, (224, 327), (0, 51)), atol=1e-4)
    torch.testing.assert_close(ours, _by_hand(images, (224, 327), (0, 52)), atol=1e-6, rtol=0)


def test_recipes_agree_when_no_resize_is_needed():
    """ShapesWorld's 64 px images into a 64 px SPM: both recipes see the same pixels, overshoot included."""
    images = torch.rand(3, 3, 64, 64) * 2.4 - 1.2
    spo = clip_preprocess(images, PreprocessConfig(image_size=64, method="spo"))
    clip = clip_preprocess(images, PreprocessConfig(image_size=64, method="clip"))
    torch.testing.assert_close(spo, clip, atol=1e-6, rtol=0)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="preprocess method"):
        PreprocessConfig(method="pil")


# -- HPSv2's recipe: longest side to S, antialiased bicubic on the float tensor, zero padding -------------
def _unnormalised(pixels: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """Pixel values [B, 3, S, S] back in the [0, 1] picture scale (the mean/std normalisation undone)."""
    return pixels * torch.tensor(cfg.image_std).view(1, 3, 1, 1) + torch.tensor(cfg.image_mean).view(1, 3, 1, 1)


@pytest.mark.parametrize("hw,inner,pad", [
    ((64, 96), (21, 32), (5, 6, 0, 0)),    # 64·(32/96) = 21.33 → 21 rows: 11 rows of padding, 5 on top
    ((96, 40), (32, 13), (0, 0, 9, 10)),   # 40·(32/96) = 13.33 → 13 columns: 19 columns, 9 on the left
    ((80, 80), (32, 32), (0, 0, 0, 0)),    # square: no padding, the whole picture
    ((24, 32), (24, 32), (4, 4, 0, 0)),    # longest side already S: not resized, still padded (HPSv2 would fail)
])
def test_hpsv2_recipe_resizes_the_longest_side_and_pads_with_black(hw, inner, pad):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, *hw, generator=g) * 2.4 - 1.2  # some values outside [−1, 1]: a picture clamps them
    cfg = PreprocessConfig(32, method="hpsv2")
    got = clip_preprocess(x, cfg)
    top, bottom, left, right = pad
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (cfg.image_mean, cfg.image_std))
    black = (0 - mean) / std
    if top + bottom:
        assert torch.equal(got[:, :, :top], black.expand(2, 3, top, 32))
        assert torch.equal(got[:, :, 32 - bottom:], black.expand(2, 3, bottom, 32))
    if left + right:
        assert torch.equal(got[..., :left], black.expand(2, 3, 32, left))
        assert torch.equal(got[..., 32 - right:], black.expand(2, 3, 32, right))
    want = F.interpolate((x.clamp(-1, 1) + 1) / 2, size=inner, mode="bicubic", align_corners=False, antialias=True)
    assert torch.allclose(_unnormalised(got, cfg)[:, :, top:32 - bottom, left:32 - right], want, atol=1e-6)


def test_hpsv2_recipe_keeps_bicubic_overshoot():
    """HPSv2 resizes the float tensor, so ringing at a hard edge stays above 1 (a uint8 picture would cut it)."""
    x = -torch.ones(1, 3, 64, 64)
    x[..., 24:40, 24:40] = 1.0  # a white square on black
    hpsv2, clip = PreprocessConfig(32, method="hpsv2"), PreprocessConfig(32, method="clip")
    raw = _unnormalised(clip_preprocess(x, hpsv2), hpsv2)
    assert float(raw.max()) > 1.01 and float(raw.min()) < -0.01
    assert float(_unnormalised(clip_preprocess(x, clip), clip).max()) <= 1 + 1e-6
