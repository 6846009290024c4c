"""Train a step-aware preference model on SPO's own candidates, and measure how well it ranks them.

    python bench/onpolicy_teacher.py --out runs/onpolicy-spm                 # the world's labels
    python bench/onpolicy_teacher.py --labels clean-aesthetic --steps 1000 --out runs/spm-aes
    python -m trainer.spo --scorer.source runs/onpolicy-spm                  # then: does SPO gain?

The SPM of the build learns from generic pairs noised to a random t; SPO asks it to rank k
candidates drawn from one noisy latent, which differ far less. This bench gives a teacher
exactly that distribution:
1. records SPO's candidate groups (k decoded x̂0 per branched step, with t) from the `shapes`
   preset's sampling on the shipped base, no LoRA: --epochs epochs at each of --seeds (train),
   and one epoch at seed 0, the candidates `bench/teachers.py` measures on (eval);
2. labels every pair inside a group — `world`: the world's noisy rater
   (`label_from_utilities`: what a ShapesWorld teacher may learn from); `clean`: the noise-free
   utility; `clean-aesthetic`: the noise-free aesthetic alone (diagnosis only, no rater says it);
3. fine-tunes the shipped SPM (--init) on them with the SPM objective (`preference_loss`);
4. measures, like `bench/teachers.py`, how often its winner beats its loser in the ground truth
   on the eval candidates, overall, by t and among its most confident choices.
Recordings are cached in --cache (minutes each). Prints a table, writes JSON and the SPM.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.teachers import TRUTHS, agreement, choice_gaps  # noqa: E402
from trainer.shapes.truth import aesthetic, label_from_utilities, preference_utility  # noqa: E402

T_BUCKETS = ((600, 1000), (400, 600), (200, 400), (0, 200))


class Recorder:
    """A scorer that keeps what it is asked to score (uint8 images, t, prompts) and answers with
    the rater's utility; with random continuation the trajectories do not depend on its answers."""

    def __init__(self):
        self.images, self.timesteps, self.prompts = [], [], []

    def score(self, images, prompts, timesteps):
        self.images.append(((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
        self.timesteps.append(timesteps.clone())
        self.prompts += list(prompts)
        return 10 * preference_utility(images.float(), list(prompts))


def pixels(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.float() / 127.5 - 1


def record(seed: int, epochs: int, cache: Path) -> dict:
    """Candidate groups of `epochs` sampling epochs: images uint8 [N·k, 3, 64, 64], t [N·k], prompts, k."""
    path = cache / f"candidates_seed{seed}_epochs{epochs}.pt"
    if path.exists():
        return torch.load(path)
    from trainer.spo.config import build_config
    from trainer.spo.sources import resolve_model, resolve_prompts
    from trainer.spo.train import epoch_generator, sample_epoch

    cfg = build_config("shapes", overrides={"scorer.source": "shapes-utility", "seed": seed})
    model, prompts, rec = resolve_model(cfg), resolve_prompts(cfg), Recorder()
    with torch.no_grad():
        for epoch in range(epochs):
            sample_epoch(model, rec, prompts, cfg, epoch_generator(seed, epoch, 0), show=False)
    data = {"images": torch.cat(rec.images), "t": torch.cat(rec.timesteps), "prompts": rec.prompts, "k": cfg.sampling.k}
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


def group_pairs(n_images: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (a, b) of every pair inside each consecutive group of k: two Tensor[N·k(k−1)/2]."""
    combos = torch.tensor(list(itertools.combinations(range(k), 2)))
    base = torch.arange(n_images // k)[:, None] * k
    return (base + combos[None, :, 0]).flatten(), (base + combos[None, :, 1]).flatten()


def labels(data: dict, a: torch.Tensor, b: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """label_0 ∈ {0, 0.5, 1} of each pair (a, b), Tensor[P]."""
    x = pixels(data["images"])
    if kind == "clean-aesthetic":
        u = aesthetic(x) / 10
    else:
        u = preference_utility(x, data["prompts"])
    if kind == "world":
        return label_from_utilities(u[a], u[b], gen)
    return torch.where((u[a] - u[b]).abs() < 0.005, torch.full_like(u[a], 0.5), (u[a] > u[b]).float())


@torch.no_grad()
def measure(spm, data: dict, truths: dict[str, torch.Tensor]) -> dict:
    """Ground-truth agreement of the SPM's argmax/argmin in each group: overall, by t, by confidence.
    truths: name -> Tensor[N·k], the ground truth of every candidate (computed once per data)."""
    spm.eval()
    k, x = data["k"], pixels(data["images"])
    s = torch.cat([spm.score(x[i:i + 256], data["prompts"][i:i + 256], data["t"][i:i + 256])
                   for i in range(0, len(x), 256)])
    gaps = {name: choice_gaps(s, truth, k) for name, truth in truths.items()}
    t = data["t"].view(-1, k)[:, 0]
    sv = s.view(-1, k)
    confidence = sv.max(1).values - sv.min(1).values

    def agree(mask):
        return {n: round(agreement([g[mask]])[0], 3) for n, g in gaps.items()}

    top = confidence >= confidence.quantile(0.8)
    return {"all": agree(torch.ones_like(t, dtype=torch.bool)), "most_confident_fifth": agree(top),
            "by_t": {f"{lo}-{hi}": agree((t >= lo) & (t < hi)) for lo, hi in T_BUCKETS}}


def train(spm, data: dict, kind: str, steps: int, lr: float, batch: int, seed: int, log) -> list[float]:
    from trainer.spm.objective import preference_loss

    gen = torch.Generator().manual_seed(seed)
    a, b = group_pairs(len(data["prompts"]), data["k"])
    label_0 = labels(data, a, b, kind, gen)
    log(f"{len(a)} pairs, {float((label_0 == 0.5).float().mean()):.2f} ties ({kind} labels)")
    spm.requires_grad_(True).train()
    opt = torch.optim.AdamW(spm.parameters(), lr=lr, weight_decay=0.01)
    losses, t0 = [], time.time()
    for step in range(steps):
        idx = torch.randint(len(a), (batch,), generator=gen)
        both = torch.cat([a[idx], b[idx]])
        scores = spm(pixels(data["images"][both]), [data["prompts"][i] for i in both.tolist()], data["t"][both])
        loss = preference_loss(scores[:batch], scores[batch:], label_0[idx], 1 - label_0[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(spm.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 250 == 0 or step + 1 == steps:
            log(f"step {step + 1}/{steps} loss {sum(losses[-250:]) / len(losses[-250:]):.4f} ({time.time() - t0:.0f}s)")
    return losses


def main() -> None:
    from trainer.spm.model import StepAwarePreferenceModel

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", choices=("world", "clean", "clean-aesthetic"), default="world")
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 200], help="sampling seeds of the training candidates")
    ap.add_argument("--epochs", type=int, default=6, help="sampling epochs per seed (2,048 candidates each)")
    ap.add_argument("--init", default=str(ROOT / "trainer/shapes/weights/spm"))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default="runs/onpolicy-cache")
    ap.add_argument("--out", required=True, help="directory for the trained SPM")
    ap.add_argument("--json", default="bench/results/onpolicy_teacher.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    parts = [record(seed, args.epochs, cache) for seed in args.seeds]
    data = {"images": torch.cat([p["images"] for p in parts]), "t": torch.cat([p["t"] for p in parts]),
            "prompts": [q for p in parts for q in p["prompts"]], "k": parts[0]["k"]}
    evals = record(0, 1, cache)
    truths = {name: truth(pixels(evals["images"]), evals["prompts"]) for name, truth in TRUTHS.items()}
    spm = StepAwarePreferenceModel.from_pretrained(args.init)
    before = measure(spm, evals, truths)
    losses = train(spm, data, args.labels, args.steps, args.lr, args.batch, seed=5, log=print)
    after = measure(spm, evals, truths)
    spm.save_pretrained(args.out)
    result = {"args": vars(args), "train_candidates": len(data["prompts"]), "eval_candidates": len(evals["prompts"]),
              "final_loss": sum(losses[-250:]) / len(losses[-250:]), "before": before, "after": after}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print("\n| SPM | candidates | agreement: utility | aesthetic | alignment |\n|---|---|---|---|---|")
    for name, r in (("init", before), (f"trained ({args.labels} labels)", after)):
        for part, a in [("all", r["all"]), ("most confident fifth", r["most_confident_fifth"])] + \
                [(f"t in [{key.replace('-', ', ')})", v) for key, v in r["by_t"].items()]:
            print(f"| {name} | {part} | {a['utility']:.3f} | {a['aesthetic']:.3f} | {a['alignment']:.3f} |")
    print(f"wrote {args.out} and {args.json}")


if __name__ == "__main__":
    main()
