"""SPOSampler: a SAMPLER for SamplerCustom / SamplerCustomAdvanced that picks, at each branched
step, the candidate the SPM prefers. The sampling lives in trainer.spo.guided_sampler; this file
only wires ComfyUI's model, noise, VAE and progress callback to it."""
from __future__ import annotations

import logging

import torch

from .convert import comfy_image_to_ours
from .errors import NodeInputError, library_imports, one_line
from .spm_nodes import CATEGORY, score_images

log = logging.getLogger("spo-studio")
NODE = "SPOSampler"


def model_family(base_model) -> str | None:
    """"sd15" | "sdxl" | None from a ComfyUI BaseModel (its model_config class: SD15, SDXL, ...)."""
    name = type(getattr(base_model, "model_config", None)).__name__
    from spo_studio.families import family_of_comfy_model  # pure Python: fine outside library_imports

    return family_of_comfy_model(name)


def check_eps_like(base_model) -> None:
    """The σ-space DDIM step assumes x = x0 + σ·ε (ComfyUI's EPS and V_PREDICTION sampling)."""
    kinds = {c.__name__ for c in type(base_model.model_sampling).__mro__}
    if not kinds & {"EPS", "V_PREDICTION"}:
        raise NodeInputError(
            f"{NODE}: this model samples as {type(base_model.model_sampling).__name__}; "
            "SPOSampler supports SD-1.5/SDXL-style (eps or v-prediction) models"
        )


class SPOSamplerFunction:
    """The k-diffusion-style function ComfyUI's KSAMPLER calls; holds the node's settings."""

    def __init__(self, spm, vae, prompt: str, k: int, window: tuple[float, float], selection: str, temperature: float):
        self.spm, self.vae, self.prompt = spm, vae, prompt
        self.k, self.window, self.selection, self.temperature = k, window, selection, temperature
        self.last_trace = None  # the last run's GuidedSample: counts and per-step scores

    @torch.no_grad()
    def __call__(self, model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
        from comfy.k_diffusion.sampling import default_noise_sampler
        with library_imports(NODE):
            from spo_studio.families import FAMILIES, host_family
            from spo_studio.spm.weights import check_family
            from spo_studio.spo.guided_sampler import spo_guided_sample_traced

        extra_args = {} if extra_args is None else extra_args
        base = model.inner_model.inner_model  # KSamplerX0Inpaint -> guider -> BaseModel
        check_eps_like(base)
        family = model_family(base)
        try:
            if not (self.spm.family in FAMILIES and host_family(self.spm.family) == family):
                check_family(self.spm, family)
        except ValueError as e:
            raise one_line(NODE, e) from None
        seed = extra_args.get("seed")
        # softmax draws get their own stream: choosing never shifts the noise sequence
        choice = torch.Generator().manual_seed(int(seed) + 0x5F0) if seed is not None else None

        batch = x.shape[0]
        masked = extra_args.get("denoise_mask") is not None

        def denoise(xs, sigma_vec):
            if masked and xs.shape[0] != batch and batch > 1:
                # ComfyUI blends a noise mask with the B-row latent inside the model call, so k·B
                # candidate rows go through it B at a time (same evaluations, k smaller batches)
                return torch.cat([model(c, s, **extra_args) for c, s in zip(xs.split(batch), sigma_vec.split(batch))])
            return model(xs, sigma_vec, **extra_args)

        def score_x0(x0, timesteps):
            images = self.vae.decode(base.process_latent_out(x0))
            return score_images(self.spm, comfy_image_to_ours(images), self.prompt, timesteps)

        def sigma_to_t(sigma_vec):
            t = base.model_sampling.timestep(sigma_vec).round().long().clamp(0, 999)
            return torch.where(sigma_vec > 0, t, torch.zeros_like(t))

        try:
            trace = spo_guided_sample_traced(
                denoise, x, sigmas, score_x0=score_x0, k=self.k, window=self.window,
                selection=self.selection, temperature=self.temperature,
                noise=default_noise_sampler(x, seed=seed), choice_generator=choice,
                callback=callback, sigma_to_t=sigma_to_t,
            )
        except ValueError as e:
            raise one_line(NODE, e) from None
        self.last_trace = trace
        log.info(
            "%s: %d steps, %d branched (k=%d): %d model evaluations per sample, %d SPM batches",
            NODE, len(sigmas) - 1, len(trace.branches), self.k, trace.model_evals, trace.scorer_calls,
        )
        return trace.x


class SPOSampler:
    """Outputs a SAMPLER: stochastic DDIM that branches into k candidates and keeps the SPM's pick."""

    DESCRIPTION = (
        "SPO-guided sampler for SamplerCustom / SamplerCustomAdvanced. Inside the window, each step makes k "
        "candidates from one model call, predicts each candidate's clean image with ONE batched call, decodes "
        "them with the VAE, scores them with the SPM at their timestep, and continues from the best (or a "
        "softmax draw). A branched step costs k model evaluations plus one SPM batch; the rest is plain "
        "stochastic DDIM (eta 1). Deterministic for a given noise seed."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("SAMPLER",)
    RETURN_NAMES = ("sampler",)
    OUTPUT_TOOLTIPS = ("Connect to the sampler input of SamplerCustom or SamplerCustomAdvanced.",)
    FUNCTION = "get_sampler"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "spm": ("SPM", {"tooltip": "The preference model that picks candidates (Load SPM)."}),
                "vae": ("VAE", {"tooltip": "The model's VAE; decodes each candidate's predicted image for the SPM."}),
                "prompt": ("STRING", {
                    "multiline": True, "default": "",
                    "tooltip": "The text the SPM scores against; usually the positive prompt.",
                }),
                "k": ("INT", {
                    "default": 4, "min": 2, "max": 16,
                    "tooltip": "Candidates per branched step (SPO used 4 for SD-1.5, 2 for SDXL). Cost grows with k.",
                }),
                "window_start": ("FLOAT", {
                    "default": 0.2, "min": 0.0, "max": 1.0, "step": 0.05,
                    "tooltip": "Fraction of the steps after which branching starts (0.2 of 20 steps = step 4, "
                               "SPO's t = 750).",
                }),
                "window_end": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                    "tooltip": "Fraction of the steps where branching stops (1.0 = to the end; the last step into "
                               "sigma 0 adds no noise, so it never branches).",
                }),
                "selection": (["best", "softmax"], {
                    "default": "best",
                    "tooltip": "best: keep the top-scoring candidate. softmax: draw one with probability "
                               "softmax(score / temperature).",
                }),
                "temperature": ("FLOAT", {
                    "default": 1.0, "min": 0.01, "max": 100.0, "step": 0.01,
                    "tooltip": "Softmax temperature (selection = softmax only); lower is greedier.",
                }),
            }
        }

    def get_sampler(self, spm, vae, prompt: str, k: int = 4, window_start: float = 0.2, window_end: float = 1.0,
                    selection: str = "best", temperature: float = 1.0):
        import comfy.samplers

        if not prompt.strip():
            raise NodeInputError(f"{NODE}: the prompt is empty; type the text the SPM should score against")
        if int(k) < 2:
            raise NodeInputError(f"{NODE}: k must be at least 2 candidates, got {k}")
        if not 0.0 <= window_start <= window_end <= 1.0:
            raise NodeInputError(f"{NODE}: need 0 <= window_start <= window_end <= 1, got {window_start}..{window_end}")
        if selection not in ("best", "softmax"):
            raise NodeInputError(f"{NODE}: selection must be best or softmax, got {selection!r}")
        fn = SPOSamplerFunction(spm, vae, prompt, int(k), (float(window_start), float(window_end)), selection,
                                float(temperature))
        return (comfy.samplers.KSAMPLER(fn),)
