"""SPO's claims, tested on ShapesWorld at an equal budget of UNet evaluations.

    python bench/claims.py                   # all variants, 3 seeds (long: see --help)
    python bench/claims.py --budget 20000 --seeds 0 1 2 --variants spo traj-dpo

Variants (each post-trains a fresh LoRA on the shipped ShapesWorld model until it has spent
--budget UNet evaluations — one evaluation = one latent through the UNet, a guided forward
costs two — in sampling and training together):
  spo            step-aware SPM, continuation from a random candidate (the method)
  spo-winner     continuation from the winner            (paper: collapses)
  spo-loser      continuation from the loser             (paper: collapses)
  spo-agnostic   the step-agnostic preference model scores the candidates' x̂0
  traj-dpo       trajectory-level online DPO: two full trajectories per prompt scored at the
                 end by the same preference model, DPO loss on every step of the pair
  base           no post-training
Evaluation: ground-truth aesthetic and alignment of fixed-seed samples on held-out captions.
Also records, for SPO, the pair-keep rate and how often the SPM's winner is also the
ground-truth winner (on the same decoded x̂0) by timestep. Prints a table, writes JSON.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer.atomic import write_text  # noqa: E402
from trainer.models import PromptEmbeds  # noqa: E402
from trainer.schedule import ddim_step  # noqa: E402
from trainer.spo.config import build_config  # noqa: E402
from trainer.spo.pairs import select_pairs  # noqa: E402
from trainer.spo.rollout import Transitions  # noqa: E402

from bench.spo_round import CountingUNet  # noqa: E402  (counts calls and UNet evaluations = rows)
from bench.teachers import Choices  # noqa: E402  (the ground-truth gaps of a scorer's choices)
from trainer.shapes.truth import preference_utility  # noqa: E402

VARIANTS = {
    "spo": {"scorer.source": "shapes-spm"},
    "spo-winner": {"scorer.source": "shapes-spm", "sampling.continuation": "winner"},
    "spo-loser": {"scorer.source": "shapes-spm", "sampling.continuation": "loser"},
    "spo-agnostic": {"scorer.source": "shapes-preference", "scorer.score_timestep": "zero"},
    "traj-dpo": {"scorer.source": "shapes-spm"},
    "base": {},
}


@torch.no_grad()
def trajectory_round(model, scorer, prompts, cfg, gen) -> tuple[Transitions, PromptEmbeds, dict]:
    """Two full trajectories per prompt, scored clean at the end; every step of a kept pair is a transition."""
    s = cfg.sampling
    b = len(prompts)
    cond = model.encode_prompts(prompts)
    cond2, uncond2 = cond.repeat_interleave(2), model.uncond_embeds(2 * b)
    x = torch.randn((2 * b, *model.latent_shape), generator=gen)
    path = [x]
    timesteps = model.schedule.timesteps(s.num_steps)
    for t in timesteps:
        out = model.guided_output(path[-1], t, cond2, uncond2, s.guidance_scale)
        path.append(ddim_step(model.schedule, out, t, path[-1], s.num_steps, s.eta, noise=torch.randn(x.shape, generator=gen)).prev_sample)
    images = model.decode(path[-1])
    scores = scorer.score(images, [p for p in prompts for _ in range(2)], torch.zeros(2 * b, dtype=torch.long)).float().view(b, 2)
    pairs = select_pairs(scores, s.threshold)
    rows = torch.nonzero(pairs.keep).flatten()
    w, l_ = rows * 2 + pairs.win[rows], rows * 2 + pairs.lose[rows]
    parts = []
    for i, t in enumerate(timesteps):
        if i < s.branch_start:  # the same window as SPO, for a like-for-like comparison
            continue
        n = len(rows)
        parts.append(Transitions(torch.full((n,), int(t)), path[i][w], path[i][l_], path[i + 1][w], path[i + 1][l_],
                                 torch.zeros(n, dtype=torch.bool), rows))
    tr = Transitions.cat(parts, [0] * len(parts))
    return tr, cond, {"kept": len(rows), "branched": b, "final_score": float(scores.max(1).values.mean())}


def run_variant(name: str, seed: int, budget: int, eval_seeds: int, threads: int) -> dict:
    from accelerate import Accelerator

    from trainer.spo.report import evaluate_shapes
    from trainer.spo.sources import resolve_model, resolve_prompts, resolve_scorer
    from trainer.spo.train import EpochData, add_lora, epoch_batches, epoch_generator, run_epoch, train_on
    from trainer.shapes import heldout_captions

    torch.set_num_threads(threads)
    cfg = build_config("shapes", overrides={**VARIANTS[name], "seed": seed, "train.epochs": 10_000})
    model = resolve_model(cfg)
    prompts = resolve_prompts(cfg)
    t0 = time.time()
    extra = {}
    if name != "base":
        scorer = resolve_scorer(cfg)
        agreement = Choices(scorer, cfg.sampling.k, {"utility": preference_utility}) if name.startswith("spo") else None
        torch.manual_seed(seed)
        params = add_lora(model, cfg.lora)
        counter = CountingUNet(model.unet)
        base_unet, model.unet = model.unet, counter
        acc = Accelerator(cpu=True)
        opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        epoch, kept, branched = 0, 0, 0
        while counter.rows < budget:
            gen = epoch_generator(seed, epoch, 0)
            if name == "traj-dpo":  # the trainer's epoch too: its prompts, each batch trained on right after sampling
                for idx in epoch_batches(len(prompts), cfg.sampling, seed, epoch, 0, 1):
                    tr, cond, st = trajectory_round(model, scorer, [prompts[i] for i in idx], cfg, gen)
                    kept, branched = kept + st["kept"], branched + st["branched"]
                    train_on(model, counter, acc, opt, params, EpochData(tr, cond, model.uncond_embeds(len(idx)), {}), cfg)
            else:  # SPO exactly as the trainer runs an epoch: each batch trained on right after sampling
                info = run_epoch(model, agreement, prompts, counter, acc, opt, params, cfg, epoch, show=False)
                kept, branched = kept + info["kept"], branched + info["branched"]
            epoch += 1
        model.unet = base_unet
        extra = {"epochs": epoch, "unet_evaluations": counter.rows, "pair_keep_rate": kept / max(branched, 1)}
        if agreement is not None:
            extra["spm_agreement_by_t"] = {}
            for t, gaps in sorted(agreement.gaps.items(), reverse=True):
                g = torch.cat(gaps["utility"])
                extra["spm_agreement_by_t"][t] = int((g >= 0).sum()) / g.numel()  # a tie counts as agreeing
    train_s = time.time() - t0
    ev = evaluate_shapes(model, heldout_captions(), eval_seeds)
    return {
        "variant": name, "seed": seed, "train_seconds": round(train_s, 1),
        "aesthetic": float(ev["aesthetic"].mean()), "alignment": float(ev["alignment"].mean()), **extra,
    }


def models_and_preset() -> str:
    """A fingerprint of what the runs depend on besides their args: the shipped ShapesWorld models
    (their record.json) and the `shapes` preset."""
    from trainer.shapes.shipped import weights_dir
    from trainer.spo.config import PRESETS

    h = hashlib.sha256(weights_dir("record.json").read_bytes())
    h.update(json.dumps(PRESETS["shapes"], sort_keys=True).encode())
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--budget", type=int, default=60_000, help="UNet evaluations per post-training run")
    ap.add_argument("--eval-seeds", type=int, default=4, help="fixed seeds per held-out caption")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/results/claims.json")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A full run takes hours: runs already in --out with the same budget, evaluation seeds, shipped
    # models and preset are kept, so the bench can be run in parts (delete the file to start over).
    args.models_and_preset = models_and_preset()
    done = {}
    if out.exists():
        previous = json.loads(out.read_text())
        same = ("budget", "eval_seeds", "models_and_preset")
        if all(previous["args"].get(k) == getattr(args, k) for k in same):
            done = {(r["variant"], r["seed"]): r for r in previous["runs"]}
        else:
            print(f"{out}: its runs used other models, preset, budget or evaluation seeds; starting over", flush=True)
    runs = list(done.values())

    def held_variants() -> list[str]:
        return [v for v in VARIANTS if any(r["variant"] == v for r in runs)]

    def save(**more) -> None:  # atomically: the file holds hours of runs
        held = {**vars(args), "variants": held_variants(), "seeds": sorted({r["seed"] for r in runs})}  # over all calls
        write_text(out, json.dumps({"args": held, "runs": runs, **more}, indent=1))
    for name in args.variants:
        for seed in args.seeds if name != "base" else args.seeds[:1]:
            if (name, seed) in done:
                print(f"{name} seed {seed}: kept from {out}", flush=True)
                continue
            r = run_variant(name, seed, args.budget, args.eval_seeds, args.threads)
            runs.append(r)
            print(json.dumps(r), flush=True)
            save()
    summary = {}
    print("\n| variant | seeds | aesthetic (mean ± sd over seeds) | alignment (mean ± sd) | pair keep rate |")
    print("|---|---|---|---|---|")
    for name in held_variants():
        rs = [r for r in runs if r["variant"] == name]
        row = {}
        for m in ("aesthetic", "alignment"):
            v = torch.tensor([r[m] for r in rs], dtype=torch.float64)
            row[m] = (float(v.mean()), float(v.std()) if len(v) > 1 else 0.0)
        keep = [r["pair_keep_rate"] for r in rs if "pair_keep_rate" in r]
        row["pair_keep_rate"] = sum(keep) / len(keep) if keep else math.nan
        summary[name] = row
        print(f"| {name} | {len(rs)} | {row['aesthetic'][0]:.3f} ± {row['aesthetic'][1]:.3f} | "
              f"{row['alignment'][0]:.3f} ± {row['alignment'][1]:.3f} | {row['pair_keep_rate']:.2f} |")
    save(summary=summary)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
