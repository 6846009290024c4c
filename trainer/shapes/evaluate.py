"""Ground-truth evaluation of a ShapesWorld pipeline on held-out captions with fixed seeds."""
from __future__ import annotations

import torch

from .report import mean_ci95
from .truth import aesthetic, alignment_terms
from .world import heldout_captions


@torch.no_grad()
def sample_pipeline(pipe, captions: list[str], seeds: list[int], steps: int = 20, guidance: float = 5.0) -> torch.Tensor:
    """Images Tensor[len(captions) * len(seeds), 3, 64, 64] in [−1, 1]: every caption with every seed,
    caption-major, DDIM (η = 0) through `StableDiffusionPipeline.__call__`."""
    prompts = [c for c in captions for _ in seeds]
    gens = [torch.Generator().manual_seed(s) for _ in captions for s in seeds]
    out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="pt",
               height=64, width=64).images
    return out.float() * 2 - 1


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
