"""SPOSampler vs the plain sampler vs best-of-m with the SPM, at an equal number of model evaluations.

    python -m bench.sampler                                  # ShapesWorld, shipped model and SPM, CPU
    python -m bench.sampler --model DIR --spm DIR --device cuda --captions 8 --seeds 4

Per image: stochastic DDIM (η = 1) over the model's DDIM timesteps with CFG. "plain" draws one
sample (n evaluations). "spo" branches k candidates per step in the window and keeps the SPM's
pick (n + (k−1)·W evaluations, +1 when the last step branches). "best_of_m" draws m plain samples and keeps the one the SPM
scores highest at t = 0, with m chosen so that m·n matches spo's cost (rounded up). Quality is the
ShapesWorld ground truth (aesthetic 0–10, alignment 0–1): mean and 95% interval over all
caption × seed pairs (captions evenly spaced over the training set, or the held-out set). Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass
class MethodResult:
    method: str
    images: int
    model_evals_per_image: float
    spm_images_per_image: float
    seconds_per_image: float
    aesthetic_mean: float
    aesthetic_ci95: float
    alignment_mean: float
    alignment_ci95: float


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and half-width of the normal 95% interval of the mean (0 for a single value)."""
    v = values.double()
    half = 1.96 * float(v.std(unbiased=True)) / math.sqrt(len(v)) if len(v) > 1 else 0.0
    return float(v.mean()), half


def to_world_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """The ground truth is defined on ShapesWorld's canvas; other resolutions are resized to it."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.sampler", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="diffusers pipeline directory (default: the shipped ShapesWorld pipeline)")
    p.add_argument("--spm", help="SPM folder or file (default: the shipped ShapesWorld SPM)")
    p.add_argument("--captions", type=int, default=8, help="ShapesWorld captions to use (default 8)")
    p.add_argument("--caption-set", choices=("train", "heldout"), default="train",
                   help="train: evenly spaced over the training captions (default); heldout: the held-out "
                        "combinations, which the small base model rarely aligns with")
    p.add_argument("--seeds", type=int, default=4, help="seeds per caption (default 4)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    p.add_argument("--cfg", type=float, default=5.0, help="classifier-free guidance scale (default 5.0)")
    p.add_argument("--k", type=int, default=4, help="SPO candidates per branched step (default 4)")
    p.add_argument("--window", type=float, nargs=2, default=(0.2, 1.0), metavar=("START", "END"),
                   help="branching window as fractions of the steps (default 0.2 1.0)")
    p.add_argument("--batch", type=int, default=8, help="images sampled together (default 8)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--out", default="bench/results/sampler.json", help="JSON result path")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> list[MethodResult]:
    from trainer.models import load_model
    from trainer.shapes import truth
    from trainer.shapes.shipped import check_weights, weights_dir
    from trainer.shapes.world import IMAGE_SIZE, heldout_captions, train_captions
    from trainer.spm.weights import load_spm
    from trainer.spo.guided_sampler import (
        branched_steps, ddim_sigmas, expected_model_evals, model_denoiser, spo_guided_sample_traced,
    )

    model = load_model(args.model or check_weights(), device=args.device)
    spm = load_spm(args.spm or weights_dir("spm"), device=args.device)
    pool = train_captions() if args.caption_set == "train" else heldout_captions()
    captions = [pool[round(i * len(pool) / args.captions)] for i in range(min(args.captions, len(pool)))]
    jobs = [(c, s) for c in captions for s in range(args.seeds)]
    sigmas = ddim_sigmas(model.schedule, args.steps).to(args.device)
    n = args.steps
    branch = branched_steps(sigmas, tuple(args.window))
    spo_cost = expected_model_evals(n, sum(branch), args.k, last_step_branched=branch[-1])
    m = max(1, math.ceil(spo_cost / n))
    shape = model.latent_shape

    def sample(prompts, seeds, *, k, window, copies=1):
        """Final images [B·copies, 3, H, W] in [−1, 1] (copy-major), evals, SPM images scored, seconds."""
        start = time.perf_counter()
        prompts = [p for _ in range(copies) for p in prompts]
        gens = [torch.Generator().manual_seed(1000 * s + j) for j in range(copies) for s in seeds]
        x = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(args.device) * float(sigmas[0])
        denoise = model_denoiser(model, model.encode_prompts(prompts), model.uncond_embeds(len(prompts)), args.cfg)
        scored = [0]

        def score_x0(x0, t):
            scored[0] += x0.shape[0]
            return spm.score(model.decode(x0), prompts * (x0.shape[0] // len(prompts)), t)

        noise_gen = torch.Generator().manual_seed(seeds[0] * 7919 + copies)
        trace = spo_guided_sample_traced(denoise, x, sigmas, score_x0=score_x0, k=k, window=window,
                                         noise=lambda a, b: torch.randn(x.shape, generator=noise_gen).to(x.device))
        x_vp = trace.x / (1 + sigmas[-1] ** 2).sqrt()
        return model.decode(x_vp.to(model.dtype)).float().cpu(), trace.model_evals, scored[0], time.perf_counter() - start

    results = {}
    for name in ("plain", "spo", f"best_of_{m}"):
        imgs, evals, spm_imgs, secs = [], 0.0, 0, 0.0
        for i in range(0, len(jobs), args.batch):
            chunk = jobs[i : i + args.batch]
            prompts, seeds = [c for c, _ in chunk], [s for _, s in chunk]
            if name == "spo":
                out, e, sc, t = sample(prompts, seeds, k=args.k, window=tuple(args.window))
            elif name == "plain":
                out, e, sc, t = sample(prompts, seeds, k=2, window=(0.0, 0.0))
            else:
                out, e, sc, t = sample(prompts, seeds, k=2, window=(0.0, 0.0), copies=m)
                scores = spm.score(out.to(args.device), prompts * m, torch.zeros(len(out), dtype=torch.long)).cpu()
                sc += len(out)
                pick = scores.reshape(m, len(chunk)).argmax(dim=0)
                out = out.reshape(m, len(chunk), *out.shape[1:])[pick, torch.arange(len(chunk))]
                e *= m
            imgs.append(out)
            evals += e * len(chunk)
            spm_imgs += sc
            secs += t
        images = to_world_size(torch.cat(imgs), IMAGE_SIZE)
        caps = [c for c, _ in jobs]
        a_mean, a_ci = mean_ci95(truth.aesthetic(images))
        l_mean, l_ci = mean_ci95(truth.alignment(images, caps))
        results[name] = MethodResult(name, len(jobs), evals / len(jobs), spm_imgs / len(jobs), secs / len(jobs),
                                     a_mean, a_ci, l_mean, l_ci)
    return list(results.values())


def table(rows: list[MethodResult]) -> str:
    head = f"{'method':<12} {'evals/img':>9} {'SPM img/img':>11} {'s/img':>7} {'aesthetic (0-10)':>18} {'alignment (0-1)':>17}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.method:<12} {r.model_evals_per_image:>9.1f} {r.spm_images_per_image:>11.1f} "
                     f"{r.seconds_per_image:>7.2f} {r.aesthetic_mean:>10.3f} ±{r.aesthetic_ci95:<6.3f} "
                     f"{r.alignment_mean:>9.3f} ±{r.alignment_ci95:<6.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.k < 2:
        print("bench.sampler: --k must be at least 2", file=sys.stderr)
        return 2
    try:
        rows = run(args)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"bench.sampler: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": {k: v for k, v in vars(args).items()}, "results": [asdict(r) for r in rows]},
                              indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
