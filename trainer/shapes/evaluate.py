"""Ground-truth evaluation of a ShapesWorld pipeline on held-out captions with fixed seeds."""
from __future__ import annotations

import torch

from .report import mean_ci95
from .truth import aesthetic, alignment_terms
from .world import heldout_captions


@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], steps: int = 20, guidance: float = 5.0) -> torch.Tensor:
    """Images Tensor[len(prompts), 3, 64, 64] in [−1, 1], prompt i from seed i, DDIM (η = 0) through
    `StableDiffusionPipeline.__call__`."""
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="pt",
               height=64, width=64).images
    return out.float() * 2 - 1


def sample_pipeline(pipe, captions: list[str], seeds: list[int], steps: int = 20, guidance: float = 5.0) -> torch.Tensor:
    """Images Tensor[len(captions) * len(seeds), 3, 64, 64] in [−1, 1]: every caption with every seed,
    caption-major (see `generate`)."""
    return generate(pipe, [c for c in captions for _ in seeds], [s for _ in captions for s in seeds], steps, guidance)


def heldout_report(pipe, seeds: list[int], captions: list[str] | None = None, steps: int = 20,
                   guidance: float = 5.0) -> dict:
    """Mean/CI of alignment and aesthetic, aesthetic spread (std, 10th–90th percentile) on held-out captions."""
    captions = heldout_captions() if captions is None else captions
    images = sample_pipeline(pipe, captions, seeds, steps, guidance)
    prompts = [c for c in captions for _ in seeds]
    terms = alignment_terms(images, prompts)
    al, ae = terms.total(), aesthetic(images)
    return {
        "captions": len(captions), "seeds": list(seeds), "steps": steps, "guidance_scale": guidance,
        "alignment": dict(zip(("mean", "lo", "hi"), mean_ci95(al))),
        "aesthetic": dict(zip(("mean", "lo", "hi"), mean_ci95(ae))),
        "aesthetic_std": float(ae.std()),
        "aesthetic_p10_p90": [float(ae.quantile(0.1)), float(ae.quantile(0.9))],
        "alignment_above_0.5": float((al > 0.5).float().mean()),
        "alignment_terms": {k: float(getattr(terms, k).mean()) for k in ("shape", "colour", "background", "position")},
        "per_image_alignment": [round(float(v), 4) for v in al],
        "per_image_aesthetic": [round(float(v), 4) for v in ae],
    }


def swap_attribute(caption: str, attribute: str, rng) -> str:
    """The caption with one attribute ("shape", "colour" or "position") replaced by another valid value."""
    from dataclasses import replace

    from .world import COLOURS, POSITIONS, SHAPES, parse_caption

    s = parse_caption(caption)
    if attribute == "shape":
        return replace(s, shape=rng.choice([v for v in SHAPES if v != s.shape])).caption
    if attribute == "colour":
        return replace(s, colour=rng.choice([v for v in COLOURS if v not in (s.colour, s.background)])).caption
    if attribute == "position":
        return replace(s, position=rng.choice([v for v in POSITIONS if v != s.position])).caption
    raise ValueError(f"unknown attribute {attribute!r}; expected shape, colour or position")


@torch.no_grad()
def caption_sensitivity(pipe, captions: list[str], timesteps=(100, 300, 500, 700, 900), seed: int = 0) -> dict:
    """Does the denoiser use each word of the caption? x̂0 error with the right caption vs one attribute swapped.

    For clean renders z0 of `captions` (quality 0.9) and x_t = √ᾱ_t z0 + √(1 − ᾱ_t) ε, the mean squared error
    of x̂0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t against z0 is measured with the true caption, with its shape, colour
    or position swapped, and with the empty caption. A swap that leaves the error unchanged is an attribute the
    model ignores. Returns {str(t): {"right"|"shape"|"colour"|"position"|"uncond": mse}}.
    """
    import random

    from .render import render_captions
    from .train_clip import tokenize

    rng = random.Random(seed)
    z0 = pipe.vae.encode(render_captions(captions, torch.full((len(captions),), 0.9), seed)).latent_dist.mean
    z0 = z0 * pipe.vae.config.scaling_factor
    variants = {"right": captions, **{a: [swap_attribute(c, a, rng) for c in captions] for a in ("shape", "colour", "position")},
                "uncond": [""] * len(captions)}
    states = {k: pipe.text_encoder(tokenize(pipe.tokenizer, v))[0] for k, v in variants.items()}
    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
    out = {}
    for t in timesteps:
        a = pipe.scheduler.alphas_cumprod[t]
        xt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        tt = torch.full((len(captions),), t)
        out[str(t)] = {k: round(float((((xt - (1 - a).sqrt() * pipe.unet(xt, tt, h).sample) / a.sqrt() - z0) ** 2).mean()), 5)
                       for k, h in states.items()}
    return out
