"""A1111 glue for SPM-guided sampling: a k-diffusion-style sampler function that runs the
shared strategies of `spo_studio.spo.strategies` (per-step = greedy, fk) with the WebUI's model,
noise, VAE and SPM.

A1111 calls a k-diffusion sampler as
    func(model, x, extra_args=..., disable=..., callback=..., sigmas=sigmas)
and passes `sigmas` only when the function has a parameter of that name. `model` is its
CFG denoiser: model(x [B,C,H,W], σ [B], **extra_args) -> guided x̂0, built for exactly the
batch of B conditionings in extra_args. No A1111 imports here; the script hands everything in.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from spo_studio.scoring import score_batch
from spo_studio.spo.guided_sampler import sigma_to_timestep
from spo_studio.spo.strategies import sample

from .settings import SPOSettings

# decode(latents [N,C,h,w] scaled) -> images [N,3,H,W] in [-1, 1]
Decoder = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SamplingReport:
    """What happened in one SPO-guided run (read by the script for messages and infotext)."""

    branched_steps: int = 0  # judged steps (per-step: branched; fk: resampling steps and the final pick)
    error: str | None = None
    model_evals: int = 0
    scorer_images: int = 0


def score_images(spm, images: torch.Tensor, prompts: Sequence[str], timesteps: torch.Tensor) -> torch.Tensor:
    """spm.score on images in [-1, 1] (spo_studio.scoring.score_batch, the hosts' one scoring path):
    moved to the SPM's device, in one batch; returns Tensor[N] float32 on the CPU."""
    return score_batch(spm, images.float(), list(prompts), timesteps, chunk=max(1, images.shape[0]))


def preflight(spm, prompts: Sequence[str]) -> None:
    """Score one tiny grey image per prompt so that a prompt the SPM cannot take fails before
    sampling starts (the WebUI then generates without SPO). Raises what the SPM raises."""
    n = len(prompts)
    score_images(spm, torch.zeros(n, 3, 32, 32), prompts, torch.zeros(n, dtype=torch.long))


@dataclass(eq=False)  # identity hash: A1111 looks the function up in a dict
class SPOSamplerFunction:
    """The k-diffusion-style sampler function handed to A1111's KDiffusionSampler.

    settings: the accordion's values (mode "per-step").
    spm: loaded SPM; prompts: the batch's B prompts, in batch order.
    decode: latents -> images in [-1, 1] (A1111's full VAE decode).
    noise: () -> Tensor[B,C,h,w] standard normal, from A1111's per-image seeded generators, or None.
    choice_generator: draws of the softmax selection and fk's resampling.
    progress: (done, total) after each judged step (the script shows it in the progress text).
    report: filled in while sampling.
    """

    settings: SPOSettings
    spm: object
    prompts: Sequence[str]
    decode: Decoder
    noise: Callable[[], torch.Tensor] | None = None
    choice_generator: torch.Generator | None = None
    progress: Callable[[int, int], None] | None = None
    report: SamplingReport = field(default_factory=SamplingReport)

    def __call__(self, model, x, sigmas, extra_args=None, callback=None, disable=None, **_sampler_options):
        # **_sampler_options: A1111 adds noise_sampler / solver_type for some samplers' configs; SPO has its own step.
        extra_args = extra_args or {}
        B, k = x.shape[0], self.settings.k
        prompts_k = list(self.prompts) * k  # candidates are k-major: row j·B + b is candidate j of sample b

        def denoise(xs: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:
            # A1111's CFG denoiser holds B conditionings; k·B candidates go through in k calls.
            outs = []
            for xc, sc in zip(xs.split(B), sig.split(B)):
                if hasattr(model, "step"):
                    # its step counter drives prompt editing ([a:b:0.5]); keep it on the sampling step
                    model.step = int((sigmas.to(sc.device) - sc[0]).abs().argmin())
                outs.append(model(xc, sc, **extra_args))
            return torch.cat(outs)

        def score_x0(x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if self.report.error is not None:
                return torch.zeros(x0.shape[0], device=x0.device)  # SPM broke earlier: ties, pick candidate 0
            try:
                images = torch.cat([self.decode(c) for c in x0.split(B)])
                return score_images(self.spm, images, prompts_k[: x0.shape[0]], t).to(x0.device)
            except Exception as e:  # never crash the WebUI mid-image; finish it without selection
                self.report.error = (f"SPO: the SPM failed at t={int(t[0])} ({type(e).__name__}: {e}); "
                                     "the rest of the batch was sampled without SPO selection.")
                return torch.zeros(x0.shape[0], device=x0.device)

        noise = None
        if self.noise is not None:
            noise = lambda sigma, sigma_next: self.noise().to(device=x.device, dtype=x.dtype)  # noqa: E731

        result = sample(
            self.settings.strategy(),
            denoise,
            x,
            sigmas.to(x.device),
            score_x0=score_x0,
            noise=noise,
            generator=self.choice_generator,
            callback=callback,
            sigma_to_t=_sigma_to_t_of(model),
            progress=self.progress,
        )
        self.report.branched_steps += len(result.branches)
        self.report.model_evals += result.model_evals
        self.report.scorer_images += result.scorer_images
        return result.x


def _sigma_to_t_of(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """The host's own σ -> integer timestep (k-diffusion `inner_model.sigma_to_t`), else SD's schedule."""
    inner = getattr(model, "inner_model", None)
    fn = getattr(inner, "sigma_to_t", None)
    if fn is None:
        return sigma_to_timestep

    def to_t(sig: torch.Tensor) -> torch.Tensor:
        t = fn(sig).float().round().long().clamp(0, 999)
        return torch.where(sig > 0, t, torch.zeros_like(t))

    return to_t
