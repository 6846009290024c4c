"""Training the tiny UNet2DConditionModel: epsilon prediction on SD's noise schedule, 10% caption
dropout (so classifier-free guidance works), with resumable checkpoints."""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .architectures import scheduler_config, unet_config
from .optim import warmup_cosine
from .dataset import RenderedSet
from .train_clip import tokenize


@torch.no_grad()
def encode_latents(vae, data: RenderedSet, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the VAE posterior for every image, each Tensor[N, 4, 16, 16] (unscaled)."""
    means, stds = [], []
    for s in range(0, data.images.shape[0], chunk):
        dist = vae.encode(data.batch(torch.arange(s, min(s + chunk, data.images.shape[0])))).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def encode_captions(text_encoder, tokenizer, captions: list[str]) -> torch.Tensor:
    """Text encoder hidden states Tensor[len(captions), L, width], as the SD pipeline computes them."""
    return text_encoder(tokenize(tokenizer, captions))[0]


def train_unet(latent_mean, latent_std, caption_ids, text_states, uncond_state, scaling_factor: float, steps: int,
               seed: int, checkpoint: Path | None = None, batch: int = 64, lr: float = 8e-4, dropout: float = 0.1,
               init_state: dict | None = None, v_weight_cap: float = 1.0, offset_noise: float = 0.0, log=print):
    """Returns the trained UNet. latent_*: Tensor[N, 4, 16, 16] unscaled; caption_ids Tensor[N];
    text_states Tensor[C, L, D]; uncond_state Tensor[L, D] (the empty caption). Resumes from
    `checkpoint` if it exists and saves it every 250 steps.

    init_state: UNet state dict to start from (a second phase). v_weight_cap > 1 weights the ε-MSE
    by min(1/ᾱ_t, cap), i.e. the v-prediction loss capped: with plain ε-MSE a small UNet learns
    almost nothing about x̂0 at high t (an ε error there is amplified √(1/ᾱ) ≈ 12× in x̂0), and
    sampling from pure noise then ignores the caption.
    offset_noise: std of a per-channel constant added to ε. SD's schedule leaves ᾱ_T ≈ 0.005, so x_T
    still carries the latent's mean (for flat ShapesWorld images: the background colour, at SNR ≈ 1
    on 16×16) and the model learns to copy it instead of drawing it from the caption; sampling
    from zero-mean noise then gives every image the average colour. Offset noise hides that mean.
    """
    from diffusers import DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config())
    if init_state is not None:
        unet.load_state_dict(init_state)
    alphas = DDIMScheduler(**scheduler_config()).alphas_cumprod.float()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    sched = warmup_cosine(opt, steps)
    first = 0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        unet.load_state_dict(state["unet"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        g.set_state(state["generator"])
        first = state["step"]
        log(f"unet: resumed from {checkpoint} at step {first}")
    start = time.time()
    n = latent_mean.shape[0]
    for step in range(first, steps):
        idx = torch.randint(n, (batch,), generator=g)
        x0 = (latent_mean[idx] + latent_std[idx] * torch.randn(latent_mean[idx].shape, generator=g)) * scaling_factor
        t = torch.randint(0, 1000, (batch,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        if offset_noise > 0:
            eps = eps + offset_noise * torch.randn(batch, x0.shape[1], 1, 1, generator=g)
        a = alphas[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        drop = torch.rand(batch, generator=g) < dropout
        cond = torch.where(drop[:, None, None], uncond_state[None], text_states[caption_ids[idx]])
        weight = (1 / a).clamp(max=v_weight_cap)
        loss = (weight * (unet(xt, t, cond).sample - eps) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"unet step {step}/{steps} loss {loss.item():.4f} ({time.time() - start:.0f}s)")
        if checkpoint is not None and ((step + 1) % 250 == 0 or step == steps - 1):
            torch.save({"unet": unet.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "generator": g.get_state(), "step": step + 1}, checkpoint)
    return unet.eval()
