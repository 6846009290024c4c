"""modules.sd_samplers_kdiffusion: k-diffusion samplers and the CFG denoiser they call.

How A1111 calls a sampler function (the contract SPO's function must meet):
    func(model_wrap_cfg, x, extra_args={cond, image_cond, uncond, cond_scale, s_min_uncond},
         disable=False, callback=callback_state, **kw)
where kw holds `sigmas` only if the function has a parameter of that name (likewise `n`,
`sigma_min`, `eta`, ...), and `noise_sampler` when the sampler's options ask for brownian noise.
"""
import inspect

import torch

import k_diffusion_sampling
from modules import sd_samplers_common, shared

samplers_k_diffusion = [
    ("Euler a", "sample_euler_ancestral", ["k_euler_a"], {"uses_ensd": True}),
    ("Euler", "sample_euler", ["k_euler"], {}),
    ("Euler Karras", "sample_euler", ["k_euler_ka"], {"scheduler": "karras"}),
    ("DPM++ SDE-like", "sample_euler_ancestral", ["k_sde"], {"brownian_noise": True}),
]

samplers_data_k_diffusion = [
    sd_samplers_common.SamplerData(label, lambda model, funcname=funcname: KDiffusionSampler(funcname, model), aliases, options)
    for label, funcname, aliases, options in samplers_k_diffusion
]

sampler_extra_params = {"sample_euler": ["s_churn", "s_tmin", "s_tmax", "s_noise"]}


def get_sigmas_karras(n, sigma_min, sigma_max, rho=7.0, device="cpu"):
    ramp = torch.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])])


class CFGDenoiser(torch.nn.Module):
    """x̂0 = x̂0_u + w·(x̂0_c − x̂0_u) for exactly the batch of conditionings it is given.

    `step` counts calls and selects the conditioning of prompt editing in A1111; here the
    value seen at every call is recorded in `steps_seen` so tests can check it.
    """

    def __init__(self, sampler):
        super().__init__()
        self.sampler = sampler
        self.model_wrap = shared.sd_model.model_wrap
        self.step = 0
        self.steps_seen: list[int] = []
        self.p = None
        self.steps = None
        self.total_steps = None

    @property
    def inner_model(self):
        return self.model_wrap

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        if shared.state.interrupted:
            raise sd_samplers_common.InterruptedException
        if cond.shape[0] != x.shape[0]:
            # A1111 builds x_in from the conds' batch: a mismatched x breaks there too
            raise RuntimeError(f"CFGDenoiser: batch of {x.shape[0]} latents for {cond.shape[0]} conditionings")
        self.steps_seen.append(self.step)
        x_in, sigma_in = torch.cat([x, x]), torch.cat([sigma, sigma])
        out = self.inner_model(x_in, sigma_in, cond=torch.cat([cond, uncond]))
        out_cond, out_uncond = out.chunk(2)
        self.step += 1
        return out_uncond + cond_scale * (out_cond - out_uncond)


class KDiffusionSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model, options=None):
        super().__init__(funcname)
        self.extra_params = sampler_extra_params.get(funcname, [])
        self.options = options or {}
        self.func = funcname if callable(funcname) else getattr(k_diffusion_sampling, funcname)
        self.model_wrap_cfg = CFGDenoiser(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_sigmas(self, p, steps):
        scheduler = p.scheduler if p.scheduler not in (None, "Automatic") else self.config.options.get("scheduler")
        if scheduler == "karras":
            return get_sigmas_karras(steps, float(self.model_wrap.sigmas[0]), float(self.model_wrap.sigmas[-1]))
        return self.model_wrap.get_sigmas(steps)

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        sigmas = self.get_sigmas(p, steps)
        sigma_sched = sigmas[steps - t_enc - 1:]
        xi = x + noise * sigma_sched[0]
        extra_params_kwargs = self.initialize(p)
        parameters = inspect.signature(self.func).parameters
        if "sigmas" in parameters:
            extra_params_kwargs["sigmas"] = sigma_sched
        if self.config.options.get("brownian_noise", False):
            extra_params_kwargs["noise_sampler"] = lambda sigma, sigma_next: p.rng.next()
        self.model_wrap_cfg.init_latent = x
        self.last_latent = x
        self.sampler_extra_args = {
            "cond": conditioning,
            "image_cond": image_conditioning,
            "uncond": unconditional_conditioning,
            "cond_scale": p.cfg_scale,
            "s_min_uncond": 0.0,
        }
        return self.launch_sampling(
            t_enc + 1,
            lambda: self.func(self.model_wrap_cfg, xi, extra_args=self.sampler_extra_args, disable=False,
                              callback=self.callback_state, **extra_params_kwargs),
        )

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps)
        x = x * sigmas[0]
        extra_params_kwargs = self.initialize(p)
        parameters = inspect.signature(self.func).parameters
        if "n" in parameters:
            extra_params_kwargs["n"] = steps
        if "sigma_min" in parameters:
            extra_params_kwargs["sigma_min"] = self.model_wrap.sigmas[0].item()
            extra_params_kwargs["sigma_max"] = self.model_wrap.sigmas[-1].item()
        if "sigmas" in parameters:
            extra_params_kwargs["sigmas"] = sigmas
        if self.config.options.get("brownian_noise", False):
            extra_params_kwargs["noise_sampler"] = lambda sigma, sigma_next: p.rng.next()
        self.last_latent = x
        self.sampler_extra_args = {
            "cond": conditioning,
            "image_cond": image_conditioning,
            "uncond": unconditional_conditioning,
            "cond_scale": p.cfg_scale,
            "s_min_uncond": 0.0,
        }
        return self.launch_sampling(
            steps,
            lambda: self.func(self.model_wrap_cfg, x, extra_args=self.sampler_extra_args, disable=False,
                              callback=self.callback_state, **extra_params_kwargs),
        )
