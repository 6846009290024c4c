"""Shared builders for the SPM tests: a tiny CLIP in the released SPM layout (no tests here)."""
from __future__ import annotations

from pathlib import Path

import torch

# tiny_clip_config's defaults are the SPM tests' CLIP-H in miniature; they import it from here.
from tiny_models import tiny_clip_config, write_tokenizer


def tiny_clip(seed: int = 0, image_size: int = 32):
    from transformers import CLIPModel

    torch.manual_seed(seed)
    return CLIPModel(tiny_clip_config(image_size)).eval()


def randomize_adaln(spm, seed: int = 1, std: float = 0.05) -> None:
    """Give the adaLN and t-embedder weights non-identity values (as a trained SPM has)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in spm.named_parameters():
            if "adaLN" in name or "t_embedder" in name:
                p.add_(torch.randn(p.shape, generator=g) * std)


def released_state_dict(spm, legacy_position_ids: bool = True) -> dict:
    """The state dict as the reference code saved it: `model.*` keys plus the 4.27 position_ids buffers."""
    state = {k: v.detach().clone() for k, v in spm.state_dict().items()}
    if legacy_position_ids:
        cfg = spm.model.config
        state["model.text_model.embeddings.position_ids"] = torch.arange(cfg.text_config.max_position_embeddings)[None]
        n = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2 + 1
        state["model.vision_model.embeddings.position_ids"] = torch.arange(n)[None]
    return state


def tokenizer_dir(root: Path) -> Path:
    write_tokenizer(Path(root) / "tokenizer", max_length=16)
    return Path(root) / "tokenizer"


def near_identity_vae(width: int = 8, gain: float = 0.5):
    """An AutoencoderKL (real class, SD layout, no downsampling) whose weights are set by hand so that
    decode(encode(x)) ≈ x up to a per-image scale: colours and shapes survive, as in a trained VAE.

    Resnets and attention are made residual identities (zero output convs); the convs route
    [R, G, B, −R, −G, −B] through one GroupNorm group, whose mean is then zero (only the scale is
    normalised away) and a SiLU biased into its near-linear range. A random VAE scrambles images
    beyond what a tiny SPM can learn in seconds; this one does not.
    """
    from diffusers import AutoencoderKL
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(width,), layers_per_block=1, latent_channels=4, norm_num_groups=1, sample_size=16,
        scaling_factor=1.0,
    )
    beta = 4.0
    slope = float(torch.sigmoid(torch.tensor(beta)) * (1 + beta * (1 - torch.sigmoid(torch.tensor(beta)))))  # SiLU'(β)
    offset = float(torch.nn.functional.silu(torch.tensor(beta)))

    def route(conv, taps, bias=0.0):
        conv.weight.zero_()
        conv.bias.fill_(bias)
        c = conv.kernel_size[0] // 2
        for out_ch, in_ch, w in taps:
            conv.weight[out_ch, in_ch, c, c] = w

    signed = [(k, k, 1.0) for k in range(3)] + [(3 + k, k, -1.0) for k in range(3)]
    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, ResnetBlock2D):
                m.conv2.weight.zero_()
                m.conv2.bias.zero_()
            elif isinstance(m, Attention):
                m.to_out[0].weight.zero_()
                m.to_out[0].bias.zero_()
        for coder in (vae.encoder, vae.decoder):
            coder.conv_norm_out.weight.fill_(gain)
            coder.conv_norm_out.bias.fill_(beta)
        route(vae.encoder.conv_in, signed)
        route(vae.decoder.conv_in, signed)
        w = 1.0 / (gain * slope)
        route(vae.encoder.conv_out, [(k, k, w) for k in range(4)])
        vae.encoder.conv_out.bias[:4] = -offset * w
        vae.encoder.conv_out.bias[4:] = -20.0  # log-variance: the posterior is (nearly) a point
        # ×0.5: GroupNorm leaves unit RMS over 8 channels, i.e. about twice a typical image's scale
        route(vae.decoder.conv_out, [(k, k, 0.5 * w) for k in range(3)])
        vae.decoder.conv_out.bias[:] = -offset * 0.5 * w
        route(vae.quant_conv, [(k, k, 1.0) for k in range(8)])
        route(vae.post_quant_conv, [(k, k, 1.0) for k in range(4)])
    return vae


def save_spm_test_pipeline(root: Path, seed: int = 0, size: int = 16) -> Path:
    """tests/tiny_models' SD-1.5-layout pipeline with the near-identity VAE: size×size images and latents."""
    from tiny_models import save_tiny_pipeline

    root = save_tiny_pipeline(Path(root), seed=seed)
    unet_cfg = root / "unet" / "config.json"
    import json

    cfg = json.loads(unet_cfg.read_text())
    cfg["sample_size"] = size
    unet_cfg.write_text(json.dumps(cfg))
    near_identity_vae().save_pretrained(root / "vae")
    return root


def colour_pairs(n: int, seed: int, size: int = 8, tie_fraction: float = 0.15) -> list[dict]:
    """Pick-a-Pic rows with a rule a preference model can learn: the image in the caption's colour wins.

    Captions "a red picture" / "a blue picture"; the other image is in the other colour; shades and
    pixel noise vary. A tie_fraction of pairs has both images in the caption's colour, labelled 0.5/0.5.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    base = {"red": np.array([200, 40, 40]), "blue": np.array([40, 40, 200])}

    def image(colour):
        shade = base[colour][None, None] * rng.uniform(0.6, 1.2)
        return np.clip(shade + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)

    rows = []
    for _ in range(n):
        colour = str(rng.choice(["red", "blue"]))
        other = "blue" if colour == "red" else "red"
        caption = f"a {colour} picture"
        if rng.random() < tie_fraction:
            rows.append(dict(caption=caption, jpg_0=image(colour), jpg_1=image(colour), label_0=0.5, label_1=0.5))
        elif rng.random() < 0.5:
            rows.append(dict(caption=caption, jpg_0=image(colour), jpg_1=image(other), label_0=1.0, label_1=0.0))
        else:
            rows.append(dict(caption=caption, jpg_0=image(other), jpg_1=image(colour), label_0=0.0, label_1=1.0))
    return rows


def save_clip_dir(root: Path, seed: int = 0, image_size: int = 16) -> Path:
    """A transformers CLIPModel directory with a tokenizer/ folder: what `--init` takes."""
    tiny_clip(seed, image_size).save_pretrained(str(root))
    tokenizer_dir(root)
    return Path(root)
