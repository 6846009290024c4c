"""One SPO round: UNet call counts, pair bookkeeping, continuation modes, MSPO."""
import pytest
import torch

from spo_fixtures import Brightness, CountingUNet, tiny_dir
from trainer.models import load_model
from trainer.spo.config import build_config
from trainer.spo.rollout import branch_steps, spo_round


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
    img_w = sd15.decode(tr.win[final]).mean(dim=(1, 2, 3))
    img_l = sd15.decode(tr.lose[final]).mean(dim=(1, 2, 3))
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
