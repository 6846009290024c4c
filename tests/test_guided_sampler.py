"""The host-free SPO-guided sampler: σ-space DDIM math, evaluation count, reuse, selection."""
from __future__ import annotations

import pytest
import torch

from trainer.schedule import NoiseSchedule, ddim_step
from trainer.spo.guided_sampler import (
    branched_steps,
    choose_candidates,
    ddim_sigma_mean,
    expected_model_evals,
    rank_best_first,
    sigma_to_timestep,
    spo_guided_sample,
    spo_guided_sample_traced,
)
from trainer.spo.strategies import (
    StrategyConfig,
    best_per_sample,
    potential_update,
    resample_ancestors,
    resampling_steps,
    sample,
    strategy_cost,
)

SD = NoiseSchedule.stable_diffusion()
SHAPE = (1, 4, 8, 8)


def sd_sigma(t: int) -> float:
    a = float(SD.alpha(t))
    return ((1 - a) / a) ** 0.5


def eps_model(x_vp: torch.Tensor, t: float) -> torch.Tensor:
    """A fixed non-linear stand-in for a UNet's ε prediction in VP space."""
    return torch.tanh(0.7 * x_vp + t / 1000.0) + 0.1 * x_vp.flip(-1)


def denoiser_from_eps(sigma_to_t):
    """k-diffusion x0 model around `eps_model`, the way hosts wrap an ε UNet."""

    def denoise(x, sigma_vec):
        s = sigma_vec.to(torch.float64).reshape(-1, 1, 1, 1)
        x_vp = x / (1 + s**2).sqrt()
        eps = eps_model(x_vp.to(x.dtype), float(sigma_to_t(sigma_vec[:1])[0]))
        return (x - s * eps).to(x.dtype)

    return denoise


class Counting:
    """Wraps a denoiser; records the batch size of every call."""

    def __init__(self, fn):
        self.fn, self.rows = fn, []

    def __call__(self, x, sigma):
        assert sigma.shape == (x.shape[0],)
        self.rows.append(x.shape[0])
        return self.fn(x, sigma)


def toy_denoise(x, sigma):
    # contracts towards a fixed pattern; depends on σ so reuse errors would show
    s = sigma.reshape(-1, 1, 1, 1)
    return (0.6 * x + 0.3 * torch.sin(x * 3)) / (1 + 0.1 * s)


def karras_like(n: int) -> torch.Tensor:
    return torch.cat([torch.linspace(8.0, 0.1, n), torch.zeros(1)])


def brightness(x0, t):
    return x0.mean(dim=(1, 2, 3))


# ---------------------------------------------------------------- math vs trainer.schedule / diffusers


def test_sigma_space_step_equals_vp_ddim_step_on_sd_schedule():
    g = torch.Generator().manual_seed(0)
    n = 20
    for t in SD.timesteps(n).tolist():  # 951 ... 1; the last one steps to ᾱ_0 (σ > 0)
        s_prev = int(SD.prev_timestep(t, n))
        x_vp = torch.randn(SHAPE, generator=g, dtype=torch.float64)
        z = torch.randn(SHAPE, generator=g, dtype=torch.float64)
        ref = ddim_step(SD, eps_model(x_vp, t), t, x_vp, n, eta=1.0, noise=z)

        sig, sig_next = sd_sigma(t), sd_sigma(s_prev)
        x = x_vp / float(SD.alpha(t)) ** 0.5
        x0 = x - sig * eps_model(x_vp, t)
        mean, s = ddim_sigma_mean(x, x0, sig, sig_next)
        a_s = float(SD.alpha(s_prev))
        torch.testing.assert_close((mean + s * z) * a_s**0.5, ref.prev_sample, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(s * a_s**0.5, float(ref.std[0]), rtol=1e-9, atol=1e-12)


def test_sigma_space_step_equals_diffusers_ddim_scheduler():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
    )
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    for t in sched.timesteps.tolist():
        prev = t - 1000 // 10
        x_vp = torch.randn(SHAPE, generator=g, dtype=torch.float64)
        z = torch.randn(SHAPE, generator=g, dtype=torch.float64)
        eps = eps_model(x_vp, t)
        want = sched.step(eps, t, x_vp, eta=1.0, variance_noise=z).prev_sample
        a_t = float(sched.alphas_cumprod[t])
        a_s = float(sched.alphas_cumprod[prev]) if prev >= 0 else float(sched.final_alpha_cumprod)
        sig, sig_next = ((1 - a_t) / a_t) ** 0.5, ((1 - a_s) / a_s) ** 0.5
        x = x_vp / a_t**0.5
        mean, s = ddim_sigma_mean(x, x - sig * eps, sig, sig_next)
        torch.testing.assert_close((mean + s * z) * a_s**0.5, want, rtol=1e-6, atol=1e-6)


def test_unbranched_run_is_a_chain_of_vp_ddim_steps():
    """window (0, 0): the sampler is plain η = 1 DDIM; compare a whole 8-step run."""
    n = 8
    ts = SD.timesteps(n).tolist()
    sigmas = torch.tensor([sd_sigma(t) for t in ts] + [sd_sigma(int(SD.prev_timestep(ts[-1], n)))], dtype=torch.float64)
    noises = [torch.randn(SHAPE, generator=torch.Generator().manual_seed(i), dtype=torch.float64) for i in range(n)]
    it = iter(noises)
    x_vp = torch.randn(SHAPE, generator=torch.Generator().manual_seed(99), dtype=torch.float64)

    sig_t = lambda s: sigma_to_timestep(s)  # noqa: E731
    got = spo_guided_sample(
        denoiser_from_eps(sig_t), x_vp / float(SD.alpha(ts[0])) ** 0.5, sigmas,
        score_x0=brightness, k=2, window=(0.0, 0.0), noise=lambda a, b: next(it),
    )
    ref = x_vp
    for t, z in zip(ts, noises):
        ref = ddim_step(SD, eps_model(ref, t), t, ref, n, eta=1.0, noise=z).prev_sample
    torch.testing.assert_close(got * float(SD.final_alpha_cumprod) ** 0.5, ref, rtol=1e-9, atol=1e-9)


def test_sigma_to_timestep_inverts_sd_sigmas_and_maps_zero_to_clean():
    ts = torch.tensor([0, 1, 250, 501, 750, 999])
    sig = torch.tensor([sd_sigma(int(t)) for t in ts])
    assert sigma_to_timestep(sig).tolist() == ts.tolist()
    assert sigma_to_timestep(torch.tensor([0.0, 20.0])).tolist() == [0, 999]


# ---------------------------------------------------------------- cost, reuse, determinism


def test_window_fractions_and_no_branch_into_sigma_zero():
    sig = karras_like(10)
    assert [i for i, b in enumerate(branched_steps(sig, (0.2, 1.0))) if b] == list(range(2, 9))
    assert [i for i, b in enumerate(branched_steps(sig, (0.0, 0.5))) if b] == [0, 1, 2, 3, 4]
    assert not any(branched_steps(sig, (0.3, 0.3)))
    with pytest.raises(ValueError, match="window"):
        branched_steps(sig, (0.6, 0.4))


@pytest.mark.parametrize("k,window,branched", [(4, (0.2, 1.0), 7), (2, (0.0, 1.0), 9), (3, (0.5, 0.7), 2)])
def test_evaluation_count_is_exact(k, window, branched):
    n, B = 10, 2
    den = Counting(toy_denoise)
    res = spo_guided_sample_traced(
        den, torch.randn(B, 4, 8, 8), karras_like(n), score_x0=brightness, k=k, window=window,
        noise=torch.Generator().manual_seed(0),
    )
    assert len(res.branches) == branched == res.scorer_calls
    assert res.model_evals == expected_model_evals(n, branched, k) == sum(den.rows) // B
    assert res.model_calls == len(den.rows) == n + 0  # one call per step: branched steps' calls replace the next step's
    assert sorted(set(den.rows)) == sorted({B, k * B})
    assert den.rows.count(k * B) == branched


def test_a_branched_last_step_costs_one_more_evaluation():
    """Sigmas ending above 0 (diffusers' DDIM ends at ᾱ_0): the last step branches and its candidates'
    x̂0 are computed for scoring only."""
    n, k = 6, 3
    sig = torch.linspace(8.0, 0.03, n + 1)
    assert all(branched_steps(sig, (0.5, 1.0))[3:])
    den = Counting(toy_denoise)
    res = spo_guided_sample_traced(den, torch.randn(SHAPE), sig, score_x0=brightness, k=k, window=(0.5, 1.0),
                                   noise=torch.Generator().manual_seed(0))
    assert res.model_evals == sum(den.rows) == expected_model_evals(n, 3, k, last_step_branched=True) == n + 2 * 3 + 1
    assert res.branches[-1].timestep == 0  # σ = 0.03 is below SD's σ at t = 1: scored as clean


def test_reused_x0_equals_a_fresh_model_call():
    """With scores that always pick candidate 0, SPO reproduces the plain run fed with the
    same noises: proves the chosen candidate's x̂0 is the right model output to reuse."""
    n, k = 8, 3
    noises = [torch.randn(SHAPE, generator=torch.Generator().manual_seed(i)) for i in range(n * k)]
    x = torch.randn(SHAPE)
    it = iter(noises)
    first = lambda x0, t: torch.tensor([1.0] + [0.0] * (k - 1))  # noqa: E731  k-major, B = 1
    spo = spo_guided_sample(
        toy_denoise, x, karras_like(n), score_x0=first, k=k, window=(0.0, 1.0), noise=lambda a, b: next(it)
    )
    # plain: branched steps 0..6 consume k draws (the chosen one is the first), step 7 (to σ=0) none
    plain_noises = iter([noises[i * k] for i in range(n - 1)])
    plain = spo_guided_sample(
        toy_denoise, x, karras_like(n), score_x0=first, k=k, window=(0.0, 0.0), noise=lambda a, b: next(plain_noises)
    )
    torch.testing.assert_close(spo, plain, rtol=1e-6, atol=1e-6)


def test_same_seed_same_result_other_seed_differs():
    def run(seed, selection="best"):
        return spo_guided_sample(
            toy_denoise, torch.ones(SHAPE), karras_like(6), score_x0=brightness, k=3, selection=selection,
            noise=torch.Generator().manual_seed(seed), choice_generator=torch.Generator().manual_seed(seed),
        )

    assert torch.equal(run(1), run(1))
    assert torch.equal(run(1, "softmax"), run(1, "softmax"))
    assert not torch.allclose(run(1), run(2))


def test_batch_rows_line_up_with_tiled_conditioning():
    """A host tiles per-sample conditioning to the batch (ComfyUI's repeat_to_batch_size): a
    B = 2 run must equal two B = 1 runs with each row's noise."""
    n, k = 6, 3
    cond = torch.tensor([0.5, -0.5]).reshape(2, 1, 1, 1)

    def den(c):
        return lambda x, s: toy_denoise(x, s) + c.repeat(x.shape[0] // c.shape[0], 1, 1, 1)

    draws = [torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(40)]
    x = torch.randn(2, 4, 8, 8)
    it = iter(draws)
    both = spo_guided_sample(den(cond), x, karras_like(n), score_x0=brightness, k=k, noise=lambda a, b: next(it))
    for r in range(2):
        it_r = iter(d[r : r + 1] for d in draws)
        one = spo_guided_sample(
            den(cond[r : r + 1]), x[r : r + 1], karras_like(n), score_x0=brightness, k=k, noise=lambda a, b: next(it_r)
        )
        torch.testing.assert_close(both[r : r + 1], one)


# ---------------------------------------------------------------- selection moves the result


def test_a_brightness_scorer_moves_the_sample():
    """best under +brightness ends brighter than best under −brightness, for every seed."""
    for seed in range(4):
        def run(sign):
            return spo_guided_sample(
                toy_denoise, torch.randn(SHAPE, generator=torch.Generator().manual_seed(100 + seed)), karras_like(8),
                score_x0=lambda x0, t: sign * x0.mean(dim=(1, 2, 3)), k=4,
                noise=torch.Generator().manual_seed(seed),
            )

        assert run(+1).mean() > run(-1).mean() + 0.05


def test_each_branch_keeps_the_top_scoring_candidate_and_scores_at_candidate_timestep():
    seen = []

    def scorer(x0, t):
        seen.append(t.clone())
        return x0.mean(dim=(1, 2, 3))

    sigmas = torch.tensor([sd_sigma(t) for t in (901, 601, 301, 1)] + [0.0])
    res = spo_guided_sample_traced(
        toy_denoise, torch.randn(2, 4, 8, 8), sigmas, score_x0=scorer, k=4, noise=torch.Generator().manual_seed(3)
    )
    for rec in res.branches:
        assert torch.equal(rec.chosen, rec.scores.argmax(dim=0))
    assert [r.timestep for r in res.branches] == [601, 301, 1]
    assert [int(t.unique()) for t in seen] == [601, 301, 1]


def test_softmax_selection_follows_its_distribution():
    scores = torch.tensor([[0.0], [1.0], [2.0]])  # k = 3, B = 1
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(
        torch.cat([choose_candidates(scores, "softmax", 1.0, g) for _ in range(3000)]), minlength=3
    ).double() / 3000
    want = torch.softmax(scores[:, 0].double(), 0)
    assert torch.allclose(counts, want, atol=0.03)
    cold = choose_candidates(scores.repeat(1, 5), "softmax", 1e-4, g)
    assert cold.tolist() == [2] * 5


def test_bad_arguments_raise_one_line_errors():
    kw = dict(score_x0=brightness, noise=torch.Generator())
    with pytest.raises(ValueError, match="k must be >= 2"):
        spo_guided_sample(toy_denoise, torch.zeros(SHAPE), karras_like(3), k=1, **kw)
    with pytest.raises(ValueError, match="selection"):
        spo_guided_sample(toy_denoise, torch.zeros(SHAPE), karras_like(3), k=2, selection="worst", **kw)
    with pytest.raises(ValueError, match="temperature"):
        choose_candidates(torch.zeros(2, 1), "softmax", 0.0)


def test_rank_best_first():
    r = rank_best_first(torch.tensor([0.1, 0.9, 0.5, 0.9]), top_n=3)
    assert r.order.tolist() == [1, 3, 2]
    assert r.scores.tolist() == pytest.approx([0.9, 0.9, 0.5])
    assert rank_best_first(torch.tensor([2.0, 1.0]), top_n=10).order.tolist() == [0, 1]
    with pytest.raises(ValueError):
        rank_best_first(torch.tensor([]))


# ---------------------------------------------------------------- strategies: fk, best-of-k, plain, greedy


class CountingScorer:
    """Wraps a score_x0; records how many rows each call scored."""

    def __init__(self, fn=brightness):
        self.fn, self.rows, self.timesteps = fn, [], []

    def __call__(self, x0, t):
        assert t.shape == (x0.shape[0],)
        self.rows.append(x0.shape[0])
        self.timesteps.append(t.clone())
        return self.fn(x0, t)


STRATEGY_CASES = [
    StrategyConfig(name="plain"),
    StrategyConfig(name="best-of-k", k=3),
    StrategyConfig(name="fk", k=3, window=(0.2, 0.8), every=2, potential="max", lam=2.0),
    StrategyConfig(name="fk", k=2, steps=(3, 7, 9), potential="difference"),
    StrategyConfig(name="fk", k=4, window=(0.0, 1.0), every=1, potential="sum", lam=0.5),
    StrategyConfig(name="greedy", k=3, window=(0.2, 1.0), every=2),
    StrategyConfig(name="greedy", k=2, window=(0.0, 1.0), every=1),
]


@pytest.mark.parametrize("config", STRATEGY_CASES, ids=lambda c: f"{c.name}-k{c.k}-{c.potential}-{c.every}")
@pytest.mark.parametrize("sigmas", [karras_like(10), torch.linspace(8.0, 0.03, 11)], ids=["to-zero", "above-zero"])
def test_strategy_cost_is_what_the_calls_count(config, sigmas):
    """Wrap the denoiser and the scorer with counters: the rows they see, per sample, are the cost."""
    B = 2
    den, scorer = Counting(toy_denoise), CountingScorer()
    res = sample(config, den, torch.randn(B, 4, 8, 8), sigmas, score_x0=scorer, noise=torch.Generator().manual_seed(0),
                 generator=torch.Generator().manual_seed(1))
    cost = strategy_cost(config, sigmas)
    assert sum(den.rows) == B * cost.model_evals == B * res.model_evals
    assert sum(scorer.rows) == B * cost.scorer_images == B * res.scorer_images
    assert len(den.rows) == res.model_calls and len(scorer.rows) == res.scorer_calls
    n, k = len(sigmas) - 1, config.k
    if config.name in ("best-of-k", "fk"):
        assert cost.model_evals == 1 + k * (n - 1)  # ≈ k× plain: the shared first step is computed once
        judged = resampling_steps(config, sigmas) if config.name == "fk" else []
        assert cost.scorer_images == k * (len(judged) + 1)
        assert [r.step for r in res.branches] == judged + [n] and res.branches[-1].timestep == 0


def test_resampling_steps_and_explicit_steps():
    sig = karras_like(20)
    assert resampling_steps(StrategyConfig(window=(0.4, 0.7), every=4), sig) == [8, 12]
    assert resampling_steps(StrategyConfig(window=(0.0, 1.0), every=5), sig) == [5, 10, 15]  # never step 0
    assert resampling_steps(StrategyConfig(steps=(0, 3, 19, 20, 25)), sig) == [3, 19]  # 20 is σ = 0
    assert resampling_steps(StrategyConfig(window=(0.5, 0.5)), sig) == []


def test_potentials_by_hand():
    r1 = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
    r2 = torch.tensor([[2.0], [0.0]], dtype=torch.float64)
    p, st = potential_update("difference", r1, None)
    assert p.flatten().tolist() == [1.0, 3.0]
    p, _ = potential_update("difference", r2, st)
    assert p.flatten().tolist() == [1.0, -3.0]
    p, st = potential_update("max", r1, None)
    p, _ = potential_update("max", r2, st)
    assert p.flatten().tolist() == [2.0, 3.0]
    p, st = potential_update("sum", r1, None)
    p, _ = potential_update("sum", r2, st)
    assert p.flatten().tolist() == [3.0, 3.0]
    with pytest.raises(ValueError, match="potential"):
        potential_update("min", r1, None)


def test_resampling_follows_exp_lambda_weights():
    log_w = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 50.0]], dtype=torch.float64)  # k = 3, B = 2
    g = torch.Generator().manual_seed(0)
    anc = torch.cat([resample_ancestors(log_w, g) for _ in range(2000)], dim=0)  # [3·2000, 2]
    freq = torch.bincount(anc[:, 0], minlength=3).double() / anc.shape[0]
    assert torch.allclose(freq, torch.softmax(log_w[:, 0], 0), atol=0.02)
    assert (anc[:, 1] == 2).all()  # a dominant particle takes every slot
    assert (resample_ancestors(torch.zeros(4, 1), g) < 4).all()


def test_fk_resampling_copies_particles_with_their_history_and_x0():
    """λ huge: after each resampling every particle is a copy of the best one (per sample). With the sum
    potential the copies share their history, so the second resampling follows the new scores alone;
    the copied x̂0 is what the next DDIM step uses (a wrong copy would leave the particles apart)."""
    B, k = 2, 3
    cfg = StrategyConfig(name="fk", k=k, steps=(2, 5), potential="sum", lam=1e6)
    seen = []

    def scorer(x0, t):
        seen.append(x0.clone())
        return x0.mean(dim=(1, 2, 3))

    res = sample(cfg, toy_denoise, torch.randn(B, 4, 8, 8), karras_like(8), score_x0=scorer,
                 noise=torch.Generator().manual_seed(0), generator=torch.Generator().manual_seed(0))
    for rec in res.branches[:-1]:
        assert torch.equal(rec.chosen, rec.scores.argmax(dim=0).expand(k, B))  # ancestors [k, B]
    # right after resampling at step 2 all particles of a sample were one point: the step-3 states differ
    # only by one step's noise, so their x̂0 at step 5 are close but not equal
    x5 = seen[1].reshape(k, B, -1)
    assert not torch.equal(x5[0], x5[1])


def test_best_of_k_keeps_the_top_particle_and_plain_is_one_trajectory():
    B, k = 3, 4
    x = torch.randn(B, 4, 8, 8)
    res = sample(StrategyConfig(name="best-of-k", k=k), toy_denoise, x, karras_like(6), score_x0=brightness,
                 noise=torch.Generator().manual_seed(2))
    final = res.branches[-1]
    assert torch.equal(final.chosen, final.scores.argmax(dim=0))
    torch.testing.assert_close(brightness(res.x, None).double(), final.scores.max(dim=0).values)
    assert best_per_sample(torch.tensor([[0.0, 5.0], [1.0, 2.0]])).tolist() == [1, 0]
    # plain = the unbranched greedy run with the same noises
    plain = sample(StrategyConfig(name="plain"), toy_denoise, x, karras_like(6), score_x0=brightness,
                   noise=torch.Generator().manual_seed(3))
    ref = spo_guided_sample(toy_denoise, x, karras_like(6), score_x0=brightness, k=2, window=(0.0, 0.0),
                            noise=torch.Generator().manual_seed(3))
    torch.testing.assert_close(plain.x, ref)


@pytest.mark.parametrize("name", ["fk", "best-of-k", "greedy"])
def test_every_strategy_moves_the_sample_toward_the_judge(name):
    """+brightness ends brighter than −brightness, on average over seeds (the judge is obeyed)."""
    cfg = StrategyConfig(name=name, k=4, window=(0.2, 0.9), every=1, lam=20.0)
    gaps = []
    for seed in range(4):
        def run(sign):
            return sample(cfg, toy_denoise, torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed)),
                          karras_like(8), score_x0=lambda x0, t: sign * x0.mean(dim=(1, 2, 3)),
                          noise=torch.Generator().manual_seed(seed), generator=torch.Generator().manual_seed(seed)).x

        gaps.append(float(run(+1).mean() - run(-1).mean()))
    assert min(gaps) > 0.02


def test_fk_is_deterministic_and_progress_counts_judged_steps():
    cfg = StrategyConfig(name="fk", k=3, window=(0.2, 0.8), every=2)
    calls = []

    def run(seed):
        return sample(cfg, toy_denoise, torch.ones(SHAPE), karras_like(10), score_x0=brightness,
                      noise=torch.Generator().manual_seed(seed), generator=torch.Generator().manual_seed(seed),
                      progress=lambda d, t: calls.append((d, t))).x

    a = run(1)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]  # steps 2, 4, 6 and the final pick
    assert torch.equal(a, run(1)) and not torch.allclose(a, run(2))


@pytest.mark.parametrize("changes,needle", [
    (dict(name="beam"), "strategy must be one of"), (dict(k=1), "k must be at least 2"),
    (dict(every=0), "judge every"), (dict(potential="min"), "potential"), (dict(lam=float("nan")), "lambda"),
    (dict(window=(0.6, 0.4)), "window"), (dict(name="greedy", selection="worst"), "selection"),
])
def test_bad_strategy_settings_raise_one_line(changes, needle):
    with pytest.raises(ValueError, match=needle):
        strategy_cost(StrategyConfig().replace(**changes), karras_like(4))


def test_score_batch_chunks_and_moves_to_the_scorer_dtype():
    from trainer.scoring import score_batch

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
            self.calls = []

        def score(self, images, prompts, timesteps):
            self.calls.append((images.shape[0], images.dtype, list(prompts), timesteps.tolist()))
            return images.mean(dim=(1, 2, 3)) * self.w

    r = Recorder()
    imgs = torch.linspace(-2, 2, 5).reshape(5, 1, 1, 1).expand(5, 3, 2, 2)
    s = score_batch(r, imgs, "a red circle", torch.tensor([0, 1, 2, 3, 4]), chunk=2)
    assert [c[0] for c in r.calls] == [2, 2, 1] and r.calls[0][1] == torch.float64
    assert r.calls[2][2:] == (["a red circle"], [4])
    assert s.dtype == torch.float32 and s.tolist() == pytest.approx([-1.0, -1.0, 0.0, 1.0, 1.0])  # clamped
    with pytest.raises(ValueError, match="2 images but 3 prompts"):
        score_batch(r, imgs[:2], ["a", "b", "c"], 0)


def test_strategy_module_imports_without_diffusers_peft_accelerate():
    import subprocess
    import sys

    code = ("import sys\n"
            "for m in ('diffusers', 'peft', 'accelerate'): sys.modules[m] = None\n"
            "import trainer.spo.strategies, trainer.scoring\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- trainer.models adapter and the benchmark


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    from tiny_models import save_tiny_pipeline

    from trainer.models import load_model

    root = save_tiny_pipeline(tmp_path_factory.mktemp("pipe"))
    return root, load_model(root)


def test_model_denoiser_over_ddim_sigmas_is_diffusers_ddim_on_a_real_unet(tiny_pipeline):
    """Unbranched, the sampler walks DDIM's own timesteps: same result as ddim_step with the same noises."""
    from trainer.spo.guided_sampler import ddim_sigmas, model_denoiser

    _, model = tiny_pipeline
    n, prompts = 5, ["a red circle", "a blue square"]
    cond, uncond = model.encode_prompts(prompts), model.uncond_embeds(2)
    sigmas = ddim_sigmas(model.schedule, n)
    x_vp = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(0))
    noises = [torch.randn(x_vp.shape, generator=torch.Generator().manual_seed(10 + i)) for i in range(n)]
    it = iter(noises)
    got = spo_guided_sample(model_denoiser(model, cond, uncond, 5.0), x_vp * (1 + sigmas[0] ** 2).sqrt().float(), sigmas,
                            score_x0=brightness, k=2, window=(0.0, 0.0), noise=lambda a, b: next(it))
    ref = x_vp
    for t, z in zip(model.schedule.timesteps(n).tolist(), noises):
        out = model.guided_output(ref, torch.tensor([t, t]), cond, uncond, 5.0)
        ref = ddim_step(model.schedule, out, t, ref, n, eta=1.0, noise=z).prev_sample
    torch.testing.assert_close(got / (1 + sigmas[-1] ** 2).sqrt().float(), ref, rtol=1e-4, atol=1e-4)


def test_benchmark_runs_every_strategy_at_equal_budget_and_writes_json_and_plot(tiny_pipeline, tmp_path):
    import json

    from spm_fixtures import randomize_adaln, tiny_clip, tokenizer_dir
    from transformers import CLIPTokenizer

    from bench.sampler import main
    from trainer.spm.weights import save_pretrained, spm_from_clip

    spm = spm_from_clip(tiny_clip(), step_aware=True)
    randomize_adaln(spm)
    spm.tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir(tmp_path)))
    save_pretrained(spm, tmp_path / "spm")
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    rc = main(["--model", str(tiny_pipeline[0]), "--spm", str(tmp_path / "spm"), "--captions", "2", "--seeds", "2",
               "--steps", "5", "--ks", "2", "--fk-ks", "2", "--fk-window", "0.2", "1.0", "--fk-every", "2", "--greedy-k", "2",
               "--greedy-every", "2", "--ablate", "--noise", "0.5", "--batch", "4", "--out", str(out), "--plot", str(png)])
    assert rc == 0
    rows = {(r["method"], r["judge"]): r for r in json.loads(out.read_text())["results"]}
    # 5 DDIM steps (the last into ᾱ_0, σ > 0): plain 5 evaluations; fk / best-of-2: 1 + 2·4 = 9
    assert rows[("plain", "none")]["model_evals_per_image"] == 5
    assert rows[("best-of-2", "spm")]["model_evals_per_image"] == 9 and rows[("best-of-2", "spm")]["scorer_images_per_image"] == 2
    fk = rows[("fk-difference-k2", "spm")]
    assert fk["settings"]["judged_steps"] == [1, 3] and fk["model_evals_per_image"] == 9
    assert fk["scorer_images_per_image"] == 2 * (2 + 1)
    assert fk["vs_best_of_k_evals"]["baseline"] == "best-of-2" and 0 <= fk["judge_pairwise_accuracy"] <= 1
    # greedy k = 2 every 2 in [0.2, 1): steps 1, 3, and the last step (4) branches: + 1 evaluation
    greedy = rows[("greedy-k2-every2", "oracle")]
    assert greedy["settings"]["judged_steps"] == [1, 3] and greedy["model_evals_per_image"] == 5 + 2
    assert ("fk-difference-k4", "oracle+noise0.5") in rows and fk["vs_plain"]["baseline"] == "plain (particle 0)"
    assert len(fk["aesthetic_per_image"]) == 4
    assert all(r["images"] == 4 and 0 <= r["alignment_mean"] <= 1 for r in rows.values())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
