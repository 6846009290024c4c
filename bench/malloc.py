"""Time and memory of SPO training with and without `trainer.malloc.keep_freed_memory`.

    python bench/malloc.py                   # one epoch of the ShapesWorld default run, ~3.5 min
    python bench/malloc.py --epochs 2 --repeats 2

Each variant trains in its own process (`trainer.spo.train.train` on the `shapes` preset,
output in a temp dir) and reports its own CPU times and peak memory: wall, user and system
seconds, peak resident memory. Prints a table, writes JSON.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, resource, sys, torch
sys.path.insert(0, {root!r})
from trainer.malloc import keep_freed_memory
from trainer.spo.config import build_config
from trainer.spo.train import train
torch.set_num_threads({threads})
allocator = "kept" if {keep} and keep_freed_memory() else "default"
train(build_config("shapes", overrides={{"train.epochs": {epochs}, "output_dir": {out!r}}}))
r = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"allocator": allocator, "user_s": r.ru_utime, "system_s": r.ru_stime, "peak_rss_kb": r.ru_maxrss}}))
"""


def run(keep: bool, epochs: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        code = CHILD.format(root=str(ROOT), threads=threads, keep=keep, epochs=epochs, out=out)
        t0 = time.time()
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        wall = time.time() - t0
    if done.returncode != 0:
        raise SystemExit(f"training failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    return {"allocator": r["allocator"], "wall_s": round(wall, 1), "user_s": round(r["user_s"], 1),
            "system_s": round(r["system_s"], 1), "peak_rss_mb": round(r["peak_rss_kb"] / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench/results/malloc.json"))
    args = ap.parse_args()
    rows = []
    for _ in range(args.repeats):
        for keep in (False, True):
            rows.append(run(keep, args.epochs, args.threads))
            print(rows[-1], flush=True)
    print(f"\nShapesWorld `shapes` preset, {args.epochs} epoch(s), {args.threads} threads\n")
    print("| allocator | wall s | user s | system s | peak RSS MB |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['allocator']} | {r['wall_s']} | {r['user_s']} | {r['system_s']} | {r['peak_rss_mb']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"epochs": args.epochs, "threads": args.threads, "runs": rows}, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
