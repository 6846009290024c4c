"""The SPM training objective and pairwise accuracy: pure functions on score tensors."""
from __future__ import annotations

import torch


def preference_loss(score_0: torch.Tensor, score_1: torch.Tensor, label_0: torch.Tensor, label_1: torch.Tensor) -> torch.Tensor:
    """Label-weighted two-way cross-entropy minus the labels' entropy, per pair: Tensor[B].

        p = softmax([s0, s1]);   L = Σ_i y_i·(log y_i − log p_i)   (= KL(y ‖ p), with 0·log 0 = 0)

    score_*: Tensor[B] logits (logit_scale·cos); label_*: Tensor[B], label_0 + label_1 = 1.
    For a decided pair (1/0) this is the plain cross-entropy; for a tie (0.5/0.5) the
    log 2 floor is removed, so a perfectly predicted tie costs exactly zero.
    """
    logp = torch.log_softmax(torch.stack([score_0, score_1], dim=-1).float(), dim=-1)
    y = torch.stack([label_0, label_1], dim=-1).to(logp)
    return (torch.xlogy(y, y) - y * logp).sum(dim=-1)


def pair_correct(score_0: torch.Tensor, score_1: torch.Tensor, label_0: torch.Tensor, label_1: torch.Tensor) -> torch.Tensor:
    """1.0 where the higher score is on the preferred side, else 0.0; NaN for ties. Tensor[B]."""
    decided = label_0 != label_1
    right = ((score_0 > score_1) == (label_0 > label_1)).float()
    return torch.where(decided, right, torch.full_like(right, float("nan")))
