"""Guided sampling strategies behind one interface, chosen by name: plain, greedy, best-of-k, fk.

Host-free (pure torch; no diffusers, ComfyUI or A1111). Every strategy samples with the
σ-space stochastic DDIM step of `trainer.spo.guided_sampler` from the host's x0 model and
judges states with the host's `score_x0(x̂0, timesteps)` (the SPM at the state's own
timestep, or any other potential):

- "plain": one trajectory, never judged (the baseline).
- "greedy": today's per-step selection: at each judged step k candidates, keep the best
  (`trainer.spo.guided_sampler.spo_guided_sample_traced`).
- "best-of-k": k trajectories, the final images scored once at t = 0, the best kept.
- "fk": Feynman–Kac / SMC steering (Singhal et al. 2025, "A general framework for
  inference-time scaling and steering of diffusion models"): k particles; at each
  resampling step the particles are scored on the x̂0 the step has already computed and
  resampled with probabilities ∝ exp(λ·potential); at the end the best particle by a
  t = 0 score is kept. Potentials, with r_j the score at the j-th resampling step:
      difference: r_j − r_{j−1} (r_0 = 0; the product over steps is exp(λ·r_last))
      max:        max(r_1 .. r_j)
      sum:        r_1 + .. + r_j
  Weights reset after each resampling, so each resampling uses only its step's potential
  (the history travels with the particle that is copied).

Every particle starts from the host's x (so img2img and inpainting work unchanged) and the
first step's x̂0 is computed once and shared: with η = 1 the first step's noise already
makes the particles differ. Cost per sample, n steps (`Strategy.cost`):

    plain       n model evaluations,                     0 scorer images
    greedy      n + (k−1)·W (+1 if the last step branches), k·W   (W judged steps)
    best-of-k   1 + k·(n−1),                              k
    fk          1 + k·(n−1),                              k·(R + 1)  (R resampling steps)

so best-of-k and fk cost ≈ k× the model evaluations of plain sampling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable

import torch

from .guided_sampler import (
    BranchRecord,
    Denoiser,
    GuidedSample,
    NoiseSampler,
    X0Scorer,
    _noise_source,
    branched_steps,
    ddim_sigma_mean,
    expected_model_evals,
    sigma_to_timestep,
    spo_guided_sample_traced,
)

STRATEGIES = ("plain", "greedy", "best-of-k", "fk")
POTENTIALS = ("difference", "max", "sum")
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Cost:
    """Per-sample cost of a strategy: model evaluations (one x0 prediction of one latent) and
    images given to the scorer (each one VAE decode + one scorer forward)."""

    model_evals: int
    scorer_images: int


@dataclass(frozen=True)
class StrategyConfig:
    """What the user picks. Fields a strategy does not use are ignored by it.

    name: one of STRATEGIES.
    k: candidates per judged step (greedy), trajectories (best-of-k), particles (fk); ≥ 2.
    window, every: the judged steps: those from window[0]·n to window[1]·n (fractions of the n
        steps), every `every` (greedy: the branched steps, see `branched_steps`; fk: the
        resampling steps, see `resampling_steps`).
    steps: fk only: explicit resampling step indices, overriding window and every, e.g. (8, 12).
    selection, temperature: greedy only ("best" | "softmax").
    potential: fk only, one of POTENTIALS. lam: fk's λ (weights ∝ exp(λ·potential)).
    """

    name: str = "fk"
    k: int = 4
    window: tuple[float, float] = (0.4, 0.7)
    every: int = 4
    steps: tuple[int, ...] | None = None
    selection: str = "best"
    temperature: float = 1.0
    potential: str = "difference"
    lam: float = 16.0

    def problem(self) -> str | None:
        """One line saying what is wrong, or None."""
        if self.name not in STRATEGIES:
            return f"strategy must be one of {', '.join(STRATEGIES)}, got {self.name!r}"
        if self.name != "plain" and int(self.k) < 2:
            return f"k must be at least 2 for {self.name}, got {self.k}"
        if int(self.every) < 1:
            return f"judge every must be at least 1 step, got {self.every}"
        if self.name == "fk":
            if self.potential not in POTENTIALS:
                return f"potential must be one of {', '.join(POTENTIALS)}, got {self.potential!r}"
            if not (math.isfinite(self.lam) and self.lam >= 0):
                return f"lambda must be a finite number >= 0, got {self.lam}"
        if not 0.0 <= self.window[0] <= self.window[1] <= 1.0:
            return f"window must satisfy 0 <= start <= end <= 1, got {self.window[0]}..{self.window[1]}"
        if self.name == "greedy":
            if self.selection not in ("best", "softmax"):
                return f"selection must be best or softmax, got {self.selection!r}"
            if self.selection == "softmax" and not self.temperature > 0:
                return f"softmax temperature must be > 0, got {self.temperature}"
        return None

    def check(self) -> "StrategyConfig":
        problem = self.problem()
        if problem is not None:
            raise ValueError(problem)
        return self

    def replace(self, **changes) -> "StrategyConfig":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return StrategyConfig(**values)


# ---------------------------------------------------------------- schedules and costs


def resampling_steps(config: StrategyConfig, sigmas: torch.Tensor) -> list[int]:
    """fk's resampling step indices i (the state at σ_i is judged, then resampled, then stepped).

    `config.steps` when given, else the steps of `config.window` taken every `config.every`
    (as greedy's `branched_steps`: window (0.4, 0.7), every 4 on 20 steps → 8, 12). Never
    step 0 (all particles are still one point) and never a state at σ = 0.
    sigmas: Tensor[n+1], descending.
    """
    n = len(sigmas) - 1
    if config.steps is not None:
        wanted = [int(i) for i in config.steps]
    else:
        start, end = config.window
        first = math.ceil(start * n - 1e-9)
        wanted = [i for i in range(n) if start * n <= i < end * n and (i - first) % int(config.every) == 0]
    return sorted({i for i in wanted if 0 < i < n and float(sigmas[i]) > 0})


def strategy_cost(config: StrategyConfig, sigmas: torch.Tensor) -> Cost:
    """Exact per-sample cost of `sample(config, ...)` over these sigmas (Tensor[n+1])."""
    config.check()
    n, k = len(sigmas) - 1, int(config.k)
    if config.name == "plain":
        return Cost(n, 0)
    if config.name == "greedy":
        branch = branched_steps(sigmas, config.window, config.every)
        return Cost(expected_model_evals(n, sum(branch), k, last_step_branched=bool(branch and branch[-1])),
                    k * sum(branch))
    evals = 1 + k * (n - 1)
    if config.name == "best-of-k":
        return Cost(evals, k)
    return Cost(evals, k * (len(resampling_steps(config, sigmas)) + 1))


# ---------------------------------------------------------------- selection helpers (also used by the hosts)


def best_per_sample(scores: torch.Tensor) -> torch.Tensor:
    """Best-of-k: for scores Tensor[k, B] (k-major: row j is trajectory j of every sample),
    the index in [0, k) of the highest score per sample, Tensor[B] long (ties: lowest index)."""
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(f"scores must be a Tensor[k, B], got shape {tuple(scores.shape)}")
    return scores.detach().float().cpu().argmax(dim=0)


def resample_ancestors(log_weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Multinomial resampling per sample: log_weights Tensor[k, B] → ancestors Tensor[k, B] long,
    each column k draws with replacement from softmax(log_weights[:, b])."""
    probs = torch.softmax(log_weights.detach().to("cpu", torch.float64), dim=0)
    return torch.multinomial(probs.T, probs.shape[0], replacement=True, generator=generator).T


def potential_update(kind: str, score: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(potential, new state) of one resampling step. score, state: Tensor[k, B] float64
    (state: the previous step's value for each particle, None at the first step)."""
    if kind == "difference":
        return score - (0 if state is None else state), score
    if kind == "max":
        m = score if state is None else torch.maximum(score, state)
        return m, m
    if kind == "sum":
        s = score if state is None else score + state
        return s, s
    raise ValueError(f"potential must be one of {', '.join(POTENTIALS)}, got {kind!r}")


# ---------------------------------------------------------------- the strategies


def sample(
    config: StrategyConfig,
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    score_x0: X0Scorer,
    noise: NoiseSampler | torch.Generator | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
    sigma_to_t: Callable[[torch.Tensor], torch.Tensor] = sigma_to_timestep,
    progress: Progress | None = None,
    eta: float = 1.0,
) -> GuidedSample:
    """Run the strategy `config.name` from x [B, C, H, W] at sigmas[0] to sigmas[-1].

    Arguments as `spo_guided_sample_traced`; `generator` drives the random choices
    (greedy's softmax draws, fk's resampling), `noise` the DDIM noise. Returns the chosen
    sample per row, Tensor[B, C, H, W], with exact counts (`strategy_cost` predicts them).
    progress(done, total) is called after each judged step (fk and best-of-k count the
    final t = 0 judgement as one).
    """
    config.check()
    if config.name == "greedy":
        return spo_guided_sample_traced(
            denoise, x, sigmas, score_x0=score_x0, k=config.k, window=config.window, every=config.every,
            selection=config.selection, temperature=config.temperature, noise=noise, choice_generator=generator,
            callback=callback, sigma_to_t=sigma_to_t, eta=eta, progress=progress,
        )
    k = 1 if config.name == "plain" else int(config.k)
    judge = resampling_steps(config, sigmas) if config.name == "fk" else []
    return _particles(config, k, judge, denoise, x, sigmas, score_x0, _noise_source(noise, x), generator,
                      callback, sigma_to_t, progress, eta)


def _particles(config, k, judge, denoise, x, sigmas, score_x0, draw, generator, callback, sigma_to_t, progress, eta):
    """k particles (k-major rows j·B + b), resampled at the steps in `judge`, best one kept."""
    B = x.shape[0]
    out = GuidedSample(x=x)
    total = len(judge) + (1 if k > 1 else 0)
    state = None  # potential history per particle, Tensor[k, B]
    rows = x
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if i == 0:  # every particle starts at x: one evaluation serves them all
            x0 = denoise(x, sigma * x.new_ones([B]))
            out.model_calls, out.model_evals = 1, 1
            rows, x0 = x.repeat(k, 1, 1, 1), x0.repeat(k, 1, 1, 1)
        else:
            x0 = denoise(rows, sigma * rows.new_ones([k * B]))
            out.model_calls += 1
            out.model_evals += k
        if callback is not None:
            callback({"x": rows[:B], "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": x0[:B]})
        if i in judge:
            t = sigma_to_t(sigma * rows.new_ones([k * B])).long()
            score = _score(score_x0, x0, t, out, k, B)
            potential, state = potential_update(config.potential, score, state)
            anc = resample_ancestors(float(config.lam) * potential, generator)  # [k, B]
            idx = (anc * B + torch.arange(B)).reshape(-1).to(rows.device)
            rows, x0 = rows[idx], x0[idx]
            state = state.reshape(-1)[idx.cpu()].reshape(k, B)
            out.branches.append(BranchRecord(i, float(sigma), float(sigma_next), int(t[0]), score, anc))
            if progress is not None:
                progress(len(out.branches), total)
        mean, s = ddim_sigma_mean(rows, x0, float(sigma), float(sigma_next), eta)
        rows = mean + s * torch.cat([draw(sigma, sigma_next) for _ in range(k)]) if s > 0 else mean
    if k == 1:
        out.x = rows
        return out
    # the final pick: every particle's finished image scored once at t = 0
    t0 = torch.zeros(k * B, dtype=torch.long, device=rows.device)
    score = _score(score_x0, rows, t0, out, k, B)
    chosen = best_per_sample(score)
    out.x = rows[(chosen * B + torch.arange(B)).to(rows.device)]
    out.branches.append(BranchRecord(len(sigmas) - 1, float(sigmas[-1]), float(sigmas[-1]), 0, score, chosen))
    if progress is not None:
        progress(total, total)
    return out


def _score(score_x0: X0Scorer, x0: torch.Tensor, t: torch.Tensor, out: GuidedSample, k: int, B: int) -> torch.Tensor:
    s = score_x0(x0, t).detach().to("cpu", torch.float64).reshape(k, B)
    out.scorer_calls += 1
    out.scorer_images += k
    return s


def describe_cost(config: StrategyConfig, num_steps: int) -> str:
    """One line for tooltips and logs: the cost relative to plain sampling with `num_steps` steps."""
    sig = torch.linspace(1.0, 0.0, num_steps + 1)  # shape only: all states but the last are at σ > 0
    c = strategy_cost(config, sig)
    return (f"{config.name}: {c.model_evals} model evaluations (≈ {c.model_evals / num_steps:.1f}× plain) "
            f"and {c.scorer_images} scored images per image at {num_steps} steps")


# What both hosts offer by default, as bench/sampler.py measured it on ShapesWorld: with the
# shipped SPM no guided strategy beat best-of-k at equal model evaluations or wall time, and
# best-of-k is the cheapest in wall time, so it is the default; fk's settings are the bench's
# main fk curve (resampling at steps 8 and 12 of 20, difference potential, λ 16).
HOST_DEFAULT = StrategyConfig(name="best-of-k", k=4, window=(0.4, 0.7), every=4, potential="difference", lam=16.0)


def cost_tooltip(name: str) -> str:
    """The cost of a strategy in words, for host tooltips."""
    return {
        "plain": "plain: the host's own sampling cost, no judging.",
        "greedy": "greedy: ≈ 1 + (k−1)·(judged steps / steps) × the model evaluations of plain sampling, "
                  "plus k decoded and scored images per judged step.",
        "best-of-k": "best-of-k: ≈ k× the model evaluations of plain sampling, plus k decoded and scored images.",
        "fk": "fk: ≈ k× the model evaluations of plain sampling (judging reuses the x̂0 each step already has), "
              "plus k decoded and scored images per resampling step and k at the end.",
    }[name]
