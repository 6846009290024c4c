"""modules.sd_samplers_timesteps: DDIM/PLMS/UniPC step in timesteps, not sigmas.

Their sampling is not simulated here: running one raises, so a test shows when the SPO
script has (correctly) replaced such a sampler.
"""
from modules import sd_samplers_common


class CompVisSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model):
        super().__init__(funcname)

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        raise NotImplementedError("stand-in: timestep samplers (DDIM, PLMS, UniPC) are not simulated")

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        raise NotImplementedError("stand-in: timestep samplers (DDIM, PLMS, UniPC) are not simulated")


samplers_data_timesteps = [
    sd_samplers_common.SamplerData(name, lambda model, name=name: CompVisSampler(name, model), [], {})
    for name in ("DDIM", "PLMS", "UniPC")
]
