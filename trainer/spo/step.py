"""The SPO training step on kept transitions: two guided forwards, one loss (spec §3).

Winner and loser of a branching step share x_t, so μ_θ(x_t) and μ_ref(x_t) serve both:
one forward with gradients (adapter on) and one without (adapter off — the reference
model is the same UNet, no copy).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ..models import DiffusionModel, PromptEmbeds
from ..schedule import ddim_mean_std, gaussian_log_prob
from .pairs import spo_loss
from .rollout import Transitions


@contextmanager
def adapter_disabled(unet):
    """Run the base UNet: every peft LoRA layer of `unet` bypassed for the duration."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield unet
    finally:
        for m in layers:
            m.enable_adapters(True)


def unique_starts(batch: Transitions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct x_t of a batch of N transitions.

    Returns (starts [N + U, C, h, w], timesteps [N + U], prompt_index [N + U], lose_row [N]):
    rows 0..N-1 are the winners' starts; the U losers whose start differs (MSPO inner
    transitions) follow; lose_row[i] is the row holding transition i's loser start.
    """
    own = ~batch.shared
    starts = torch.cat([batch.start_win, batch.start_lose[own]])
    timesteps = torch.cat([batch.timesteps, batch.timesteps[own]])
    prompt_index = torch.cat([batch.prompt_index, batch.prompt_index[own]])
    n = len(batch)
    lose_row = torch.arange(n)
    lose_row[own] = n + torch.arange(int(own.sum()))
    return starts, timesteps, prompt_index, lose_row


def transition_loss(
    model: DiffusionModel,
    unet_for_grad: torch.nn.Module,
    batch: Transitions,
    cond: PromptEmbeds,
    uncond: PromptEmbeds,
    num_steps: int,
    guidance_scale: float,
    eta: float,
    beta: float,
    clip_eps: float,
) -> tuple[torch.Tensor, dict]:
    """SPO loss of a batch of N transitions (cond/uncond: embeddings indexed by prompt_index).

    unet_for_grad: the (possibly DDP-wrapped) trainable UNet used for the θ forward.
    Exactly two guided UNet calls: θ with gradients, reference without.
    """
    device = model.device
    starts, ts, pidx, lose_row = unique_starts(batch)
    starts, ts = starts.to(device, model.dtype), ts.to(device)
    c, u = cond.index(pidx.to(cond.hidden.device)), uncond.index(pidx.to(uncond.hidden.device))

    out_theta = model.guided_output(starts, ts, c, u, guidance_scale, unet=unet_for_grad)
    with torch.no_grad(), adapter_disabled(model.unet):
        out_ref = model.guided_output(starts, ts, c, u, guidance_scale)

    mean_theta, std, _ = ddim_mean_std(model.schedule, out_theta, ts, starts, num_steps, eta)
    mean_ref, _, _ = ddim_mean_std(model.schedule, out_ref, ts, starts, num_steps, eta)
    n = len(batch)
    win, lose = batch.win.to(device, model.dtype), batch.lose.to(device, model.dtype)
    lp_w = gaussian_log_prob(win, mean_theta[:n], std[:n])
    lp_l = gaussian_log_prob(lose, mean_theta[lose_row], std[lose_row])
    ref_w = gaussian_log_prob(win, mean_ref[:n], std[:n])
    ref_l = gaussian_log_prob(lose, mean_ref[lose_row], std[lose_row])
    loss, info = spo_loss(lp_w.float(), lp_l.float(), ref_w.float(), ref_l.float(), beta, clip_eps)
    return loss, info
