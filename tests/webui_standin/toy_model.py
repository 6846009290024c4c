"""A toy checkpoint for the stand-in: k-diffusion denoiser with an exact x̂0, toy text
conditioning and a toy VAE decoder.

Data model: every latent element of an image for prompt c is N(μ_c, s²), μ_c a per-channel
vector fixed by the prompt. With x = x0 + σ·ε the exact posterior mean is

    E[x0 | x] = (s²·x + σ²·μ_c) / (s² + σ²)

so the sampler under test meets a real denoiser. σ ↔ t follow SD's scaled-linear schedule as
k-diffusion's DiscreteSchedule does (interpolation in log σ).
"""
import zlib

import torch

from trainer.schedule import NoiseSchedule

LATENT_CHANNELS = 4


def prompt_mean(prompt: str, channels: int = LATENT_CHANNELS) -> torch.Tensor:
    """μ_c: Tensor[channels] in [-1, 1], a fixed function of the prompt text."""
    g = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
    return torch.rand(channels, generator=g) * 2 - 1


class ToyDenoiser(torch.nn.Module):
    """Plays k-diffusion's CompVisDenoiser: sigmas, get_sigmas, sigma_to_t, forward -> x̂0."""

    def __init__(self, data_std: float = 0.5):
        super().__init__()
        ac = NoiseSchedule.stable_diffusion().alphas_cumprod.float()
        self.register_buffer("sigmas", ((1 - ac) / ac) ** 0.5)
        self.register_buffer("log_sigmas", self.sigmas.log())
        self.data_std = data_std
        self.calls: list[int] = []  # batch size of every call

    def sigma_to_t(self, sigma, quantize=None):
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        t = (1 - w) * low_idx + w * high_idx
        return t.view(sigma.shape)

    def t_to_sigma(self, t):
        t = t.float()
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        return (((1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]).exp())

    def get_sigmas(self, n=None):
        t_max = len(self.sigmas) - 1
        t = torch.linspace(t_max, 0, n)
        return torch.cat([self.t_to_sigma(t), t.new_zeros([1])])

    def forward(self, x, sigma, cond=None):
        self.calls.append(x.shape[0])
        mu = cond[:, :, None, None]
        s2, sig2 = self.data_std**2, sigma.reshape(-1, 1, 1, 1) ** 2
        return (s2 * x + sig2 * mu) / (s2 + sig2)


class ToySDModel:
    """Plays A1111's loaded checkpoint (`shared.sd_model`)."""

    def __init__(self, is_sdxl: bool = False):
        self.is_sdxl = is_sdxl
        self.is_sd2 = False
        self.is_sd3 = False
        self.latent_channels = LATENT_CHANNELS
        self.model_wrap = ToyDenoiser()

    def get_learned_conditioning(self, prompts):
        return torch.stack([prompt_mean(p) for p in prompts])

    def encode_first_stage(self, image):
        """Images [B,3,H,W] in [-1, 1] -> latents [B,4,H/8,W/8] (inverse of the decoder on 3 channels)."""
        small = torch.nn.functional.avg_pool2d(image, 8).clamp(-0.99, 0.99)
        lat = 2 * torch.atanh(small)
        return torch.cat([lat, lat.mean(dim=1, keepdim=True)], dim=1)

    def decode_first_stage(self, x):
        """Latents [B,4,h,w] -> images [B,3,8h,8w] in [-1, 1]."""
        img = torch.tanh(0.5 * x[:, :3])
        return torch.nn.functional.interpolate(img, scale_factor=8, mode="nearest")
