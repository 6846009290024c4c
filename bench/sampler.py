"""Guided sampling strategies vs plain sampling and best-of-k, at matched model evaluations and wall time.

    OMP_NUM_THREADS=1 python -m bench.sampler  # ShapesWorld, shipped model and SPM, CPU (~25 min)
    python -m bench.sampler --quick            # a few minutes: fewer captions, seeds and methods

Per image: stochastic DDIM (η = 1) over the model's 20 DDIM timesteps with CFG, every strategy
run through `trainer.spo.strategies.sample` (the code both hosts run). Each guided strategy is
run twice: judged by the ground-truth aesthetic of the decoded x̂0 (the oracle: does the
algorithm work when the judge is right?) and by the shipped SPM at the state's timestep (what
a user gets). A sweep adds Gaussian noise to the oracle to find how accurate a judge must be.

Quality is the ShapesWorld ground truth (aesthetic 0–10, alignment 0–1) of the final images,
on the held-out captions × seeds (the same start latent per caption and seed for every method).
Intervals are 95% normal intervals over images; "Δ vs best-of-k" is the paired difference per
(caption, seed) to best-of-k with the same judge at equal model evaluations (same k), and at
equal modelled wall time (the best-of-k whose modelled time is the first at or above the
strategy's; modelled = counts × unit costs measured in this run, reported in the profile table).
Best-of-k for k < K are the first k particles of one best-of-K run (particles are exchangeable).

Writes bench/results/sampler.json and a PNG plot of score against compute.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from trainer.spo.guided_sampler import branched_steps
from trainer.spo.strategies import StrategyConfig, resampling_steps, sample, strategy_cost


@dataclass
class Method:
    name: str
    judge: str  # "none" | "oracle" | "spm" | "oracle+noise<s>"
    config: StrategyConfig
    ablation: bool = False  # an fk variant beside the main curve


@dataclass
class Result:
    method: str
    strategy: str
    judge: str
    k: int
    images: int
    model_evals_per_image: float
    scorer_images_per_image: float
    seconds_per_image_measured: float | None
    seconds_per_image_modelled: float
    aesthetic_mean: float
    aesthetic_ci95: float
    alignment_mean: float
    alignment_ci95: float
    utility_mean: float  # the generic rater's utility the SPM was trained to predict (0.6·aesthetic/10 + 0.4·alignment)
    utility_ci95: float
    aesthetic_per_seed: list[float]
    judge_pairwise_accuracy: float | None = None  # vs the oracle on this method's own judged candidates
    settings: dict = field(default_factory=dict)
    vs_best_of_k_evals: dict | None = None
    vs_best_of_k_time: dict | None = None
    vs_plain: dict | None = None  # paired Δ to particle 0 of the best-of-K run (the same start, no judge)
    aesthetic_per_image: list[float] = field(default_factory=list)  # job order: seed-major over the captions


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


def pairwise_agreement(judge: torch.Tensor, oracle: torch.Tensor) -> tuple[int, int]:
    """(agreeing, total) ordered pairs within each sample. judge, oracle: Tensor[k, B]; pairs
    whose oracle scores tie are left out."""
    dj = judge[:, None, :] - judge[None, :, :]
    do = oracle[:, None, :] - oracle[None, :, :]
    upper = torch.triu(torch.ones(judge.shape[0], judge.shape[0], dtype=torch.bool), 1)[:, :, None]
    valid = upper & (do != 0)
    return int(((dj * do > 0) & valid).sum()), int(valid.sum())


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.sampler", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="diffusers pipeline directory (default: the shipped ShapesWorld pipeline)")
    p.add_argument("--spm", help="SPM folder or file (default: the shipped ShapesWorld SPM)")
    p.add_argument("--captions", type=int, default=16, help="held-out captions to use (default all 16)")
    p.add_argument("--seeds", type=int, default=4, help="seeds per caption (default 4)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    p.add_argument("--cfg", type=float, default=5.0, help="classifier-free guidance scale (default 5.0)")
    p.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8], help="best-of-k: k (default 2 4 8)")
    p.add_argument("--fk-ks", type=int, nargs="+", default=[2, 4], help="fk: particles (default 2 4)")
    p.add_argument("--fk-window", type=float, nargs=2, default=(0.4, 0.7), metavar=("START", "END"),
                   help="fk: resample inside this fraction of the steps (default 0.4 0.7: the oracle on x̂0 "
                        "predicts the final aesthetic from about step 8 of 20 on, and copies made late barely diverge)")
    p.add_argument("--fk-every", type=int, default=4, help="fk: resample every N steps of the window (default 4: "
                                                           "steps 8 and 12 of 20)")
    p.add_argument("--potential", default="difference", help="fk potential of the main curve (default difference)")
    p.add_argument("--lam-oracle", type=float, default=16.0, help="fk λ with the oracle (aesthetic units; default 16)")
    p.add_argument("--lam-spm", type=float, default=16.0, help="fk λ with the SPM (SPM score units; default 16)")
    p.add_argument("--greedy-k", type=int, default=4, help="greedy candidates per judged step (default 4)")
    p.add_argument("--greedy-every", type=int, default=4, help="greedy: judge every N steps (default 4)")
    p.add_argument("--ablate", nargs="*", default=["max:16", "difference:4"],
                   help="other fk settings POTENTIAL:LAMBDA at k = 4 with the SPM judge (default max:16 difference:4)")
    p.add_argument("--noise", type=float, nargs="*", default=[0.3, 1.0],
                   help="oracle noise levels (aesthetic units) for the judge-accuracy sweep at k = 4")
    p.add_argument("--batch", type=int, default=32, help="images sampled together (default 32)")
    p.add_argument("--quick", action="store_true", help="4 captions × 3 seeds, k = 2 4, no ablation, one noise level")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--out", default="bench/results/sampler.json", help="JSON result path")
    p.add_argument("--plot", default="bench/results/sampler.png", help="PNG plot path ('' for none)")
    args = p.parse_args(argv)
    if args.quick:
        args.captions, args.seeds, args.ks, args.fk_ks, args.ablate, args.noise = 4, 3, [2, 4], [4], [], args.noise[:1]
    return args


def methods(args) -> list[Method]:
    """Every directly-run method (best-of-k is derived from the best-of-max(ks) run)."""
    fk = StrategyConfig(name="fk", window=tuple(args.fk_window), every=args.fk_every, potential=args.potential)
    out = [Method("plain", "none", StrategyConfig(name="plain")),
           Method(f"best-of-{max(args.ks)}", "oracle", StrategyConfig(name="best-of-k", k=max(args.ks)))]
    for judge, lam in (("oracle", args.lam_oracle), ("spm", args.lam_spm)):
        out += [Method(f"fk-{args.potential}-k{k}", judge, fk.replace(k=k, lam=lam)) for k in args.fk_ks]
        out.append(Method(f"greedy-k{args.greedy_k}-every{args.greedy_every}", judge,
                          StrategyConfig(name="greedy", k=args.greedy_k, every=args.greedy_every, window=(0.2, 1.0))))
    for spec in args.ablate:
        pot, lam = spec.split(":") if ":" in spec else (spec, args.lam_spm)
        out.append(Method(f"fk-{pot}-k4-lam{float(lam):g}", "spm", fk.replace(k=4, lam=float(lam), potential=pot),
                          ablation=True))
    out += [Method("fk-" + args.potential + "-k4", f"oracle+noise{s:g}", fk.replace(k=4, lam=args.lam_oracle))
            for s in args.noise]
    return out


PROBE_STEPS = (4, 8, 12, 16)  # where the best-of-K run records every particle's judged x̂0 (not counted in its cost)


class Bench:
    """The model, the judges, the jobs and the unit-cost profile shared by every run."""

    def __init__(self, args):
        from trainer.models import load_model
        from trainer.shapes import truth
        from trainer.shapes.shipped import check_weights, weights_dir
        from trainer.shapes.world import IMAGE_SIZE, heldout_captions
        from trainer.spm.weights import load_spm
        from trainer.spo.guided_sampler import ddim_sigmas

        self.args, self.truth, self.size = args, truth, IMAGE_SIZE
        self.model = load_model(args.model or check_weights(), device=args.device)
        self.spm = load_spm(args.spm or weights_dir("spm"), device=args.device)
        pool = heldout_captions()
        caps = [pool[round(i * len(pool) / args.captions)] for i in range(min(args.captions, len(pool)))]
        self.jobs = [(ci, c, s) for s in range(args.seeds) for ci, c in enumerate(caps)]  # seed-major
        self.sigmas = ddim_sigmas(self.model.schedule, args.steps).to(args.device)
        # unit costs (seconds, summed over runs): model per latent row, decode per image, judges per image
        self.clock = {"model": [0.0, 0], "decode": [0.0, 0], "oracle": [0.0, 0], "spm": [0.0, 0]}

    def timed(self, key, fn, rows):
        start = time.perf_counter()
        out = fn()
        self.clock[key][0] += time.perf_counter() - start
        self.clock[key][1] += rows
        return out

    def unit(self, key) -> float:
        seconds, rows = self.clock[key]
        return seconds / max(rows, 1)

    def decode(self, latents) -> torch.Tensor:
        """VAE decode in chunks of 32 (this small VAE is fastest per image there on a CPU)."""
        return torch.cat([self.model.decode(c.to(self.model.dtype)).float() for c in latents.split(32)])

    def oracle(self, images) -> torch.Tensor:
        return self.truth.aesthetic(to_world_size(images.float(), self.size)).double().cpu()

    def judge_scores(self, judge: str, images, prompts, t, noise_gen) -> torch.Tensor:
        from trainer.scoring import score_batch

        if judge == "spm":
            return self.timed("spm", lambda: score_batch(self.spm, images, prompts, t, chunk=64).double(), len(images))
        scores = self.timed("oracle", lambda: self.oracle(images), len(images))
        if judge.startswith("oracle+noise"):
            s = float(judge[len("oracle+noise"):])
            scores = scores + s * torch.randn(len(scores), generator=noise_gen, dtype=torch.float64)
        return scores

    def run(self, method: Method):
        """Final images [N, 3, H, W], per-job lists, counts, measured seconds and judge agreement."""
        a, model = self.args, self.model
        from trainer.spo.guided_sampler import model_denoiser

        from trainer.scoring import score_batch
        from trainer.spo.guided_sampler import sigma_to_timestep

        images, evals, scored, agree, pairs, finals = [], 0, 0, 0, 0, []
        probes: dict[int, list] = {}  # best-of-k: step -> per chunk (t, oracle [K, B], SPM [K, B]) of every particle
        start = time.perf_counter()
        excluded = 0.0  # time spent on measurement only (the oracle beside the SPM, final-particle decodes)
        for c0 in range(0, len(self.jobs), a.batch):
            chunk = self.jobs[c0 : c0 + a.batch]
            prompts = [c for _, c, _ in chunk]
            gens = [torch.Generator().manual_seed(100_003 * s + ci) for ci, _, s in chunk]
            x = torch.stack([torch.randn(model.latent_shape, generator=g) for g in gens]).to(a.device) * float(self.sigmas[0])
            den = model_denoiser(model, model.encode_prompts(prompts), model.uncond_embeds(len(prompts)), a.cfg)
            noise_gen = torch.Generator().manual_seed(7919 + c0)
            judge_gen = torch.Generator().manual_seed(31337 + c0)
            B = len(chunk)

            def denoise(xs, sig):
                nonlocal excluded
                x0 = self.timed("model", lambda: den(xs, sig), xs.shape[0])
                if method.config.name == "best-of-k" and xs.shape[0] > B:  # probe the particles' x̂0
                    i = int((self.sigmas.to(sig.device) - sig[0]).abs().argmin())
                    if i in PROBE_STEPS:
                        m = time.perf_counter()
                        reps = xs.shape[0] // B
                        imgs = self.decode(x0)
                        t = sigma_to_timestep(sig, self.model.schedule)
                        spm = score_batch(self.spm, imgs, prompts * reps, t, chunk=64).double().reshape(reps, B)
                        probes.setdefault(i, []).append((int(t[0]), self.oracle(imgs).reshape(reps, B), spm))
                        excluded += time.perf_counter() - m
                return x0

            def score_x0(x0, t):
                nonlocal agree, pairs, excluded
                imgs = self.timed("decode", lambda: self.decode(x0), x0.shape[0])
                reps = x0.shape[0] // B
                s = self.judge_scores(method.judge, imgs, prompts * reps, t, judge_gen)
                if method.judge != "oracle" or int(t.max()) == 0:
                    m = time.perf_counter()
                    if method.judge != "oracle":
                        ok, tot = pairwise_agreement(s.reshape(reps, B), self.oracle(imgs).reshape(reps, B))
                        agree, pairs = agree + ok, pairs + tot
                    if int(t.max()) == 0 and method.config.name == "best-of-k":
                        finals.append(imgs.cpu().reshape(reps, B, *imgs.shape[1:]))
                    excluded += time.perf_counter() - m
                return s

            trace = sample(method.config, denoise, x, self.sigmas, score_x0=score_x0,
                           noise=lambda s0, s1: torch.randn(x.shape, generator=noise_gen).to(x.device),
                           generator=judge_gen)
            evals += trace.model_evals * B
            scored += trace.scorer_images * B
            x_vp = trace.x / (1 + self.sigmas[-1] ** 2).sqrt()
            images.append(self.timed("decode", lambda: self.decode(x_vp).cpu(), B))
        seconds = time.perf_counter() - start - excluded
        n = len(self.jobs)
        self.probes = {i: (v[0][0], torch.cat([o for _, o, _ in v], 1), torch.cat([p for _, _, p in v], 1))
                       for i, v in probes.items()}
        return (torch.cat(images), evals / n, scored / n, seconds / n, (agree / pairs if pairs else None),
                torch.cat(finals, dim=1) if finals else None)

    def modelled_seconds(self, evals: float, scored: float, judge: str) -> float:
        """Per-image wall time from the measured unit costs: evaluations, scored decodes, judge, final decode."""
        j = 0.0 if judge == "none" else self.unit("spm" if judge == "spm" else "oracle")
        return evals * self.unit("model") + scored * (self.unit("decode") + j) + self.unit("decode")

    def result(self, name, strategy, judge, k, images, evals, scored, secs, accuracy, settings) -> Result:
        world = to_world_size(images, self.size)
        aes = self.truth.aesthetic(world).double()
        ali = self.truth.alignment(world, [c for _, c, _ in self.jobs]).double()
        a_mean, a_ci = mean_ci95(aes)
        l_mean, l_ci = mean_ci95(ali)
        u_mean, u_ci = mean_ci95(0.6 * aes / 10 + 0.4 * ali)
        per_seed = [float(aes[i * len(aes) // self.args.seeds:(i + 1) * len(aes) // self.args.seeds].mean())
                    for i in range(self.args.seeds)]
        r = Result(name, strategy, judge, k, len(self.jobs), evals, scored, secs, 0.0, a_mean, a_ci, l_mean, l_ci,
                   u_mean, u_ci, per_seed, accuracy, settings)
        r._aesthetic = aes  # per job, for paired differences
        r.aesthetic_per_image = [round(float(v), 4) for v in aes]
        return r


def best_of_k_results(bench: Bench, finals: torch.Tensor, judges: list[str], ks: list[int]) -> list[Result]:
    """best-of-k for every k and judge from the K final particles [K, N, 3, H, W] of one run."""
    prompts = [c for _, c, _ in bench.jobs]
    K, N = finals.shape[:2]
    flat = finals.reshape(K * N, *finals.shape[2:])
    out = []
    for judge in judges:
        gen = torch.Generator().manual_seed(4242)
        t0 = torch.zeros(K * N, dtype=torch.long)
        if judge == "spm":
            from trainer.scoring import score_batch

            scores = score_batch(bench.spm, flat, prompts * K, t0, chunk=64).double().reshape(K, N)
        else:
            scores = bench.judge_scores(judge, flat, prompts * K, t0, gen).reshape(K, N)
        oracle = bench.oracle(flat).reshape(K, N)
        for k in [1] + [k for k in ks if k > 1]:
            pick = scores[:k].argmax(dim=0)
            imgs = finals[pick, torch.arange(N)]
            ok, tot = pairwise_agreement(scores[:k], oracle[:k]) if k > 1 else (0, 0)
            cost = strategy_cost(StrategyConfig(name="best-of-k", k=max(k, 2)), bench.sigmas)
            evals = cost.model_evals if k > 1 else bench.args.steps
            scored = k if k > 1 else 0
            name = "plain (particle 0)" if k == 1 else f"best-of-{k}"
            out.append(bench.result(name, "best-of-k", judge, k, imgs, evals, scored, None,
                                    (ok / tot) if tot else None, {"k": k}))
    return out


def step_accuracy(bench: Bench, finals: torch.Tensor) -> list[dict]:
    """How well each judge, at each probed step, orders the K particles of a job by their FINAL aesthetic:
    pairwise accuracy of the oracle on x̂0, of the SPM on x̂0 at the step's timestep, and of the SPM
    against the oracle on the same x̂0. finals: [K, N, 3, H, W]."""
    K, N = finals.shape[:2]
    final = bench.oracle(finals.reshape(K * N, *finals.shape[2:])).reshape(K, N)
    prompts = [c for _, c, _ in bench.jobs]
    from trainer.scoring import score_batch

    spm0 = score_batch(bench.spm, finals.reshape(K * N, *finals.shape[2:]), prompts * K, 0, chunk=64).double().reshape(K, N)
    rows = []
    for i, (t, oracle, spm) in sorted(bench.probes.items()) + [(len(bench.sigmas) - 1, (0, final, spm0))]:
        acc = {name: (lambda ok_tot: ok_tot[0] / max(ok_tot[1], 1))(pairwise_agreement(a, b))
               for name, (a, b) in {"oracle_vs_final": (oracle, final), "spm_vs_final": (spm, final),
                                    "spm_vs_oracle": (spm, oracle)}.items()}
        rows.append({"step": i, "timestep": t, **acc})
    return rows


def paired(a: Result, b: Result) -> dict:
    d = a._aesthetic - b._aesthetic
    mean, ci = mean_ci95(d)
    return {"baseline": b.method, "baseline_k": b.k, "diff": mean, "ci95": ci, "excludes_zero": abs(mean) > ci}


def compare(results: list[Result], bench: Bench) -> None:
    """Fill each guided result's paired Δ to best-of-k with the same judge, at equal evaluations and time."""
    for r in results:
        r.seconds_per_image_modelled = bench.modelled_seconds(
            r.model_evals_per_image, r.scorer_images_per_image, r.judge)
    p0 = [b for b in results if b.strategy == "best-of-k" and b.k == 1]
    for r in results:
        if r.strategy != "plain" and not (r.strategy == "best-of-k" and r.k == 1) and p0:
            r.vs_plain = paired(r, p0[0])
    for r in results:
        if r.strategy in ("plain", "best-of-k"):
            continue
        judge = r.judge
        boks = sorted([b for b in results if b.strategy == "best-of-k" and b.judge == judge],
                      key=lambda b: b.model_evals_per_image)
        if not boks:
            continue
        same_k = [b for b in boks if b.k == r.k]
        if r.strategy == "fk" and same_k:
            r.vs_best_of_k_evals = paired(r, same_k[0])
        else:  # greedy: the best-of-k at or above its evaluations
            above = [b for b in boks if b.model_evals_per_image >= r.model_evals_per_image] or boks[-1:]
            r.vs_best_of_k_evals = paired(r, above[0])
        above = [b for b in boks if b.seconds_per_image_modelled >= r.seconds_per_image_modelled] or boks[-1:]
        r.vs_best_of_k_time = paired(r, above[0])
        r.vs_best_of_k_time["time_matched"] = above[0].seconds_per_image_modelled >= r.seconds_per_image_modelled


def run(args) -> tuple[list[Result], dict]:
    bench = Bench(args)
    results: list[Result] = []
    judges_seen = ["oracle", "spm"] + [f"oracle+noise{s:g}" for s in args.noise]
    for m in methods(args):
        t0 = time.perf_counter()
        imgs, evals, scored, secs, acc, finals = bench.run(m)
        print(f"  {m.name:<22} {m.judge:<16} {time.perf_counter() - t0:6.1f} s", file=sys.stderr, flush=True)
        if m.config.name == "best-of-k":
            results += best_of_k_results(bench, finals, judges_seen, args.ks)
            bench.step_accuracy = step_accuracy(bench, finals)
            continue
        settings = {f: getattr(m.config, f) for f in ("k", "window", "every", "potential", "lam")}
        settings["ablation"] = m.ablation
        settings["judged_steps"] = ([i for i, b in enumerate(branched_steps(bench.sigmas, m.config.window, m.config.every)) if b]
                                    if m.config.name == "greedy" else resampling_steps(m.config, bench.sigmas))
        results.append(bench.result(m.name, m.config.name, m.judge, m.config.k if m.config.name != "plain" else 1,
                                    imgs, evals, scored, secs, acc, settings))
    compare(results, bench)
    profile = {key: {"seconds": s, "rows": n, "seconds_per_row": s / max(n, 1)} for key, (s, n) in bench.clock.items()}
    profile["step_accuracy"] = getattr(bench, "step_accuracy", [])
    # cost only (not run): the greedy default before judge-every existed, for the profile table
    today = strategy_cost(StrategyConfig(name="greedy", k=args.greedy_k, every=1, window=(0.2, 1.0)), bench.sigmas)
    profile["greedy_every_step"] = {"model_evals": today.model_evals, "scorer_images": today.scorer_images,
                                    "seconds_modelled": bench.modelled_seconds(today.model_evals, today.scorer_images, "spm")}
    return results, profile


def profile_table(results: list[Result], profile: dict) -> str:
    """Where the time goes, per image: model evaluations, decodes of scored images, the judge, the final decode."""
    u = {k: v["seconds_per_row"] for k, v in profile.items() if isinstance(v, dict) and "seconds_per_row" in v}
    head = f"{'method':<22} {'judge':<10} {'model s':>8} {'decode s':>9} {'judge s':>8} {'total s':>8} {'measured':>9}"
    lines = ["unit costs (s): " + ", ".join(f"{k} {v * 1000:.2f} ms/row" for k, v in u.items()), head, "-" * len(head)]
    for r in results:
        if r.judge not in ("none", "spm") or r.strategy == "best-of-k" and r.k == 1:
            continue
        j = 0.0 if r.judge == "none" else u["spm"]
        model = r.model_evals_per_image * u["model"]
        decode = (r.scorer_images_per_image + 1) * u["decode"]
        judge = r.scorer_images_per_image * j
        measured = "" if r.seconds_per_image_measured is None else f"{r.seconds_per_image_measured:.3f}"
        lines.append(f"{r.method:<22} {r.judge:<10} {model:>8.3f} {decode:>9.3f} {judge:>8.3f} "
                     f"{model + decode + judge:>8.3f} {measured:>9}")
    today = profile.get("greedy_every_step")
    if today:
        e, sc = today["model_evals"], today["scorer_images"]
        lines.append(f"{'greedy every step':<22} {'spm':<10} {e * u['model']:>8.3f} {(sc + 1) * u['decode']:>9.3f} "
                     f"{sc * u['spm']:>8.3f} {today['seconds_modelled']:>8.3f} {'(not run)':>9}")
    return "\n".join(lines)


def accuracy_table(rows: list[dict]) -> str:
    """Pairwise accuracy, on the best-of-K run's own particles, of each judge at each step."""
    head = f"{'step':>4} {'t':>4} {'oracle vs final':>16} {'SPM vs final':>13} {'SPM vs oracle':>14}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['step']:>4} {r['timestep']:>4} {r['oracle_vs_final']:>16.3f} {r['spm_vs_final']:>13.3f} "
                     f"{r['spm_vs_oracle']:>14.3f}")
    return "\n".join(lines)


def table(results: list[Result]) -> str:
    head = (f"{'method':<22} {'judge':<16} {'evals':>6} {'scored':>6} {'s/img':>6} {'aesthetic':>16} "
            f"{'alignment':>14} {'acc':>5} {'Δ plain':>15} {'Δ bok (evals)':>16} {'Δ bok (time)':>16}")
    lines = [head, "-" * len(head)]
    for r in results:
        def d(c):
            return "" if c is None else f"{c['diff']:+.3f}±{c['ci95']:.3f}"
        acc = "" if r.judge_pairwise_accuracy is None else f"{r.judge_pairwise_accuracy:.2f}"
        lines.append(f"{r.method:<22} {r.judge:<16} {r.model_evals_per_image:>6.0f} {r.scorer_images_per_image:>6.0f} "
                     f"{r.seconds_per_image_modelled:>6.2f} {r.aesthetic_mean:>8.3f} ±{r.aesthetic_ci95:<6.3f} "
                     f"{r.alignment_mean:>6.3f} ±{r.alignment_ci95:<6.3f} {acc:>5} {d(r.vs_plain):>15} {d(r.vs_best_of_k_evals):>16} "
                     f"{d(r.vs_best_of_k_time):>16}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if min(args.ks) < 2 or args.greedy_k < 2 or args.greedy_every < 1 or args.fk_every < 1:
        print("bench.sampler: --ks and --greedy-k must be at least 2, --fk-every and --greedy-every at least 1",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        results, profile = run(args)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"bench.sampler: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(table(results))
    print()
    print(profile_table(results, profile))
    print()
    print(accuracy_table(profile["step_accuracy"]))
    from trainer.atomic import write_text

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"settings": vars(args), "wall_seconds": time.perf_counter() - start, "profile": profile,
               "results": [asdict(r) for r in results]}
    write_text(out, json.dumps(payload, indent=2, default=str))
    print(f"wrote {out}")
    if args.plot:
        from bench.sampler_plot import plot

        plot(payload, Path(args.plot))
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
