"""Pair selection and SPO loss against hand-computed numbers."""
import math

import pytest
import torch

from trainer.spo.pairs import select_pairs, spo_loss


def test_select_pairs_best_worst_and_threshold():
    scores = torch.tensor([[0.1, 2.0, -1.0, 0.5], [1.0, 1.2, 1.1, 1.05], [3.0, 3.0, 3.0, 3.0]])
    p = select_pairs(scores, threshold=0.3)
    assert p.win.tolist() == [1, 1, 0] and p.lose.tolist() == [2, 0, 0]
    # softmax([2, -1]) gap = tanh(3/2) = 0.905; softmax([1.2, 1.0]) gap = tanh(0.1) = 0.0997
    assert p.gap[0].item() == pytest.approx(math.tanh(1.5), abs=1e-6)
    assert p.gap[1].item() == pytest.approx(math.tanh(0.1), abs=1e-6)
    assert p.keep.tolist() == [True, False, False]  # row 3 is a perfect tie: always dropped


def test_select_pairs_zero_threshold_still_drops_exact_ties():
    p = select_pairs(torch.tensor([[1.0, 1.0], [1.0, 1.001]]), threshold=0.0)
    assert p.keep.tolist() == [False, True]


def test_spo_loss_hand_computed():
    # r_w = 0.05, r_l = -0.02: inside the clip band; L = -log σ(10 · 0.07) = softplus(-0.7)
    loss, info = spo_loss(torch.tensor([1.05]), torch.tensor([0.98]), torch.tensor([1.0]), torch.tensor([1.0]), beta=10, clip_eps=0.1)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.7)), abs=1e-6)
    assert info["accuracy"].item() == 1.0


def test_spo_loss_ratio_is_clamped():
    # r_w = 2.0 clamps to log 1.1; r_l = -3.0 clamps to log 0.9
    loss, _ = spo_loss(torch.tensor([2.0]), torch.tensor([-3.0]), torch.tensor([0.0]), torch.tensor([0.0]), beta=10, clip_eps=0.1)
    margin = 10 * (math.log(1.1) - math.log(0.9))
    assert loss.item() == pytest.approx(math.log1p(math.exp(-margin)), abs=1e-6)
    lw = torch.tensor([2.0], requires_grad=True)
    spo_loss(lw, torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]))[0].backward()
    assert lw.grad.item() == 0.0  # outside the band no gradient flows


def test_spo_loss_at_equal_policies_is_log2():
    z = torch.zeros(5)
    loss, _ = spo_loss(z, z, z, z)
    assert loss.item() == pytest.approx(math.log(2))
