"""Stand-in of comfy.k_diffusion.sampling: the seeded noise sampler samplers use."""
import torch


def default_noise_sampler(x, seed=None):
    if seed is not None:
        if x.device == torch.device("cpu"):
            seed += 1  # as ComfyUI does: CPU noise is offset from the initial latent noise
        generator = torch.Generator(device=x.device)
        generator.manual_seed(seed)
    else:
        generator = None
    return lambda sigma, sigma_next: torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device,
                                                 generator=generator)
