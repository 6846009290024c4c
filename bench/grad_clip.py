"""Gradient clipping on ShapesWorld: the `shapes` preset with the LoRA gradient clipped at 1.0
against never clipped (the reference's effective behaviour), same seed, everything else equal.

    OMP_NUM_THREADS=2 python bench/grad_clip.py              # both arms, ~2 × the default run
    python bench/grad_clip.py --limits 0                      # only the unclipped arm: the clipped one
                                                              # (1.0) is the default run itself

Records per run: the pre-clip gradient norms (per-epoch max and median), the share of optimizer
steps whose norm exceeded 1.0 (the steps clipping changes), and the ground-truth before/after
table on the held-out captions. Prints a table, writes bench/results/grad_clip.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run(max_grad_norm: float, epochs: int, seed: int, eval_seeds: int, out: Path) -> dict:
    from trainer.spo.config import build_config
    from trainer.spo.report import shapes_report
    from trainer.spo.train import train

    cfg = build_config("shapes", overrides={
        "output_dir": str(out), "train.max_grad_norm": max_grad_norm, "train.epochs": epochs, "seed": seed,
        "checkpoint_every": 0,
    })
    t0 = time.time()
    result = train(cfg)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    table = shapes_report(result["model"], out, seeds=eval_seeds)["table"]
    m = table["metrics"]
    return {
        "max_grad_norm": max_grad_norm,
        "seconds": round(time.time() - t0, 1),
        "grad_norm_max_per_epoch": [round(e["grad_norm"], 4) for e in log],
        "grad_norm_median_per_epoch": [round(e["grad_norm_median"], 4) for e in log],
        "steps": sum(e["steps"] for e in log),
        "aesthetic_change": m["aesthetic"]["paired_change"],
        "alignment_change": m["alignment"]["paired_change"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=4, help="fixed seeds per held-out caption in the evaluation")
    ap.add_argument("--limits", type=float, nargs="+", default=[1.0, 0.0], help="max_grad_norm of each arm (0 = off)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "grad_clip.json"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for limit in args.limits:
            rows.append(run(limit, args.epochs, args.seed, args.seeds, Path(tmp) / f"clip-{limit}"))
    print("| max_grad_norm | steps | grad norm max / median per epoch | aesthetic change | alignment change |")
    print("|---|---|---|---|---|")
    for r in rows:
        norms = ", ".join(f"{a:.3g}/{b:.3g}" for a, b in zip(r["grad_norm_max_per_epoch"], r["grad_norm_median_per_epoch"]))
        a, al = r["aesthetic_change"], r["alignment_change"]
        print(f"| {r['max_grad_norm'] or 'off'} | {r['steps']} | {norms} | {a[0]:+.3f} [{a[1]:+.3f}, {a[2]:+.3f}] "
              f"| {al[0]:+.3f} [{al[1]:+.3f}, {al[2]:+.3f}] |")
    record = {"command": "python bench/grad_clip.py " + " ".join(sys.argv[1:]), "epochs": args.epochs, "seed": args.seed,
              "eval_seeds": args.seeds, "runs": rows}
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
