"""Training the tiny AutoencoderKL (64×64×3 ↔ 16×16×4) and measuring its scaling factor."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .architectures import vae_config
from .optim import warmup_cosine
from .dataset import RenderedSet


def reconstruction_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 on pixels plus L1 on horizontal and vertical differences: edges count, so blur is not free.

    rec, x: Tensor[B, 3, H, W] in [−1, 1].
    """
    return F.l1_loss(rec, x) + F.l1_loss(rec.diff(dim=2), x.diff(dim=2)) + F.l1_loss(rec.diff(dim=3), x.diff(dim=3))


def train_vae(data: RenderedSet, steps: int, seed: int, batch: int = 32, crop: int = 32, lr: float = 2e-3,
              kl_weight: float = 1e-6, log=print):
    """AutoencoderKL trained on random crops (the model is convolutional; crops are 4× cheaper).
    Loss: L1 + L1 of image gradients (keeps edges crisp, so sharpness stays measurable) + tiny KL."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    vae = AutoencoderKL(**vae_config())
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, steps)
    start = time.time()
    for step in range(steps):
        idx = torch.randint(data.images.shape[0], (batch,), generator=g)
        oy, ox = (torch.randint(0, 64 - crop + 1, (2,), generator=g) // 4 * 4).tolist()
        x = data.batch(idx)[:, :, oy:oy + crop, ox:ox + crop]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = reconstruction_loss(rec, x)
        loss = loss + kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {loss.item():.4f} ({time.time() - start:.0f}s)")
    return vae.eval()


@torch.no_grad()
def measure_scaling_factor(vae, data: RenderedSet, n: int = 512, seed: int = 0) -> float:
    """1 / std of sampled latents over n training images, so the UNet sees unit-variance latents (as SD's 0.18215)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(data.images.shape[0], generator=g)[:n]
    lat = torch.cat([vae.encode(data.batch(idx[i:i + 128])).latent_dist.sample(generator=g) for i in range(0, n, 128)])
    return float(1.0 / lat.std())


def finetune_decoder(vae, data: RenderedSet, steps: int, seed: int, batch: int = 16, lr: float = 5e-4, log=print):
    """Second phase on whole 64×64 images, decoder only: crops leave block-shaped colour seams at full
    size; the frozen encoder keeps the latents (and so anything trained on them) unchanged."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    vae.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, steps)
    vae.train()
    start = time.time()
    for step in range(steps):
        x = data.batch(torch.randint(data.images.shape[0], (batch,), generator=g))
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(generator=g)
        rec = vae.decode(z).sample
        loss = reconstruction_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"vae decoder step {step}/{steps} loss {loss.item():.4f} ({time.time() - start:.0f}s)")
    vae.requires_grad_(True)
    return vae.eval()
