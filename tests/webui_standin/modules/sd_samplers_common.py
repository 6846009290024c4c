"""modules.sd_samplers_common: SamplerData, the Sampler base, latent decoding."""
import inspect
from collections import namedtuple

import k_diffusion_sampling
from modules import shared

SamplerDataTuple = namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])


class SamplerData(SamplerDataTuple):
    def total_steps(self, steps):
        return steps * 2 if self.options.get("second_order", False) else steps


class InterruptedException(BaseException):
    pass


class TorchHijack:
    """Replaces k-diffusion's `torch` so its randn_like draws from the job's per-seed generators."""

    def __init__(self, p):
        self.rng = p.rng

    def __getattr__(self, item):
        if item == "randn_like":
            return self.randn_like
        import torch

        return getattr(torch, item)

    def randn_like(self, x):
        return self.rng.next()


def setup_img2img_steps(p, steps=None):
    """(steps of the full schedule, steps actually run - 1) for denoising strength p.denoising_strength."""
    steps = steps or p.steps
    return steps, int(min(p.denoising_strength, 0.999) * steps)


def samples_to_images_tensor(sample, approximation=None, model=None):
    """Latents -> images Tensor[B, 3, H, W] in [-1, 1] (approximation 0 = the full VAE)."""
    model = model if model is not None else shared.sd_model
    return model.decode_first_stage(sample)


class Sampler:
    def __init__(self, funcname):
        self.funcname = funcname
        self.func = funcname
        self.extra_params = []
        self.config = None
        self.last_latent = None
        self.eta = None
        self.p = None

    def callback_state(self, d):
        shared.state.sampling_step = d["i"]

    def launch_sampling(self, steps, func):
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = self.config.total_steps(steps)
        shared.state.sampling_steps = steps
        shared.state.sampling_step = 0
        try:
            return func()
        except InterruptedException:
            return self.last_latent

    def initialize(self, p) -> dict:
        self.p = p
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.step = 0
        self.eta = p.eta if p.eta is not None else 1.0
        k_diffusion_sampling.torch = TorchHijack(p)
        kwargs = {}
        params = inspect.signature(self.func).parameters
        for name in self.extra_params:
            if hasattr(p, name) and name in params:
                kwargs[name] = getattr(p, name)
        if "eta" in params:
            kwargs["eta"] = self.eta
        return kwargs
