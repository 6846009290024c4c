"""Pair selection and the SPO loss: pure functions (spec §2 step 4 and §3)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Pairs:
    """Winner/loser choice among the k candidates of each of B prompts.

    win, lose: Tensor[B] long, candidate indices (argmax / argmin of the scores).
    gap: Tensor[B], softmax([s_win, s_lose])[0] − softmax(...)[1] = tanh((s_win − s_lose)/2).
    keep: Tensor[B] bool, gap > threshold (otherwise the pair is a tie and dropped).
    """

    win: torch.Tensor
    lose: torch.Tensor
    gap: torch.Tensor
    keep: torch.Tensor


def select_pairs(scores: torch.Tensor, threshold: float) -> Pairs:
    """Best and worst candidate per prompt, kept only when clearly apart.

    scores: Tensor[B, k] (higher is better). threshold in [0, 1).
    Equal scores give gap 0, which is never > threshold: ties are always dropped.
    """
    win = scores.argmax(dim=1)
    lose = scores.argmin(dim=1)
    s_w = scores.gather(1, win[:, None])[:, 0]
    s_l = scores.gather(1, lose[:, None])[:, 0]
    p = torch.softmax(torch.stack([s_w, s_l], dim=1).float(), dim=1)
    gap = p[:, 0] - p[:, 1]
    return Pairs(win, lose, gap, gap > threshold)


def clipped_log_ratio(log_prob: torch.Tensor, ref_log_prob: torch.Tensor, clip_eps: float) -> torch.Tensor:
    """log clip(p_θ/p_ref, 1−ε, 1+ε), elementwise. Outside the band the gradient is zero, as in PPO."""
    return (log_prob - ref_log_prob).clamp(math.log1p(-clip_eps), math.log1p(clip_eps))


def spo_loss(
    log_prob_win: torch.Tensor,
    log_prob_lose: torch.Tensor,
    ref_log_prob_win: torch.Tensor,
    ref_log_prob_lose: torch.Tensor,
    beta: float = 10.0,
    clip_eps: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO loss on one denoising step, per pair:

        r_w = log p_θ(x_w | x_t) − log p_ref(x_w | x_t)      (r_l likewise)
        L   = −log σ( β · (clip(r_w) − clip(r_l)) )

    All inputs Tensor[N] (per-pair log-probs averaged over C,H,W). Returns (mean loss,
    info) where info has the implicit reward margin and the fraction of pairs where the
    policy already prefers the winner.
    """
    r_w = clipped_log_ratio(log_prob_win, ref_log_prob_win, clip_eps)
    r_l = clipped_log_ratio(log_prob_lose, ref_log_prob_lose, clip_eps)
    margin = beta * (r_w - r_l)
    loss = -F.logsigmoid(margin)
    info = {"reward_margin": margin.detach().mean(), "accuracy": (margin.detach() > 0).float().mean()}
    return loss.mean(), info
