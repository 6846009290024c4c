"""One SPO round: UNet call counts, pair bookkeeping, continuation modes, MSPO."""
import pytest
import torch

from spo_fixtures import Brightness, CountingUNet, tiny_dir
from trainer.models import load_model
from trainer.spo.config import build_config
from trainer.spo.pairs import select_pairs
from trainer.spo.rollout import (
    Group, branch_candidates, branch_steps, continuation_choice, label_group, mspo_groups, score_input, spo_round,
)


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    return load_model(tiny_dir(tmp_path_factory.mktemp("m"), False), family="sd15")


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return load_model(tiny_dir(tmp_path_factory.mktemp("m"), True), family="sdxl")


def sampling(**kw):
    # The paper's window (from step 4, κ = 750) rather than the `shapes` preset's later one, so every
    # kind of step is exercised.
    over = {"sampling.batch_size": 3, "sampling.k": 4, "sampling.threshold": 0.0, "sampling.branch_start": 4}
    over.update({f"sampling.{k}": v for k, v in kw.items()})
    return build_config("shapes", overrides=over).sampling


def run(model, cfg, seed=0, score_timestep="candidate", scorer=None):
    counter = CountingUNet(model.unet)
    model.unet = counter
    try:
        r = spo_round(model, scorer or Brightness(), ["p0", "p1", "p2"][: cfg.batch_size], cfg, torch.Generator().manual_seed(seed), score_timestep)
    finally:
        model.unet = counter.inner
    return r, counter.calls


def test_unet_calls_equal_plain_sampling(sd15):
    cfg = sampling()
    r, calls = run(sd15, cfg)
    # 4 plain steps + 1 forward at the first branched x_t + 15 scoring forwards; the
    # continued candidate's scoring forward is reused, the final candidates need none.
    assert len(calls) == 20
    assert calls[:5] == [2 * 3] * 5  # guided: [uncond; cond] of b = 3 latents
    assert calls[5:] == [2 * 3 * 4] * 15  # one batched forward on all k·b candidates
    assert r.stats["branched"] == 3 * 16
    assert len(r.transitions) == r.stats["kept"]


def test_micro_batch_chunks_the_scoring_forward(sd15):
    r, calls = run(sd15, sampling(micro_batch=6))
    assert len(calls) == 5 + 15 * 2 and set(calls[5:]) == {12}


def test_window_and_branch_steps():
    assert branch_steps(sampling()) == list(range(4, 20))
    assert branch_steps(sampling(branch_start=2, branch_end=6)) == [2, 3, 4, 5]
    assert branch_steps(sampling(inner_steps=3)) == [4, 8, 12, 16]


def test_kept_pairs_are_best_and_worst_and_share_x_t(sd15):
    r, _ = run(sd15, sampling(threshold=0.0))
    tr = r.transitions
    assert tr.shared.all()
    torch.testing.assert_close(tr.start_win, tr.start_lose)
    # the winner is the brighter candidate under the same decoder the scorer saw: check at the final step
    final = tr.timesteps == 1
    assert final.any()
    img_w = sd15.decode(tr.win[final], clamp=False).mean(dim=(1, 2, 3))
    img_l = sd15.decode(tr.lose[final], clamp=False).mean(dim=(1, 2, 3))
    assert (img_w > img_l).all()
    assert set(tr.timesteps.tolist()) == set(range(751, 0, -50))


def test_threshold_drops_ties(sd15):
    r, _ = run(sd15, sampling(threshold=0.999))
    assert len(r.transitions) == 0 and r.stats["tie_rate"] == 1.0


def test_continuation_winner_vs_loser_changes_outcome(sd15):
    bright = {}
    for mode in ("winner", "loser"):
        r, _ = run(sd15, sampling(continuation=mode), seed=3)
        bright[mode] = sd15.decode(r.final_latents).mean().item()
    assert bright["winner"] > bright["loser"]


def test_score_timestep_zero_passes_t0(sd15):
    seen = []

    class Spy(Brightness):
        def score(self, images, prompts, timesteps):
            seen.append(timesteps.clone())
            return super().score(images, prompts, timesteps)

    run(sd15, sampling(branch_start=18), scorer=Spy())
    # step 18 is t=51 -> s=1: candidates are x_1, scored at 1; step 19 ends clean, scored at 0
    assert seen[0].tolist() == [1] * 12 and seen[1].tolist() == [0] * 12
    seen.clear()
    run(sd15, sampling(branch_start=18), score_timestep="zero", scorer=Spy())
    assert all((t == 0).all() for t in seen)


def test_mspo_sdxl_labels_every_transition_and_counts(sdxl):
    cfg = sampling(k=2, inner_steps=3, batch_size=2)
    r, calls = run(sdxl, cfg)
    # 4 plain + 1 at x_4 + per branch (4, 8, 12): 3 inner + 1 scoring; branch 16: 3 inner, final clean
    assert len(calls) == 4 + 1 + 3 * 4 + 3 == 20
    tr = r.transitions
    kept_pairs = r.stats["kept"]
    assert len(tr) == kept_pairs * 4  # j + 1 transitions per kept pair
    assert tr.shared.sum() == kept_pairs  # only the branching transition shares x_t
    inner = ~tr.shared
    assert not torch.equal(tr.start_win[inner], tr.start_lose[inner])


# -- MSPO when the window does not divide by 1 + j (20 steps; step i has t = (19 − i)·50 + 1) ---------
# (start, j): the groups as the reference's MSPO loop forms them, and the timesteps it scores at
# (the step after each group; the last group, ending at the final step, on the clean sample at 0).
MSPO_CASES = {
    (4, 3): ([(4, 7), (8, 11), (12, 15), (16, 19)], [551, 351, 151, 0]),
    (4, 4): ([(4, 8), (9, 13), (14, 19)], [501, 251, 0]),  # step 19 folded into the last group
    (4, 2): ([(4, 6), (7, 9), (10, 12), (13, 15), (16, 19)], [601, 451, 301, 151, 0]),  # ditto
    (5, 3): ([(5, 8), (9, 12), (13, 16), (17, 19)], [501, 301, 101, 0]),  # a short last group
}


@pytest.mark.parametrize("start, j", list(MSPO_CASES))
def test_mspo_groups_fold_the_leftover_like_the_reference(start, j):
    groups, _ = MSPO_CASES[(start, j)]
    assert [(g.start, g.end) for g in mspo_groups(sampling(branch_start=start, inner_steps=j))] == groups


@pytest.mark.parametrize("start, j", list(MSPO_CASES))
def test_mspo_scored_timesteps_and_labelled_transitions(sd15, start, j):
    groups, scored_at = MSPO_CASES[(start, j)]
    seen = []

    class Spy(Brightness):
        def score(self, images, prompts, timesteps):
            seen.append(int(timesteps[0]))
            assert (timesteps == timesteps[0]).all()
            return super().score(images, prompts, timesteps)

    r, calls = run(sd15, sampling(branch_start=start, inner_steps=j), scorer=Spy())
    assert seen == scored_at
    assert len(calls) == 20  # still one guided forward per step
    tr = r.transitions
    # with threshold 0 every pair is kept: every step from `start` on is labelled once per latent,
    # and only each group's first transition shares its x_t
    t_of = lambda i: (19 - i) * 50 + 1
    assert sorted(tr.timesteps.tolist()) == sorted(t_of(i) for i in range(start, 20) for _ in range(3))
    assert sorted(tr.timesteps[tr.shared].tolist()) == sorted(t_of(a) for a, _ in groups for _ in range(3))


def test_j0_branches_at_every_step_including_the_last():
    assert mspo_groups(sampling()) == [Group(i, i) for i in range(4, 20)]


def test_branch_candidates_share_mean_and_std():
    from trainer.schedule import NoiseSchedule, ddim_mean_std

    sched = NoiseSchedule.stable_diffusion()
    x, out = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    noise = torch.randn(2, 3, 4, 3, 3)
    cand = branch_candidates(sched, out, 501, x, noise, 20, 1.0)
    mean, std, _ = ddim_mean_std(sched, out, 501, x, 20, 1.0)
    assert cand.shape == (6, 4, 3, 3)
    torch.testing.assert_close(cand[4], mean[1] + std[1] * noise[1, 1])


def test_score_input_is_x0_hat_at_s_or_the_clean_sample_at_0():
    from trainer.schedule import NoiseSchedule

    sched = NoiseSchedule.stable_diffusion()
    cand, eps = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    a = float(sched.alpha(451))
    x0, ts = score_input(sched, cand, eps, 451)
    assert ts == 451
    torch.testing.assert_close(x0, (cand - (1 - a) ** 0.5 * eps) / a**0.5, atol=1e-5, rtol=1e-5)
    same, ts0 = score_input(sched, cand, None, -49)
    assert ts0 == 0 and same is cand


def test_label_group_pairs_winner_and_loser_paths():
    k = 3
    path = [torch.arange(6.0).view(6, 1, 1, 1) + 10 * m for m in range(3)]  # x_t·k, candidates, one inner step
    win, lose = torch.tensor([2, 0]), torch.tensor([1, 2])
    parts = label_group(path, [501, 451], torch.tensor([1]), win, lose, k)
    assert [int(p.timesteps[0]) for p in parts] == [501, 451]
    assert parts[0].shared.all() and not parts[1].shared.any()
    # row 1: winner is candidate 0 (flat 3), loser candidate 2 (flat 5)
    assert parts[1].start_win.item() == 13 and parts[1].win.item() == 23
    assert parts[1].start_lose.item() == 15 and parts[1].lose.item() == 25
    assert parts[0].prompt_index.tolist() == [1]
    assert label_group(path, [501, 451], torch.tensor([], dtype=torch.long), win, lose, k) == []


def test_continuation_choice_modes():
    win, lose = torch.tensor([2, 0, 1]), torch.tensor([0, 1, 2])
    assert continuation_choice("winner", win, lose, 3, torch.Generator()).tolist() == [2, 0, 1]
    assert continuation_choice("loser", win, lose, 3, torch.Generator()).tolist() == [0, 1, 2]
    draws = torch.cat([continuation_choice("random", win, lose, 3, torch.Generator().manual_seed(s)) for s in range(200)])
    assert set(draws.tolist()) == {0, 1, 2}  # uniform over all k candidates, not only the pair
