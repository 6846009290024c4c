"""From noisy latents to the images an SPM judges: x̂0 from the UNet, decoded by the VAE.

The SPM never sees x_t itself: it scores the model's current guess of the clean image,
x̂0 = (x_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t, decoded, together with t. `score_latents` is the one call
the plugins need; `noised_pair_images` is what SPM training and evaluation feed it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from ..schedule import pred_x0_and_eps

if TYPE_CHECKING:  # trainer.models imports diffusers; keep this module importable without loading it
    from ..models import DiffusionModel
    from .model import StepAwarePreferenceModel


DECODE_CHUNK = 8  # latents per VAE decode call: SDXL's VAE at 1024 px needs GBs per image


def decode_chunked(model: "DiffusionModel", latents: torch.Tensor, chunk: int = DECODE_CHUNK) -> torch.Tensor:
    """model.decode over chunks of the batch: scaled latents [B, C, h, w] -> images [B, 3, H, W] in [−1, 1]."""
    return torch.cat([model.decode(part) for part in latents.split(chunk)])


def decoded_x0(model: "DiffusionModel", latents: torch.Tensor, model_output: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Images of x̂0: latents x_t [B, C, h, w] (scaled), the (guided) UNet output at x_t, timesteps [B]
    -> Tensor[B, 3, H, W] in [−1, 1]."""
    t = torch.as_tensor(timesteps, device=latents.device).long().reshape(-1).expand(latents.shape[0])
    pred_x0, _ = pred_x0_and_eps(model_output, latents, model.schedule.alpha(t), model.schedule.prediction_type)
    return decode_chunked(model, pred_x0)


def add_noise(schedule, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Forward diffusion q(x_t | x_0): x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε, computed in float32.

    latents, noise: Tensor[B, C, h, w] (scaled latents); timesteps: Tensor[B] long. Returns
    Tensor[B, C, h, w] in the latents' dtype.
    """
    alpha = schedule.alpha(timesteps).to(device=latents.device, dtype=torch.float32).view(-1, 1, 1, 1)
    return (alpha.sqrt() * latents.float() + (1 - alpha).sqrt() * noise.float()).to(latents.dtype)


@torch.inference_mode()
def score_latents(
    spm: "StepAwarePreferenceModel",
    model: "DiffusionModel",
    latents: torch.Tensor,
    model_output: torch.Tensor | None,
    timesteps,
    prompts: Sequence[str],
) -> torch.Tensor:
    """SPM scores of noisy latents: x̂0 from the UNet output, VAE decode, score at t. Tensor[B] float32.

    latents: x_t [B, C, h, w] in the UNet's (scaled) space; model_output: the UNet's (guided)
    prediction at x_t, or None when the latents are already clean (scored at t as given,
    usually 0); timesteps: int or Tensor[B] in [0, 1000); prompts: B strings.
    Refuses an SPM recorded for another model family than `model`.
    """
    from .weights import check_family

    check_family(spm, model.family.name)
    b = latents.shape[0]
    t = torch.as_tensor(timesteps, device=latents.device).long().reshape(-1).expand(b)
    images = decode_chunked(model, latents) if model_output is None else decoded_x0(model, latents, model_output, t)
    return spm.score(images, prompts, t)


@torch.no_grad()
def noised_pair_images(
    model: "DiffusionModel",
    images_0: torch.Tensor,
    images_1: torch.Tensor,
    prompts: Sequence[str],
    timesteps: torch.Tensor,
    guidance_scale: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images of B pairs noised to t with the SAME noise, denoised to x̂0 by the frozen base
    model with CFG, decoded.

    images_0, images_1: Tensor[B, 3, H, W] in [−1, 1] at the model's resolution; timesteps [B]
    long. Returns (x̂0 images of side 0, of side 1), each Tensor[B, 3, H, W] in [−1, 1].
    Sharing the noise makes the two inputs differ only by the images themselves.
    """
    b = images_0.shape[0]
    device = model.device
    images = torch.cat([images_0, images_1]).to(device=device, dtype=model.dtype)
    latents = model.encode(images, generator=generator)
    noise = torch.randn(latents[:b].shape, generator=generator, device=device, dtype=torch.float32).to(latents.dtype)
    t = timesteps.to(device).long()
    t2 = torch.cat([t, t])
    x_t = add_noise(model.schedule, latents, torch.cat([noise, noise]), t2)
    cond = model.encode_prompts(list(prompts) * 2)
    uncond = model.uncond_embeds(2 * b)
    out = model.guided_output(x_t, t2, cond, uncond, guidance_scale)
    decoded = decoded_x0(model, x_t, out, t2)
    return decoded[:b], decoded[b:]
