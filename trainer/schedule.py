"""DDIM with η > 0 as a stochastic policy: the step, its mean and std, and log p.

Pure functions, no hidden state. Notation follows DDIM (Song et al. 2021, eq. 12
and 16) and maps onto variable names as:

    ᾱ_t            -> alpha_t           (alphas_cumprod[t])
    ᾱ_s            -> alpha_s           (s = previous timestep; final_alpha_cumprod when s < 0)
    x̂0             -> pred_x0
    σ_t(η)         -> std
    μ              -> mean
    x_s            -> prev_sample

Latents are in the UNet's space (VAE latents already multiplied by the scaling
factor). Timesteps are integers in [0, num_train_timesteps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NoiseSchedule:
    """The training noise schedule a DDIM sampler needs.

    alphas_cumprod: Tensor[T] float64, ᾱ_t for t = 0..T-1.
    final_alpha_cumprod: ᾱ used for the step past t = 0 (SD: ᾱ_0, `set_alpha_to_one=False`).
    prediction_type: "epsilon" or "v_prediction".
    steps_offset: added to "leading" timesteps (SD: 1, giving 951, 901, ..., 1 for 20 steps).
    """

    alphas_cumprod: torch.Tensor
    final_alpha_cumprod: float
    prediction_type: str = "epsilon"
    steps_offset: int = 1

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @classmethod
    def from_scheduler_config(cls, config) -> "NoiseSchedule":
        """Build from a diffusers scheduler config (dict or FrozenDict), e.g. SD's DDIM config."""
        from diffusers import DDIMScheduler

        sched = DDIMScheduler.from_config(dict(config))
        return cls(
            alphas_cumprod=sched.alphas_cumprod.to(torch.float64),
            final_alpha_cumprod=float(sched.final_alpha_cumprod),
            prediction_type=sched.config.prediction_type,
            steps_offset=int(sched.config.steps_offset),
        )

    @classmethod
    def stable_diffusion(cls, prediction_type: str = "epsilon") -> "NoiseSchedule":
        """SD-1.5/SDXL: scaled_linear betas 0.00085..0.012 over 1000 steps."""
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        ac = torch.cumprod(1.0 - betas, dim=0)
        return cls(ac, float(ac[0]), prediction_type, 1)

    def timesteps(self, num_steps: int) -> torch.Tensor:
        """"leading" spacing, descending: Tensor[num_steps] long (SD, 20 steps: 951, 901, ..., 1)."""
        ratio = self.num_train_timesteps // num_steps
        return (torch.arange(num_steps - 1, -1, -1) * ratio + self.steps_offset).long()

    def prev_timestep(self, t: torch.Tensor | int, num_steps: int) -> torch.Tensor:
        """s = t − T/num_steps (negative past the last step), as diffusers computes it."""
        return torch.as_tensor(t).long() - self.num_train_timesteps // num_steps

    def alpha(self, t: torch.Tensor | int) -> torch.Tensor:
        """ᾱ_t for integer t (Tensor[B] or scalar); t < 0 gives final_alpha_cumprod. float64."""
        t = torch.as_tensor(t).long()
        ac = self.alphas_cumprod.to(t.device)
        return torch.where(t >= 0, ac[t.clamp(min=0)], torch.full_like(ac[:1], self.final_alpha_cumprod)[0])


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Tensor[B] or scalar (float64) -> broadcastable against `like` [B, C, H, W], in like's dtype."""
    v = v.to(device=like.device, dtype=torch.float64)
    if v.ndim == 0:
        return v.to(like.dtype)
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def guided(model_output: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance on a [uncond; cond] batch.

    model_output: Tensor[2B, ...], unconditional half first. Returns Tensor[B, ...]:
        ε = ε_u + w·(ε_c − ε_u)
    """
    uncond, cond = model_output.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def pred_x0_and_eps(
    model_output: torch.Tensor, sample: torch.Tensor, alpha_t: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """x̂0 and ε from the model output at x_t (DDIM eq. 12, first term).

    epsilon:       x̂0 = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t
    v_prediction:  x̂0 = √ᾱ_t·x_t − √(1−ᾱ_t)·v,   ε = √ᾱ_t·v + √(1−ᾱ_t)·x_t

    model_output, sample: Tensor[B, C, H, W]; alpha_t: Tensor[B] or scalar.
    """
    a = _bcast(alpha_t, sample)
    if prediction_type == "epsilon":
        return (sample - (1 - a).sqrt() * model_output) / a.sqrt(), model_output
    if prediction_type == "v_prediction":
        return a.sqrt() * sample - (1 - a).sqrt() * model_output, a.sqrt() * model_output + (1 - a).sqrt() * sample
    raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")


def ddim_std(alpha_t: torch.Tensor, alpha_s: torch.Tensor, eta: float) -> torch.Tensor:
    """σ = η · √((1−ᾱ_s)/(1−ᾱ_t)) · √(1 − ᾱ_t/ᾱ_s)   (DDIM eq. 16). float64, shape of alpha_t."""
    return eta * (((1 - alpha_s) / (1 - alpha_t)) * (1 - alpha_t / alpha_s)).sqrt()


@dataclass
class DDIMStep:
    """One DDIM transition t → s. All tensors Tensor[B, C, H, W] except log_prob and std.

    prev_sample: x_s = μ + σ·z.
    mean: μ = √ᾱ_s·x̂0 + √(1−ᾱ_s−σ²)·ε.
    std: σ, Tensor[B] (per sample; shared across C, H, W).
    pred_x0: x̂0.
    log_prob: Tensor[B], log N(x_s; μ, σ²) averaged over C, H, W (None when σ = 0).
    """

    prev_sample: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    pred_x0: torch.Tensor
    log_prob: torch.Tensor | None


def ddim_mean_std(
    schedule: NoiseSchedule,
    model_output: torch.Tensor,
    timestep: torch.Tensor | int,
    sample: torch.Tensor,
    num_steps: int,
    eta: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """μ, σ and x̂0 of p(x_s | x_t) for one DDIM step; no sampling.

    model_output: the (guided) UNet output at x_t, Tensor[B, C, H, W];
    timestep: t, int or Tensor[B]; sample: x_t. Returns (mean [B,C,H,W], std [B], pred_x0 [B,C,H,W]).
    """
    t = torch.as_tensor(timestep, device=sample.device).long().expand(sample.shape[0])
    alpha_t = schedule.alpha(t)
    alpha_s = schedule.alpha(schedule.prev_timestep(t, num_steps))
    pred_x0, eps = pred_x0_and_eps(model_output, sample, alpha_t, schedule.prediction_type)
    std = ddim_std(alpha_t, alpha_s, eta)
    # (1−ᾱ_s−σ²) can round to a tiny negative at η = 1 near the end; it is 0 in exact arithmetic.
    direction = (1 - alpha_s - std**2).clamp(min=0).sqrt()
    mean = _bcast(alpha_s.sqrt(), sample) * pred_x0 + _bcast(direction, sample) * eps
    return mean, std.to(sample.dtype), pred_x0


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; μ, σ²I) averaged (not summed) over all but the batch dim.

        log p = mean_{C,H,W} [ −(x−μ)²/(2σ²) − log σ − ½·log 2π ]

    x, mean: Tensor[B, ...]; std: Tensor[B] (> 0). Returns Tensor[B].
    """
    s = _bcast(std, x)
    lp = -((x.detach() - mean) ** 2) / (2 * s**2) - torch.log(s) - 0.5 * math.log(2 * math.pi)
    return lp.mean(dim=tuple(range(1, x.ndim)))


def ddim_step(
    schedule: NoiseSchedule,
    model_output: torch.Tensor,
    timestep: torch.Tensor | int,
    sample: torch.Tensor,
    num_steps: int,
    eta: float = 1.0,
    noise: torch.Tensor | None = None,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> DDIMStep:
    """One DDIM step t → s with its log-probability.

    Draws x_s = μ + σ·z (z = `noise`, or drawn from `generator`), unless `prev_sample` is
    given, in which case only its log-probability under this step is computed (training).
    Matches `diffusers.DDIMScheduler.step(..., eta=eta, variance_noise=z)`.
    """
    mean, std, pred_x0 = ddim_mean_std(schedule, model_output, timestep, sample, num_steps, eta)
    if prev_sample is None:
        if noise is None:
            noise = torch.randn(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        prev_sample = mean + _bcast(std, sample) * noise
    log_prob = gaussian_log_prob(prev_sample, mean, std) if eta > 0 else None
    return DDIMStep(prev_sample, mean, std, pred_x0, log_prob)
