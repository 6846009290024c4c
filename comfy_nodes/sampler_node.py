"""SPOSampler: a SAMPLER for SamplerCustom / SamplerCustomAdvanced that samples guided by the SPM
with one of the strategies of spo_studio.spo.strategies (fk, best-of-k, greedy). The sampling lives
there; this file only wires ComfyUI's model, noise, VAE and progress callback to it."""
from __future__ import annotations

import logging
import math

import torch

from .convert import comfy_image_to_ours
from .errors import NodeInputError, check_spm, library_imports, one_line
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

    def __init__(self, spm, vae, prompt: str, config):
        self.spm, self.vae, self.prompt, self.config = spm, vae, prompt, config
        self.last_trace = None  # the last run's GuidedSample: counts and per-step scores

    @torch.no_grad()
    def __call__(self, model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
        from comfy.k_diffusion.sampling import default_noise_sampler
        with library_imports(NODE):
            from spo_studio.families import FAMILIES, host_family
            from spo_studio.spm.weights import check_family
            from spo_studio.spo.strategies import sample

        extra_args = {} if extra_args is None else extra_args
        base = model.inner_model.inner_model  # KSamplerX0Inpaint -> guider -> BaseModel
        check_eps_like(base)
        family = model_family(base)
        try:
            if not (self.spm.family in FAMILIES and host_family(self.spm.family) == family):
                check_family(self.spm, family)
        except (ValueError, RuntimeError) as e:
            raise one_line(NODE, e) from None
        seed = extra_args.get("seed")
        # softmax draws and fk resampling get their own stream: choosing never shifts the noise sequence
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

        def progress(done, total):
            log.info("%s: judged step %d/%d (%s, k=%d)", NODE, done, total, self.config.name, self.config.k)

        try:
            trace = sample(
                self.config, denoise, x, sigmas, score_x0=score_x0,
                noise=default_noise_sampler(x, seed=seed), generator=choice,
                callback=callback, sigma_to_t=sigma_to_t, progress=progress,
            )
        except (ValueError, RuntimeError) as e:
            raise one_line(NODE, e) from None
        self.last_trace = trace
        log.info(
            "%s: %s, %d steps, %d judged (k=%d): %d model evaluations and %d scored images per sample",
            NODE, self.config.name, len(sigmas) - 1, len(trace.branches), self.config.k, trace.model_evals,
            trace.scorer_images,
        )
        return trace.x


def _strategy_defaults():
    with library_imports(NODE):
        from spo_studio.spo.strategies import HOST_DEFAULT

    return HOST_DEFAULT


class SPOSampler:
    """Outputs a SAMPLER: stochastic DDIM guided by the SPM with the chosen strategy."""

    DESCRIPTION = (
        "SPM-guided sampler for SamplerCustom / SamplerCustomAdvanced (stochastic DDIM, eta 1), one of: "
        "fk — k particles resampled by the SPM at the judged steps (Feynman-Kac steering), the best kept "
        "at the end; best-of-k — k whole samples, the best kept; greedy — k candidates at each judged step, "
        "the best kept (SPO's per-step selection). Judging reuses the predicted image each step already "
        "has, decodes only what is scored and scores a whole step in one SPM batch. fk and best-of-k cost "
        "≈ k× the model evaluations of plain sampling. Deterministic for a given noise seed."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("SAMPLER",)
    RETURN_NAMES = ("sampler",)
    OUTPUT_TOOLTIPS = ("Connect to the sampler input of SamplerCustom or SamplerCustomAdvanced.",)
    FUNCTION = "get_sampler"

    @classmethod
    def INPUT_TYPES(cls):
        with library_imports(NODE):
            from spo_studio.spo.strategies import POTENTIALS, cost_tooltip

        d = _strategy_defaults()
        return {
            "required": {
                "spm": ("SPM", {"tooltip": "The preference model that judges (Load SPM)."}),
                "vae": ("VAE", {"tooltip": "The model's VAE; decodes each judged state's predicted image for the SPM."}),
                "prompt": ("STRING", {
                    "multiline": True, "default": "",
                    "tooltip": "The text the SPM scores against; usually the positive prompt.",
                }),
                "k": ("INT", {
                    "default": d.k, "min": 2, "max": 16,
                    "tooltip": "Particles (fk), samples (best-of-k) or candidates per judged step (greedy). "
                               "fk and best-of-k: ≈ k× the model evaluations of plain sampling.",
                }),
                "window_start": ("FLOAT", {
                    "default": d.window[0], "min": 0.0, "max": 1.0, "step": 0.05,
                    "tooltip": "Fraction of the steps where judging starts (fk: resampling; greedy: branching). "
                               "0.4 of 20 steps = step 8.",
                }),
                "window_end": ("FLOAT", {
                    "default": d.window[1], "min": 0.0, "max": 1.0, "step": 0.05,
                    "tooltip": "Fraction of the steps where judging stops (1.0 = to the end; a step into "
                               "sigma 0 is never judged).",
                }),
                "selection": (["best", "softmax"], {
                    "default": d.selection,
                    "tooltip": "greedy only. best: keep the top-scoring candidate. softmax: draw one with "
                               "probability softmax(score / temperature).",
                }),
                "temperature": ("FLOAT", {
                    "default": d.temperature, "min": 0.01, "max": 100.0, "step": 0.01,
                    "tooltip": "greedy softmax temperature (selection = softmax only); lower is greedier.",
                }),
            },
            "optional": {
                "strategy": (["fk", "best-of-k", "greedy"], {
                    "default": d.name,
                    "tooltip": " ".join(cost_tooltip(n) for n in ("fk", "best-of-k", "greedy")),
                }),
                "judge_every": ("INT", {
                    "default": d.every, "min": 1, "max": 100,
                    "tooltip": "Judge every N steps inside the window (fk: resample; greedy: branch). "
                               "Fewer judged steps cost fewer decodes and SPM images.",
                }),
                "potential": (list(POTENTIALS), {
                    "default": d.potential,
                    "tooltip": "fk only: what the resampling weights exp(lambda·potential) use: max = the best "
                               "score of the particle so far, difference = the change since the last "
                               "resampling, sum = all its scores.",
                }),
                "lam": ("FLOAT", {
                    "default": d.lam, "min": 0.0, "max": 1000.0, "step": 0.1,
                    "tooltip": "fk only: lambda, how sharply resampling favours high scores (0 = uniform).",
                }),
            },
        }

    def get_sampler(self, spm, vae, prompt: str, k: int = 4, window_start: float = 0.4, window_end: float = 0.7,
                    selection: str = "best", temperature: float = 1.0, strategy: str | None = None,
                    judge_every: int | None = None, potential: str | None = None, lam: float | None = None):
        import comfy.samplers

        d = _strategy_defaults()
        if not prompt.strip():
            raise NodeInputError(f"{NODE}: the prompt is empty; type the text the SPM should score against")
        if int(k) < 2:
            raise NodeInputError(f"{NODE}: k must be at least 2 candidates, got {k}")
        if not 0.0 <= window_start <= window_end <= 1.0:
            raise NodeInputError(f"{NODE}: need 0 <= window_start <= window_end <= 1, got {window_start}..{window_end}")
        if selection not in ("best", "softmax"):
            raise NodeInputError(f"{NODE}: selection must be best or softmax, got {selection!r}")
        if selection == "softmax" and not (math.isfinite(float(temperature)) and float(temperature) > 0):
            raise NodeInputError(f"{NODE}: temperature must be a number > 0, got {temperature}")
        config = d.replace(
            name=d.name if strategy is None else str(strategy), k=int(k),
            window=(float(window_start), float(window_end)),
            every=d.every if judge_every is None else int(judge_every),
            selection=selection, temperature=float(temperature),
            potential=d.potential if potential is None else str(potential),
            lam=d.lam if lam is None else float(lam),
        )
        problem = config.problem()
        if problem is not None:
            raise NodeInputError(f"{NODE}: {problem}")
        check_spm(NODE, spm)  # after the settings: API callers learn about both, widgets first
        return (comfy.samplers.KSAMPLER(SPOSamplerFunction(spm, vae, prompt, config)),)
