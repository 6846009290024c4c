"""How well each teacher ranks SPO's own candidates on the shipped ShapesWorld base model.

    python bench/teachers.py                                  # the shipped SPM, preference model, ground truth
    python bench/teachers.py --teachers shapes-spm --rounds 4

SPO trains on whatever its teacher prefers among k candidates drawn from one noisy latent, so
what matters is not a preference model's accuracy on generic pairs but how often its winner
beats its loser in the ground truth on those candidates. For each teacher this runs sampling
rounds of the `shapes` preset on the base model (no LoRA, fixed seeds: every teacher sees the
same candidates), and for each branched step compares the teacher's winner and loser (on the
same decoded x̂0 the teacher scored) by the rater's utility, the aesthetic and the alignment.
Agreement = P(truth(winner) > truth(loser)) over pairs where the truth differs (> 1e-4); the
median |truth gap| of the ground-truth teacher's choices is how far apart the candidates are.
`<source>@zero` scores at t = 0 (the step-agnostic way). Prints a table, writes JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer.atomic import write_text  # noqa: E402
from trainer.shapes.truth import aesthetic, alignment, preference_utility  # noqa: E402
from trainer.spo.config import build_config  # noqa: E402

TRUTHS = {"utility": preference_utility, "aesthetic": lambda x, p: aesthetic(x), "alignment": alignment}
DEFAULT_TEACHERS = ["shapes-spm", "shapes-preference@zero", "shapes-aesthetic", "shapes-utility"]


class Choices:
    """Wraps a scorer; per timestep, keeps the ground-truth gaps truth(winner) − truth(loser)
    of its argmax/argmin choice among each group of k candidates: gaps[t][truth name] is a list
    of Tensor[groups] (the claims bench uses it too)."""

    def __init__(self, scorer, k: int, truths: dict = TRUTHS):
        self.scorer, self.k, self.truths = scorer, k, truths
        self.gaps = defaultdict(lambda: defaultdict(list))

    def score(self, images, prompts, timesteps):
        s = self.scorer.score(images, prompts, timesteps)
        t = int(timesteps.view(-1, self.k)[0, 0])
        for name, truth in self.truths.items():
            self.gaps[t][name].append(choice_gaps(s, truth(images.float(), list(prompts)), self.k))
        return s


def choice_gaps(scores: torch.Tensor, truth: torch.Tensor, k: int) -> torch.Tensor:
    """truth(winner) − truth(loser) of the argmax/argmin choice in each group of k consecutive
    candidates: scores, truth Tensor[G·k] -> Tensor[G]."""
    sv, g = scores.float().view(-1, k), truth.float().view(-1, k).to(scores.device)
    return g.gather(1, sv.argmax(1)[:, None])[:, 0] - g.gather(1, sv.argmin(1)[:, None])[:, 0]


def agreement(gaps: list[torch.Tensor]) -> tuple[float, int, float]:
    """(P(gap > 0) where the truth differs, how many differ, median |gap|)."""
    g = torch.cat(gaps)
    decided = g.abs() > 1e-4
    p = float((g[decided] > 0).float().mean()) if decided.any() else float("nan")
    return p, int(decided.sum()), float(g.abs().median())


def measure(teacher: str, rounds: int, seed: int) -> dict:
    from trainer.spo.sources import resolve_model, resolve_prompts, resolve_scorer
    from trainer.spo.train import epoch_generator, sample_epoch

    source, _, at = teacher.partition("@")
    overrides = {"scorer.source": source, "sampling.rounds_per_epoch": rounds, "seed": seed}
    if at:
        overrides["scorer.score_timestep"] = at
    cfg = build_config("shapes", overrides=overrides)
    model, prompts = resolve_model(cfg), resolve_prompts(cfg)
    choices = Choices(resolve_scorer(cfg), cfg.sampling.k)
    t0 = time.time()
    with torch.no_grad():
        data = sample_epoch(model, choices, prompts, cfg, epoch_generator(seed, 0, 0), show=False)
    all_gaps = {n: [g for per_t in choices.gaps.values() for g in per_t[n]] for n in TRUTHS}
    return {
        "teacher": teacher, "seconds": round(time.time() - t0, 1),
        "pair_keep_rate": data.stats["kept"] / max(data.stats["branched"], 1),
        "agreement": {n: dict(zip(("p", "pairs", "median_abs_gap"), agreement(g))) for n, g in all_gaps.items()},
        "agreement_by_t": {str(t): {n: agreement(per_t[n])[0] for n in TRUTHS}
                           for t, per_t in sorted(choices.gaps.items(), reverse=True)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teachers", nargs="+", default=DEFAULT_TEACHERS)
    ap.add_argument("--rounds", type=int, default=2, help="sampling rounds of 16 prompts (k = 4 candidates each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/results/teachers.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = []
    for teacher in args.teachers:
        runs.append(measure(teacher, args.rounds, args.seed))
        write_text(out, json.dumps({"args": vars(args), "runs": runs}, indent=1))  # a kill mid-write keeps the finished teachers
    print("\n| teacher | agreement: utility | aesthetic | alignment | pairs | median utility gap | pair keep rate |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        a = r["agreement"]
        print(f"| {r['teacher']} | {a['utility']['p']:.3f} | {a['aesthetic']['p']:.3f} | {a['alignment']['p']:.3f} | "
              f"{a['utility']['pairs']} | {a['utility']['median_abs_gap']:.4f} | {r['pair_keep_rate']:.2f} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
