"""Training the tiny UNet2DConditionModel (with its text tower): epsilon prediction on SD's noise
schedule, 10% caption dropout (so classifier-free guidance works), with resumable checkpoints."""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .architectures import scheduler_config, unet_config
from .optim import warmup_cosine
from .dataset import RenderedSet


@torch.no_grad()
def encode_latents(vae, data: RenderedSet, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the VAE posterior for every image, each Tensor[N, 4, 16, 16] (unscaled)."""
    means, stds = [], []
    for s in range(0, data.images.shape[0], chunk):
        dist = vae.encode(data.batch(torch.arange(s, min(s + chunk, data.images.shape[0])))).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def train_unet(latent_mean, latent_std, caption_ids, caption_tokens, text_encoder, uncond_tokens,
               scaling_factor: float, steps: int, seed: int, checkpoint: Path | None = None, batch: int = 64,
               lr: float = 8e-4, text_lr: float = 0.0, dropout: float = 0.1, v_weight_cap: float = 30.0,
               offset_noise: float = 0.15, init_unet=None, sample_weight: torch.Tensor | None = None, log=print,
               on_step=None):
    """Train a UNet2DConditionModel conditioned on `text_encoder`; returns (unet, text_encoder).

    latent_*: Tensor[N, 4, 16, 16] unscaled; caption_ids Tensor[N] into caption_tokens Tensor[C, L];
    uncond_tokens Tensor[L] (the empty caption). Resumes from `checkpoint` if it exists and saves it
    every 250 steps. init_unet: continue from this UNet instead of a fresh one (a second phase);
    sample_weight: Tensor[N] ≥ 0, draw training images in proportion to it instead of uniformly.
    on_step(steps_done, unet, text_encoder): called after every step, e.g. to measure the model as it
    learns (it must leave both as it found them).

    text_lr > 0 fine-tunes the text tower with the UNet; 0 keeps it frozen (the build's choice: a
    jointly trained tower grew its colour words' states ~20× and left shape and position at their
    initial scale, and the UNet went on ignoring them).
    v_weight_cap > 1 weights the ε-MSE by min(1/ᾱ_t, cap), i.e. the v-prediction loss capped: with
    plain ε-MSE a small UNet learns almost nothing about x̂0 at high t (an ε error there is amplified
    √(1/ᾱ) ≈ 12× in x̂0), and sampling from pure noise then ignores the caption.
    offset_noise: std of a per-channel constant added to ε. SD's schedule leaves ᾱ_T ≈ 0.005, so x_T
    still carries the latent's mean (for flat ShapesWorld images: the background colour, at SNR ≈ 1
    on 16×16) and the model learns to copy it instead of drawing it from the caption; sampling
    from zero-mean noise then gives every image the average colour. Offset noise hides that mean.
    """
    from diffusers import DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config()) if init_unet is None else init_unet
    unet.requires_grad_(True).train()
    train_text = text_lr > 0
    text_encoder.requires_grad_(train_text).train(train_text)
    alphas = DDIMScheduler(**scheduler_config()).alphas_cumprod.float()
    groups = [{"params": unet.parameters(), "lr": lr}]
    if train_text:
        groups.append({"params": text_encoder.parameters(), "lr": text_lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    sched = warmup_cosine(opt, steps)
    first = 0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        g.set_state(state["generator"])
        first = state["step"]
        log(f"unet: resumed from {checkpoint} at step {first}")
    if not train_text:  # a frozen tower's states are computed once, not every step
        with torch.no_grad():
            caption_states, uncond_state = text_encoder(caption_tokens)[0], text_encoder(uncond_tokens[None])[0]
    start = time.time()
    n = latent_mean.shape[0]
    for step in range(first, steps):
        if sample_weight is None:
            idx = torch.randint(n, (batch,), generator=g)
        else:
            idx = torch.multinomial(sample_weight, batch, replacement=True, generator=g)
        x0 = (latent_mean[idx] + latent_std[idx] * torch.randn(latent_mean[idx].shape, generator=g)) * scaling_factor
        t = torch.randint(0, 1000, (batch,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        if offset_noise > 0:
            eps = eps + offset_noise * torch.randn(batch, x0.shape[1], 1, 1, generator=g)
        a = alphas[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        drop = torch.rand(batch, generator=g) < dropout
        if train_text:
            cond = text_encoder(torch.where(drop[:, None], uncond_tokens[None], caption_tokens[caption_ids[idx]]))[0]
        else:
            cond = torch.where(drop[:, None, None], uncond_state, caption_states[caption_ids[idx]])
        weight = (1 / a).clamp(max=v_weight_cap)
        loss = (weight * (unet(xt, t, cond).sample - eps) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for group in opt.param_groups for p in group["params"]], 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"unet step {step}/{steps} loss {loss.item():.4f} ({time.time() - start:.0f}s)")
        if checkpoint is not None and ((step + 1) % 250 == 0 or step == steps - 1):
            tmp = checkpoint.with_name(checkpoint.name + ".tmp")  # an interrupted save never replaces a good one
            torch.save({"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "generator": g.get_state(), "step": step + 1}, tmp)
            os.replace(tmp, checkpoint)
        if on_step is not None:
            on_step(step + 1, unet, text_encoder)
    return unet.eval(), text_encoder.requires_grad_(False).eval()
