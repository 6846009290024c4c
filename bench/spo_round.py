"""Cost of one SPO round and one training step: spo-studio vs what the reference implementation does.

    python bench/spo_round.py                         # SD-1.5 size, random weights, 256 px, CPU (~5 min on 2 cores, 14 GB)
    python bench/spo_round.py --model shapes --batch 8 --out bench/results/spo_round_shapes.json
    python bench/spo_round.py --model DIR --scorer SPM.bin --family sd15 --batch 4   # GPU when present
    bench/gpu_check.sh                                # 512 px, k = 4, batch 10, fp16 frozen weights, on a GPU

--model sd15-random builds the real SD-1.5 UNet, VAE and text encoder from the shipped configs
with random weights (timing and memory do not depend on the weights); --scorer shapes-spm is the
shipped small SPM (the same for both variants), clip-h-random a random SPM of the released size.
Both variants run in the reference's precision: fp32 on CPU; with --precision fp16/bf16 the frozen
weights in half precision and the LoRA in fp32 (a GPU run).

spo-studio: the continued candidate's scoring forward is reused as the next step's
forward; training runs 2 guided forwards per kept transition (θ with grad, reference =
the same UNet with the adapter off).
reference-style baseline: a fresh forward at every step, 4 guided forwards per transition
(θ and ref for winner and loser) and a deep-copied frozen UNet as the reference.
Each variant runs in its own process so peak memory is its own. Prints a table, writes JSON.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class CountingUNet(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.inner, self.config, self.calls, self.rows = unet, unet.config, 0, 0

    def forward(self, x, *a, **k):
        self.calls += 1
        self.rows += x.shape[0]
        return self.inner(x, *a, **k)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process high-water mark (KiB on Linux)


def reference_style_loss(model, frozen_unet, trainable_unet, batch, cond, uncond, cfg):
    """The reference's training step: θ and a frozen copy, each run separately on winner and loser."""
    from trainer.schedule import ddim_mean_std, gaussian_log_prob
    from trainer.spo.pairs import spo_loss

    s, dev = cfg.sampling, model.device
    c, u = cond.index(batch.prompt_index), uncond.index(batch.prompt_index)
    ts = batch.timesteps.to(dev)
    logps = {}
    for side, start, end in (("w", batch.start_win, batch.win), ("l", batch.start_lose, batch.lose)):
        start, end = start.to(dev, model.dtype), end.to(dev, model.dtype)
        out = model.guided_output(start, ts, c, u, s.guidance_scale, unet=trainable_unet)
        mean, std, _ = ddim_mean_std(model.schedule, out, ts, start, s.num_steps, s.eta)
        logps[side] = gaussian_log_prob(end, mean, std)
        with torch.no_grad():
            out = model.guided_output(start, ts, c, u, s.guidance_scale, unet=frozen_unet)
            mean, std, _ = ddim_mean_std(model.schedule, out, ts, start, s.num_steps, s.eta)
            logps["ref_" + side] = gaussian_log_prob(end, mean, std)
    return spo_loss(logps["w"], logps["l"], logps["ref_w"], logps["ref_l"], cfg.train.beta, cfg.train.clip_eps)[0]


def write_char_tokenizer(path: Path, max_length: int = 77) -> Path:
    """A CLIP tokenizer over single characters (no merges): tokenizes any prompt offline; the ids
    stay below every CLIP vocabulary size, so it drives a random-weight text encoder."""
    path.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
    return path


def random_sd15(resolution: int, device):
    """SD-1.5's UNet, VAE and text encoder at their real sizes (shipped configs), random weights."""
    import tempfile

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from trainer.configs import load_component_config
    from trainer.models import FAMILIES, DiffusionModel
    from trainer.schedule import NoiseSchedule

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(load_component_config("sd15", "unet"))
    vae = AutoencoderKL.from_config(load_component_config("sd15", "vae"))
    text = CLIPTextModel(CLIPTextConfig.from_dict(load_component_config("sd15", "text_encoder")))
    tok = CLIPTokenizer.from_pretrained(str(write_char_tokenizer(Path(tempfile.mkdtemp()) / "tokenizer")))
    schedule = NoiseSchedule.from_scheduler_config(load_component_config("sd15", "scheduler"))
    for m in (unet, vae, text):
        m.to(device).requires_grad_(False).eval()
    return DiffusionModel(FAMILIES["sd15"], unet, vae, [text], [tok], schedule, source="sd15-random", resolution=resolution)


def make_scorer(cfg, args, device):
    if args.scorer == "clip-h-random":
        from trainer.spm.model import StepAwarePreferenceModel
        from trainer.spm.weights import clip_h14_config

        spm = StepAwarePreferenceModel(clip_h14_config(), tokenizer=write_char_tokenizer(Path(args.tmp) / "spm-tok"))
        return spm.to(device=device, dtype=torch.float16 if device.type == "cuda" else torch.float32).eval()
    from trainer.spo.sources import resolve_scorer

    return resolve_scorer(cfg, device=device)


def run_variant(args) -> dict:
    """Measure one variant in this process."""
    from trainer.spo.config import build_config
    from trainer.spo.rollout import spo_round
    from trainer.spo.sources import resolve_model
    from trainer.spo.step import transition_loss
    from trainer.spo.train import DTYPES, add_lora, cast_frozen, upcast_trainable

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    over = {"sampling.batch_size": args.batch, "sampling.threshold": 0.0, "sampling.k": args.k,
            "sampling.num_steps": args.num_steps, "sampling.branch_start": args.branch_start,
            "train.batch_size": args.train_batch, "sampling.micro_batch": args.micro_batch, "scorer.source": "shapes-spm" if args.scorer == "clip-h-random" else args.scorer}
    if args.model not in ("sd15-random",):
        over["model.source"] = args.model
    if args.family:
        over["model.family"] = args.family
    cfg = build_config(args.preset, overrides=over)
    baseline = args.variant == "reference-style"
    cfg.sampling.reuse_forward = not baseline
    model = random_sd15(args.resolution, device) if args.model == "sd15-random" else resolve_model(cfg, device=device)
    if args.precision != "fp32":
        cast_frozen(model, DTYPES[args.precision])
    scorer = make_scorer(cfg, args, device)
    frozen = copy.deepcopy(model.unet) if baseline else None  # the reference keeps a second UNet
    params = add_lora(model, cfg.lora)
    upcast_trainable(params)  # fp32 LoRA (and so fp32 optimizer state), as the reference
    counter = CountingUNet(model.unet)
    base_unet, model.unet = model.unet, counter
    from trainer.shapes import train_captions

    prompts = (train_captions() * 10)[: args.batch] if args.model == "shapes" else ["a red square on a blue background"] * args.batch
    gen = torch.Generator().manual_seed(0)
    if args.warmup:
        spo_round(model, scorer, prompts, cfg.sampling, gen)
    counter.calls = counter.rows = 0
    t0 = time.perf_counter()
    r = spo_round(model, scorer, prompts, cfg.sampling, gen)
    if device.type == "cuda":
        torch.cuda.synchronize()
    round_s = time.perf_counter() - t0
    round_calls, round_rows = counter.calls, counter.rows
    branched_steps = r.stats["branched"] // args.batch

    batch = r.transitions.index(slice(0, cfg.train.batch_size))
    n = len(batch)
    opt = torch.optim.AdamW(params, lr=cfg.train.lr)
    uncond = model.uncond_embeds(len(r.prompts))
    times = []
    for _ in range(args.train_repeats):
        counter.calls = counter.rows = 0
        t0 = time.perf_counter()
        if baseline:
            model.unet = base_unet
            frozen_counter = CountingUNet(frozen)
            loss = reference_style_loss(model, frozen_counter, counter, batch, r.embeds, uncond, cfg)
            rows = counter.rows + frozen_counter.rows
            model.unet = counter
        else:
            # both forwards (θ, and the reference = adapter off) go through the counter
            loss, _ = transition_loss(model, counter, batch, r.embeds, uncond, cfg.sampling.num_steps,
                                      cfg.sampling.guidance_scale, cfg.sampling.eta, cfg.train.beta, cfg.train.clip_eps)
            rows = counter.rows
        loss.backward()
        opt.step()
        opt.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {
        "variant": args.variant,
        "device": str(device),
        "model": args.model,
        "resolution": model.resolution,
        "precision": args.precision,
        "batch_prompts": args.batch,
        "k": cfg.sampling.k,
        "num_steps": cfg.sampling.num_steps,
        "branch_start": cfg.sampling.branch_start,
        "round_seconds": round(round_s, 4),
        "unet_calls_per_round": round_calls,
        "unet_calls_per_branched_step": round((round_calls - cfg.sampling.branch_start) / branched_steps, 3),
        "unet_rows_per_round": round_rows,  # latents through the UNet (a guided call on b latents = 2b rows)
        "train_step_seconds": round(min(times), 4),
        "transitions_per_train_step": n,
        # guided forwards: 2 UNet rows (uncond, cond) per latent
        "unet_forwards_per_transition": rows / (2 * n),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sd15-random", help="sd15-random | shapes | a model directory")
    ap.add_argument("--scorer", default="shapes-spm", help="shapes-spm | clip-h-random | an SPM file")
    ap.add_argument("--family", default="")
    ap.add_argument("--preset", default="sd15")
    ap.add_argument("--resolution", type=int, default=256, help="pixels, for sd15-random")
    ap.add_argument("--batch", type=int, default=1, help="prompts per round")
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--num-steps", type=int, default=10)
    ap.add_argument("--branch-start", type=int, default=6)
    ap.add_argument("--train-batch", type=int, default=2, help="transitions per training step")
    ap.add_argument("--train-repeats", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=0, help="1 = an untimed round first")
    ap.add_argument("--micro-batch", type=int, default=0, help="candidates per UNet/VAE/scorer call when scoring (0 = all)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"], help="frozen weights' dtype")
    ap.add_argument("--out", default="bench/results/spo_round.json")
    ap.add_argument("--variant", choices=["spo-studio", "reference-style"], help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    rows = []
    for variant in ("spo-studio", "reference-style"):
        cmd = [sys.executable, __file__, "--variant", variant] + [
            a for key in ("model", "scorer", "preset", "resolution", "batch", "k", "num_steps", "branch_start", "train_batch",
                          "train_repeats", "warmup", "precision", "micro_batch")
            for a in (f"--{key.replace('_', '-')}", str(getattr(args, key)))
        ] + (["--family", args.family] if args.family else []) + ["--tmp", tempfile.mkdtemp()]
        res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        if res.returncode != 0:  # keep what finished (a killed variant leaves no stderr: say its exit status)
            Path(args.out).with_suffix(".partial.json").write_text(json.dumps({"rows": rows, "failed": variant, "returncode": res.returncode}, indent=1))
            sys.exit(f"{variant} failed with exit status {res.returncode} (negative: killed by that signal, e.g. -9 when out of memory):\n{res.stderr[-2000:]}")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    ours, ref = rows
    ratios = {
        "round_time": ref["round_seconds"] / ours["round_seconds"],
        "round_unet_calls": ref["unet_calls_per_round"] / ours["unet_calls_per_round"],
        "round_unet_rows": ref["unet_rows_per_round"] / ours["unet_rows_per_round"],
        "train_step_time": ref["train_step_seconds"] / ours["train_step_seconds"],
        "train_forwards_per_transition_batch": ref["unet_forwards_per_transition"] / ours["unet_forwards_per_transition"],
        "peak_memory": ref["peak_memory_mb"] / ours["peak_memory_mb"],
    }
    cols = ["variant", "round_seconds", "unet_calls_per_round", "unet_rows_per_round", "unet_calls_per_branched_step", "train_step_seconds",
            "unet_forwards_per_transition", "peak_memory_mb"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    print("\nreference-style / spo-studio: " + ", ".join(f"{k} ×{v:.2f}" for k, v in ratios.items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python bench/spo_round.py " + " ".join(sys.argv[1:]), "rows": rows, "ratios": ratios}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
