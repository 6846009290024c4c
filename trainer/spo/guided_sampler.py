"""SPO-guided sampling for host programs: stochastic DDIM with per-step candidate selection.

Host-free (no ComfyUI or A1111 imports). The host hands over its guided x0 model in
the k-diffusion convention and a scorer on x0 latents; this module does the rest.

Conventions (k-diffusion, as ComfyUI and A1111 samplers see the model):

    x = x0 + σ·ε                       x: the scaled latent the UNet sees, times √(1+σ²)
    denoise(x, σ_vec) -> x̂0            the host's guided x0 prediction, Tensor[B, C, H, W]

A step σ → σ' is DDIM with η = 1 (SPO's policy, `trainer.schedule`) written in σ-space:
ᾱ = 1/(1+σ²), ᾱ' = 1/(1+σ'²), and the VP sample x_vp = x/√(1+σ²) = √ᾱ·x. Dividing the VP
step (DDIM eq. 12) by √ᾱ' gives

    x' = x̂0 + c·ε̂ + s·z,   ε̂ = (x − x̂0)/σ,   c = √(1−ᾱ'−σ_vp²)/√ᾱ',   s = σ_vp/√ᾱ'

with σ_vp = `ddim_std(ᾱ, ᾱ', η)`.

At a branched step the k candidates x'_i = μ + s·z_i share the step's one x̂0. One batched
model call on all k·B candidates at σ' gives their x̂0s; `score_x0` scores them at the
candidate's timestep; the chosen candidate continues and its x̂0 is reused as the next
step's model output. A branched step therefore costs k model evaluations per sample
(plus one scorer batch) and an unbranched step one; a branched last step costs one more,
since no later step reuses its candidates' x̂0 (`expected_model_evals`).

A step into σ' = 0 is never branched: with η = 1 its noise scale is 0, so every candidate
would be the same point. To branch the last denoising stage, end the window on the step
into the schedule's smallest non-zero σ (its candidates are scored at t = 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..schedule import NoiseSchedule, ddim_std

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
X0Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SELECTIONS = ("best", "softmax")


# ---------------------------------------------------------------- σ-space DDIM math


def sigma_to_alpha(sigma: torch.Tensor | float) -> torch.Tensor:
    """ᾱ = 1/(1+σ²), float64 (σ in k-diffusion units, ≥ 0)."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    return 1.0 / (1.0 + s**2)


def ddim_sigma_coefficients(
    sigma: torch.Tensor | float, sigma_next: torch.Tensor | float, eta: float = 1.0
) -> tuple[float, float]:
    """(c, s) of the σ-space DDIM step x' = x̂0 + c·ε̂ + s·z, as Python floats.

    sigma > 0, sigma_next ≥ 0 (scalars). s = 0 when sigma_next = 0 or eta = 0.
    """
    a_t, a_s = sigma_to_alpha(float(sigma)), sigma_to_alpha(float(sigma_next))
    std_vp = ddim_std(a_t, a_s, eta)
    # (1−ᾱ'−σ_vp²) is 0 in exact arithmetic at η = 1 near the end; rounding can make it negative.
    c = (1 - a_s - std_vp**2).clamp(min=0).sqrt() / a_s.sqrt()
    return float(c), float(std_vp / a_s.sqrt())


def ddim_sigma_mean(
    x: torch.Tensor, x0: torch.Tensor, sigma: float, sigma_next: float, eta: float = 1.0
) -> tuple[torch.Tensor, float]:
    """Mean μ [B, C, H, W] and noise scale s (float) of the σ-space DDIM step from x at σ.

    x, x0: Tensor[B, C, H, W] (x = x0 + σ·ε convention); x0 = denoise(x, σ).
    """
    c, s = ddim_sigma_coefficients(sigma, sigma_next, eta)
    eps = (x - x0) / float(sigma)
    return x0 + c * eps, s


def sigma_to_timestep(sigmas: torch.Tensor, schedule: NoiseSchedule | None = None) -> torch.Tensor:
    """Integer training timestep whose σ is nearest in log σ; σ = 0 (clean) gives 0.

    sigmas: Tensor[N] (k-diffusion σ). Returns Tensor[N] long in [0, T). Default schedule: SD's.
    """
    schedule = schedule or _sd_schedule()
    train = ((1 - schedule.alphas_cumprod) / schedule.alphas_cumprod).sqrt().log()
    s = sigmas.detach().to("cpu", torch.float64).reshape(-1)
    t = (s.clamp(min=1e-10).log()[:, None] - train[None, :]).abs().argmin(dim=1)
    return torch.where(s > 0, t, torch.zeros_like(t)).to(sigmas.device)


_SD_SCHEDULE: NoiseSchedule | None = None


def _sd_schedule() -> NoiseSchedule:
    global _SD_SCHEDULE
    if _SD_SCHEDULE is None:
        _SD_SCHEDULE = NoiseSchedule.stable_diffusion()
    return _SD_SCHEDULE


# ---------------------------------------------------------------- window and selection


def branched_steps(sigmas: torch.Tensor, window: tuple[float, float], every: int = 1) -> list[bool]:
    """Which steps branch: step i (σ_i → σ_{i+1}) when start ≤ i/n < end, σ_{i+1} > 0 and i is
    a multiple of `every` counted from the window's first step.

    sigmas: Tensor[n+1], descending, as hosts pass them. window: fractions of the n steps,
    0 ≤ start ≤ end ≤ 1; (0.2, 1.0) on 20 steps branches steps 4..18 (SPO's κ = 750);
    every = 2 branches 4, 6, ..., 18 (half the judged steps, half the extra cost).
    """
    start, end = window
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"window must satisfy 0 <= start <= end <= 1, got {window}")
    if int(every) < 1:
        raise ValueError(f"every must be >= 1 step, got {every}")
    n = len(sigmas) - 1
    first = math.ceil(start * n - 1e-9)
    return [
        start * n <= i < end * n and (i - first) % int(every) == 0 and float(sigmas[i + 1]) > 0 for i in range(n)
    ]


def choose_candidates(
    scores: torch.Tensor, selection: str = "best", temperature: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Index of the chosen candidate per sample.

    scores: Tensor[k, B] (higher is better). selection "best": argmax over k; "softmax":
    one draw from softmax(scores / temperature) per sample (`generator` makes it repeatable).
    Returns Tensor[B] long in [0, k).
    """
    if selection == "best":
        return scores.argmax(dim=0)
    if selection == "softmax":
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 for softmax selection, got {temperature}")
        probs = torch.softmax(scores.detach().to("cpu", torch.float64) / temperature, dim=0)
        return torch.multinomial(probs.T, 1, generator=generator)[:, 0].to(scores.device)
    raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")


@dataclass(frozen=True)
class Ranking:
    """A batch ordered best-first. order: Tensor[n] long (indices into the batch); scores: Tensor[n]."""

    order: torch.Tensor
    scores: torch.Tensor


def rank_best_first(scores: torch.Tensor, top_n: int | None = None) -> Ranking:
    """Best-of-k: indices of a batch sorted by score, highest first, cut to `top_n` (None: all).

    scores: Tensor[B]. Ties keep batch order (stable sort), so the result is deterministic.
    """
    if scores.ndim != 1 or scores.numel() == 0:
        raise ValueError(f"scores must be a non-empty 1-D tensor, got shape {tuple(scores.shape)}")
    order = torch.sort(scores.detach().float().cpu(), descending=True, stable=True).indices
    n = len(order) if top_n is None else max(1, min(int(top_n), len(order)))
    order = order[:n]
    return Ranking(order=order, scores=scores.detach().cpu()[order])


# ---------------------------------------------------------------- the sampler


@dataclass
class BranchRecord:
    """One branched step: index i, σ_i → σ_{i+1}, scores Tensor[k, B], chosen Tensor[B]."""

    step: int
    sigma: float
    sigma_next: float
    timestep: int
    scores: torch.Tensor
    chosen: torch.Tensor


@dataclass
class GuidedSample:
    """Result of `spo_guided_sample_traced`.

    x: Tensor[B, C, H, W], the final sample (σ = sigmas[-1]).
    model_calls: number of `denoise` invocations.
    model_evals: per-sample model evaluations, Σ over calls of (rows in the call) / B.
    scorer_calls: number of `score_x0` invocations (one per judged step).
    scorer_images: per-sample images scored, Σ over calls of (rows in the call) / B.
    branches: one record per judged step.
    """

    x: torch.Tensor
    model_calls: int = 0
    model_evals: int = 0
    scorer_calls: int = 0
    scorer_images: int = 0
    branches: list[BranchRecord] = field(default_factory=list)


def expected_model_evals(num_steps: int, num_branched: int, k: int, last_step_branched: bool = False) -> int:
    """Per-sample evaluations of an SPO-guided run: n + (k−1)·W, plus 1 when the last step branches
    (its candidates' x̂0 are computed for scoring but no further step reuses them). Schedules that
    end at σ = 0 never branch the last step."""
    return num_steps + (k - 1) * num_branched + int(last_step_branched)


def spo_guided_sample_traced(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    score_x0: X0Scorer,
    k: int = 4,
    window: tuple[float, float] = (0.0, 1.0),
    every: int = 1,
    selection: str = "best",
    temperature: float = 1.0,
    noise: NoiseSampler | torch.Generator | None = None,
    choice_generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
    sigma_to_t: Callable[[torch.Tensor], torch.Tensor] = sigma_to_timestep,
    eta: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> GuidedSample:
    """SPO-guided stochastic DDIM from x at sigmas[0] to sigmas[-1]; see the module docstring.
    Deterministic given the noise sampler (or generator) and `choice_generator`.

    denoise(x [N,C,H,W], σ [N]) -> x̂0 [N,C,H,W]: guided x0 model; N is B or k·B. Candidate
        batches are k-major (rows j·B .. j·B+B−1 are candidate j of samples 0..B−1), so a host
        that tiles per-sample conditioning to the batch size lines up.
    x: Tensor[B, C, H, W], the start (already noised: x = x0 + sigmas[0]·ε).
    sigmas: Tensor[n+1], descending, usually ending at 0.
    score_x0(x̂0 [k·B,C,H,W], timesteps [k·B] long) -> Tensor[k·B], higher is better; the host
        decodes x̂0 with its VAE and scores at the candidate's timestep (0 when clean).
    k ≥ 2 candidates; window, every: which steps branch (see `branched_steps`).
    selection: "best" | "softmax" (with temperature; draws from `choice_generator`).
    noise: a `noise(σ, σ_next) -> Tensor[B,C,H,W]` sampler (ComfyUI's), a torch.Generator,
        or None for `torch.randn_like` (A1111 reroutes that to its seeded generator).
    callback: called once per step with k-diffusion's dict {x, i, sigma, sigma_hat, denoised}.
    sigma_to_t(σ [N]) -> Tensor[N] long: the host's σ → timestep map (default: SD's schedule).
    progress(done, total): called after each judged (branched) step.
    """
    if int(k) < 2:
        raise ValueError(f"k must be >= 2 candidates per branched step, got {k}")
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    k, B = int(k), x.shape[0]
    draw = _noise_source(noise, x)
    branch = branched_steps(sigmas, window, every)
    total_judged = sum(branch)
    out = GuidedSample(x=x)
    s_in = x.new_ones([B])
    x0 = None  # the reused model output for the current x, when the last step branched
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if x0 is None:
            x0 = denoise(x, sigma * s_in)
            out.model_calls += 1
            out.model_evals += 1
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": x0})
        mean, s = ddim_sigma_mean(x, x0, float(sigma), float(sigma_next), eta)
        if not branch[i]:
            x = mean + s * draw(sigma, sigma_next) if s > 0 else mean
            x0 = None
            continue
        cands = torch.cat([mean + s * draw(sigma, sigma_next) for _ in range(k)])  # [k·B], k-major
        sig_c = sigma_next * cands.new_ones([k * B])
        cand_x0 = denoise(cands, sig_c)
        out.model_calls += 1
        out.model_evals += k
        t_c = sigma_to_t(sig_c).long()
        scores = score_x0(cand_x0, t_c).reshape(k, B)
        out.scorer_calls += 1
        out.scorer_images += k
        chosen = choose_candidates(scores, selection, temperature, choice_generator)
        rows = chosen.to(x.device) * B + torch.arange(B, device=x.device)
        x, x0 = cands[rows], cand_x0[rows]
        out.branches.append(
            BranchRecord(i, float(sigma), float(sigma_next), int(t_c[0]), scores.detach().cpu(), chosen.cpu())
        )
        if progress is not None:
            progress(len(out.branches), total_judged)
    out.x = x
    return out


def spo_guided_sample(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, **kwargs) -> torch.Tensor:
    """`spo_guided_sample_traced(...)`, returning only the final sample Tensor[B, C, H, W]."""
    return spo_guided_sample_traced(denoise, x, sigmas, **kwargs).x


def _noise_source(noise: NoiseSampler | torch.Generator | None, like: torch.Tensor) -> NoiseSampler:
    if noise is None:
        return lambda sigma, sigma_next: torch.randn_like(like)
    if isinstance(noise, torch.Generator):
        return lambda sigma, sigma_next: torch.randn(
            like.shape, generator=noise, device=noise.device, dtype=like.dtype
        ).to(like.device)
    return noise


# ---------------------------------------------------------------- trainer.models adapters (bench, tests)


def ddim_sigmas(schedule: NoiseSchedule, num_steps: int) -> torch.Tensor:
    """σ of the DDIM "leading" timesteps and of the final ᾱ, Tensor[n+1] float64, descending.

    Sampling over these sigmas walks exactly the timesteps of `diffusers.DDIMScheduler`
    (SD, 20 steps: 951, 901, ..., 1, then ᾱ_final), so the last step is stochastic too.
    """
    ts = schedule.timesteps(num_steps)
    alphas = torch.cat([schedule.alpha(ts), torch.tensor([schedule.final_alpha_cumprod], dtype=torch.float64)])
    return ((1 - alphas) / alphas).sqrt()


def model_denoiser(model, cond, uncond, guidance_scale: float) -> Denoiser:
    """k-diffusion x0 model around a `trainer.models.DiffusionModel` with classifier-free guidance.

    cond, uncond: PromptEmbeds of B prompts; calls with N = m·B rows (k-major candidates) tile them.
    Each call is one guided UNet forward on a 2N batch.
    """
    from ..models import PromptEmbeds
    from ..schedule import pred_x0_and_eps

    schedule = model.schedule

    def tile(e, n):
        reps = n // e.hidden.shape[0]
        return PromptEmbeds(e.hidden.repeat(reps, 1, 1), None if e.pooled is None else e.pooled.repeat(reps, 1))

    @torch.no_grad()
    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        t = sigma_to_timestep(sigma, schedule)
        scale = (1 + sigma.to(torch.float64) ** 2).sqrt().reshape(-1, 1, 1, 1)
        x_vp = (x / scale).to(model.dtype)
        out = model.guided_output(x_vp, t, tile(cond, x.shape[0]), tile(uncond, x.shape[0]), guidance_scale)
        x0, _ = pred_x0_and_eps(out, x_vp, schedule.alpha(t), schedule.prediction_type)
        return x0.to(x.dtype)

    return denoise
