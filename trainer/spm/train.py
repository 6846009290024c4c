"""Training an SPM on Pick-a-Pic-layout pairs (spec §4): the config, presets and the loop.

Per pair: t ~ U[0, T); both images VAE-encoded and noised with the same noise; x̂0 from the
frozen base UNet with CFG; decoded; both scored at t by the SPM; label-weighted two-way
cross-entropy (`objective.preference_loss`). AdamW with linear warm-up, gradient clipping,
`accelerate` for devices, mixed precision and multi-process data parallelism. Checkpoints
are written to a temporary directory and renamed into place, so `--resume` always finds a
complete one.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .errors import SPMError
from .data import PairCollate, open_pairs
from .denoise import noised_pair_images
from .evaluate import DEFAULT_BUCKETS, accuracy_by_timestep, format_accuracy_table, write_report
from .objective import pair_correct, preference_loss


@dataclass
class SPMTrainConfig:
    """Everything a run needs; presets fill in the hyper-parameters, flags override them.

    base_model: diffusers pipeline dir, hub id or single-file checkpoint (trainer.models.load_model).
    init: what the SPM starts from: a transformers CLIPModel dir (PickScore, ShapesWorld's CLIP),
        an SPM dir of our format, or a released SPM file.
    data / eval_data: Pick-a-Pic-layout dir or `datasets` name; without eval_data, `holdout`
        pairs (a fraction < 1 or a count) of data are kept aside for evaluation.
    noise: False trains on the clean images (no VAE/UNet; a PickScore-style CLIP, t = 0).
    """

    base_model: str = field(default="", metadata={"help": "frozen diffusion model giving x̂0: diffusers dir, hub id or .safetensors"})
    init: str = field(default="", metadata={"help": "starting point: CLIPModel dir (PickScore), SPM dir, or released SPM file"})
    data: str = field(default="", metadata={"help": "training pairs: Pick-a-Pic-layout dir (metadata.jsonl) or a datasets name"})
    out: str = field(default="spm-out", metadata={"help": "output dir: spm/, eval.json, log.jsonl, checkpoints/"})
    eval_data: str = field(default="", metadata={"help": "held-out pairs; empty: keep --holdout of --data aside"})
    split: str = field(default="train", metadata={"help": "datasets split of --data"})
    eval_split: str = field(default="validation", metadata={"help": "datasets split of --eval-data"})
    holdout: float = field(default=0.05, metadata={"help": "held-out share of --data when no --eval-data (< 1: fraction, else count)"})
    family: str = field(default="auto", metadata={"help": "base model family: auto, sd15, sdxl, shapes (recorded in the SPM)"})
    step_aware: bool = field(default=True, metadata={"help": "false: train the step-agnostic variant (timestep ignored)"})
    noise: bool = field(default=True, metadata={"help": "false: score clean images, no base model (PickScore-style training)"})
    lr: float = field(default=3e-6, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.3, metadata={"help": "AdamW weight decay"})
    adam_betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "AdamW betas"})
    warmup_steps: int = field(default=500, metadata={"help": "linear learning-rate warm-up, optimizer steps"})
    max_steps: int = field(default=8000, metadata={"help": "optimizer steps in all"})
    batch_size: int = field(default=16, metadata={"help": "pairs per process and micro-batch"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "clip the global gradient norm to this (0: off)"})
    guidance_scale: float = field(default=5.0, metadata={"help": "CFG scale of the base model's x̂0"})
    max_timestep: int = field(default=1000, metadata={"help": "t is drawn from U[0, max_timestep)"})
    mixed_precision: str = field(default="fp16", metadata={"help": "no, fp16 (GPU only; CPU falls back to no) or bf16"})
    seed: int = field(default=0, metadata={"help": "seeds data order, held-out split, t and noise"})
    num_workers: int = field(default=2, metadata={"help": "DataLoader worker processes"})
    log_every: int = field(default=10, metadata={"help": "steps between log.jsonl records"})
    save_every: int = field(default=500, metadata={"help": "steps between checkpoints (0: none)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "newest checkpoints kept"})
    eval_every: int = field(default=0, metadata={"help": "steps between held-out evaluations (0: before and after only)"})
    eval_timesteps: tuple[int, ...] = field(default=DEFAULT_BUCKETS, metadata={"help": "timestep buckets of the accuracy table"})
    eval_batch_size: int = field(default=8, metadata={"help": "pairs per evaluation batch"})
    eval_max_pairs: int = field(default=500, metadata={"help": "held-out pairs evaluated at most"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in --out"})
    progress: bool = field(default=True, metadata={"help": "tqdm progress bars"})

    def validate(self) -> None:
        """One-line errors for settings that cannot work, named by their flag."""
        if not self.init:
            raise SPMError("--init is required: a CLIP model dir (e.g. PickScore), an SPM dir or a released SPM file")
        if not self.data:
            raise SPMError("--data is required: a Pick-a-Pic-layout directory (metadata.jsonl) or a datasets name")
        if self.noise and not self.base_model:
            raise SPMError("--base-model is required (the frozen diffusion model that gives x̂0), unless --noise false")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise SPMError(f"--mixed-precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if not 0 < self.max_timestep <= 1000:
            raise SPMError(f"--max-timestep must be in (0, 1000], got {self.max_timestep}")
        for name in ("max_steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise SPMError(f"--{name.replace('_', '-')} must be >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise SPMError(f"--lr must be a number > 0, got {self.lr}")
        if not self.out.strip():
            raise SPMError("--out is empty; give the folder the run writes to")


# Reference hyper-parameters (spec §4) for SD-1.5 and SDXL; `shapes` for ShapesWorld's tiny CLIP on CPU.
PRESETS: dict[str, dict] = {
    "sd15": dict(lr=3e-6, weight_decay=0.3, warmup_steps=500, max_steps=8000, batch_size=16, max_grad_norm=1.0,
                 guidance_scale=5.0, mixed_precision="fp16", family="sd15"),
    "sdxl": dict(lr=1e-6, weight_decay=0.3, warmup_steps=500, max_steps=7000, batch_size=16, max_grad_norm=1.0,
                 guidance_scale=5.0, mixed_precision="fp16", family="sdxl"),
    "shapes": dict(lr=3e-4, weight_decay=0.01, warmup_steps=20, max_steps=600, batch_size=16, max_grad_norm=1.0,
                   guidance_scale=5.0, mixed_precision="no", family="shapes", num_workers=0, save_every=200,
                   eval_batch_size=32, eval_max_pairs=256),
}


def make_config(preset: str | None = None, **overrides) -> SPMTrainConfig:
    """Preset values, then explicit overrides (unknown names are an error)."""
    values = {}
    if preset:
        if preset not in PRESETS:
            raise SPMError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        values.update(PRESETS[preset])
    names = {f.name for f in dataclasses.fields(SPMTrainConfig)}
    unknown = [k for k in overrides if k not in names]
    if unknown:
        raise SPMError(f"unknown SPM training setting {unknown[0]!r}")
    values.update(overrides)
    return SPMTrainConfig(**values)


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Learning-rate multiplier: linear from 1/warmup to 1 over the warm-up, then constant."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)


def clip_gradients(parameters, max_norm: float, accelerator=None) -> float:
    """Clip the gradients' global L2 norm to max_norm in place; returns the norm before clipping.

    `parameters` is materialised first: a generator handed to the norm computation and then
    to the clipping would be exhausted by the first and clip nothing.
    """
    params = [p for p in parameters if p.grad is not None]
    if not params or max_norm <= 0:
        return float("nan")
    if accelerator is not None:
        return float(accelerator.clip_grad_norm_(params, max_norm))
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


# -- model set-up -------------------------------------------------------------------------------------
def load_base_model(source: str, family: str, dtype: torch.dtype, device):
    """The frozen diffusion model that gives x̂0 (trainer.models.load_model).

    SDXL's VAE overflows in fp16 (NaN images), so it stays in fp32 whatever the dtype;
    DiffusionModel.encode/decode cast at its boundary.
    """
    from ..models import load_model

    base = load_model(source, family=family, dtype=dtype, device=device)
    if base.family.name == "sdxl" and dtype == torch.float16:
        base.vae.to(torch.float32)
    return base


def initial_spm(cfg: SPMTrainConfig, family: str | None):
    """The SPM to train, from a CLIP dir, an SPM dir or a released file; trainable, fp32."""
    from .weights import load_spm, read_spm_config, spm_from_clip

    path = Path(cfg.init).expanduser()
    if path.is_dir() and read_spm_config(path) is None:
        spm = spm_from_clip(path, step_aware=cfg.step_aware, family=family)
    else:
        loaded = load_spm(path)
        if loaded.step_aware == cfg.step_aware:
            spm = loaded
        elif cfg.step_aware:  # step-agnostic SPM -> step-aware one, identity adaLN
            spm = spm_from_clip(loaded.model, step_aware=True, family=family)
            spm.tokenizer, spm.preprocess = loaded.tokenizer, loaded.preprocess
        else:
            raise SPMError(f"--init {cfg.init} is step-aware; a step-agnostic model cannot be made from it")
        spm.family = family or spm.family
    if spm.tokenizer is None:
        raise SPMError(f"--init {cfg.init}: no tokenizer found beside the CLIP model (expected a tokenizer/ folder or tokenizer files)")
    spm.get_tokenizer()  # fail now, not after the first batch
    # Whatever it started from, an SPM trained here sees its images through the reference recipe
    # (as the released SPMs did), and its config records that.
    spm.preprocess = dataclasses.replace(spm.preprocess, method="spo")
    return spm.float().train().requires_grad_(True)


def split_pairs(cfg: SPMTrainConfig):
    """(train pairs, held-out pairs). A seeded permutation picks the held-out ones."""
    train = open_pairs(cfg.data, cfg.split)
    if cfg.eval_data:
        return train, open_pairs(cfg.eval_data, cfg.eval_split)
    n = len(train)
    k = int(round(cfg.holdout * n)) if cfg.holdout < 1 else int(cfg.holdout)
    if n - k < 1:
        raise SPMError(f"--data {cfg.data}: {n} pairs leave nothing to train on after --holdout {cfg.holdout}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    return torch.utils.data.Subset(train, sorted(perm[k:])), torch.utils.data.Subset(train, sorted(perm[:k]))


# -- checkpoints ----------------------------------------------------------------------------------------
def _checkpoint_dirs(out: Path) -> list[Path]:
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")), key=lambda p: int(p.name[5:]))


def save_checkpoint(accelerator, out: Path, step: int, cfg: SPMTrainConfig, keep: int) -> Path:
    """accelerate state (model, optimizer, scheduler, RNG) + step, written to a temp dir then renamed."""
    final = out / "checkpoints" / f"step-{step:07d}"
    tmp = out / "checkpoints" / f".tmp-step-{step:07d}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "config": dataclasses.asdict(cfg)}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in _checkpoint_dirs(out)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(out: Path) -> Path | None:
    dirs = [d for d in _checkpoint_dirs(out) if (d / "trainer_state.json").is_file()]
    return dirs[-1] if dirs else None


# -- the loop -----------------------------------------------------------------------------------------
def _cycle(loader, accelerator, start_step: int, steps_per_epoch: int):
    """Batches forever from `start_step` on (epoch-seeded shuffles, so a resumed run sees the same order)."""
    epoch, skip = divmod(start_step, steps_per_epoch)
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        it = accelerator.skip_first_batches(loader, skip) if skip else loader
        yield from it
        epoch, skip = epoch + 1, 0


@dataclass
class _Run:
    """What one training run holds once set up (the model, optimizer, data, and where it writes)."""

    accelerator: object
    base: object  # DiffusionModel, or None when training on clean images
    spm: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: torch.utils.data.DataLoader
    eval_pairs: torch.utils.data.Dataset
    out: Path

    def log(self, msg: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(msg)

    def evaluate(self, cfg: SPMTrainConfig, tag: str) -> dict | None:
        """Accuracy by bucket on the held-out pairs (main process only; None elsewhere)."""
        if len(self.eval_pairs) == 0 or not self.accelerator.is_main_process:
            return None
        report = accuracy_by_timestep(
            self.accelerator.unwrap_model(self.spm), self.base, self.eval_pairs, cfg.eval_timesteps,
            cfg.eval_batch_size, cfg.guidance_scale, cfg.seed, cfg.eval_max_pairs, cfg.progress,
        )
        self.log(format_accuracy_table(report, f"SPM pairwise accuracy ({tag})"))
        return report


def train_spm(cfg: SPMTrainConfig) -> dict:
    """Run training; returns the final report (also written to `out/`): accuracy before/after by bucket.

    Writes `out/spm/` (the trained SPM, our format, with the report as its training record),
    `out/eval.json`, `out/log.jsonl` (loss, train accuracy, grad norm, lr every log_every steps)
    and `out/checkpoints/step-N/` every save_every steps.
    """
    cfg.validate()
    run = _set_up(cfg)
    step = _resume(run, cfg) if cfg.resume else 0
    before = run.evaluate(cfg, "before training") if step == 0 else None
    step = _loop(run, cfg, step)
    after = run.evaluate(cfg, "after training")
    report = {"config": dataclasses.asdict(cfg), "steps": step, "before": before, "after": after}
    if run.accelerator.is_main_process:
        run.accelerator.unwrap_model(run.spm).save_pretrained(run.out / "spm", training=report)
        write_report(report, run.out / "eval.json")
        run.log(f"saved the trained SPM to {run.out / 'spm'} and the accuracy report to {run.out / 'eval.json'}")
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    return report


def _set_up(cfg: SPMTrainConfig) -> _Run:
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed

    mixed = cfg.mixed_precision
    if mixed == "fp16" and not torch.cuda.is_available():
        mixed = "no"  # fp16 autocast needs a GPU; CPU runs stay in fp32
    accelerator = Accelerator(
        mixed_precision=mixed,
        gradient_accumulation_steps=cfg.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),  # epoch-seeded order: exact resume
    )
    set_seed(cfg.seed)
    train_pairs, eval_pairs = split_pairs(cfg)  # bad data paths fail before minutes of model loading
    base, family = None, None if cfg.family == "auto" else cfg.family
    if cfg.noise:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed, torch.float32)
        base = load_base_model(cfg.base_model, cfg.family, dtype, accelerator.device)
        family = base.family.name
    spm = initial_spm(cfg, family)
    loader = torch.utils.data.DataLoader(
        train_pairs, batch_size=cfg.batch_size, shuffle=True, drop_last=len(train_pairs) >= cfg.batch_size,
        num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed),
        collate_fn=PairCollate(base.resolution if base is not None else spm.preprocess.image_size),
    )
    optimizer = torch.optim.AdamW(spm.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.adam_betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_factor(s, cfg.warmup_steps))
    spm, optimizer, loader, scheduler = accelerator.prepare(spm, optimizer, loader, scheduler)
    return _Run(accelerator, base, spm, optimizer, scheduler, loader, eval_pairs, Path(cfg.out))


def _resume(run: _Run, cfg: SPMTrainConfig) -> int:
    """Load the latest complete checkpoint; returns its step (0 when there is none)."""
    ckpt = latest_checkpoint(run.out)
    if ckpt is None:
        run.log(f"--resume: no checkpoint in {run.out / 'checkpoints'}; starting from step 0")
        return 0
    run.accelerator.load_state(str(ckpt))
    step = json.loads((ckpt / "trainer_state.json").read_text())["step"]
    run.log(f"resumed from {ckpt} at step {step}")
    return step


def _loop(run: _Run, cfg: SPMTrainConfig, step: int) -> int:
    """Optimizer steps from `step` to cfg.max_steps, with logging, checkpoints and evaluations."""
    acc = run.accelerator
    gen = torch.Generator(acc.device)
    bar = tqdm(total=cfg.max_steps, initial=step, desc="SPM train", disable=not (cfg.progress and acc.is_main_process))
    batches = _cycle(run.loader, acc, step * cfg.grad_accum, len(run.loader))
    running, grad_norm, t0 = [], float("nan"), time.time()
    while step < cfg.max_steps:
        for micro in range(cfg.grad_accum):
            # seeded per micro-batch and process: a resumed run draws the same t and noise
            gen.manual_seed(cfg.seed * 1_000_003 + (step * cfg.grad_accum + micro) * 7919 + acc.process_index)
            with acc.accumulate(run.spm):
                loss, correct = _pair_step(run.spm, run.base, next(batches), cfg, gen, acc.device)
                acc.backward(loss)
                if acc.sync_gradients:
                    grad_norm = clip_gradients(run.spm.parameters(), cfg.max_grad_norm, acc)
                run.optimizer.step()
                run.scheduler.step()
                run.optimizer.zero_grad(set_to_none=True)
            running.append((loss.item(), correct))
        step += 1
        bar.update()
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            record = _log_record(step, running, grad_norm, run.scheduler.get_last_lr()[0], time.time() - t0)
            bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['train_acc']:.2f}")
            if acc.is_main_process:
                run.out.mkdir(parents=True, exist_ok=True)
                with open(run.out / "log.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
            running = []
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
            save_checkpoint(acc, run.out, step, cfg, cfg.keep_checkpoints)
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
            run.evaluate(cfg, f"step {step}")
    bar.close()
    return step


def _log_record(step: int, running: list, grad_norm: float, lr: float, seconds: float) -> dict:
    losses = [loss for loss, _ in running]
    accs = [a for _, correct in running for a in correct if not math.isnan(a)]
    return {"step": step, "loss": sum(losses) / len(losses), "train_acc": sum(accs) / max(1, len(accs)),
            "grad_norm": grad_norm, "lr": lr, "seconds": round(seconds, 1)}


def _pair_step(spm, base, batch, cfg: SPMTrainConfig, gen: torch.Generator, device):
    """Loss (mean over pairs) and per-pair correctness for one batch of pairs."""
    b = len(batch)
    if base is None:
        t = torch.zeros(b, dtype=torch.long, device=device)
        img0, img1 = batch.images_0.to(device), batch.images_1.to(device)
    else:
        t = torch.randint(0, cfg.max_timestep, (b,), generator=gen, device=device)
        img0, img1 = noised_pair_images(base, batch.images_0, batch.images_1, batch.prompts, t, cfg.guidance_scale, gen)
    scores = spm(torch.cat([img0, img1]), batch.prompts * 2, torch.cat([t, t]))
    s0, s1 = scores[:b], scores[b:]
    l0, l1 = batch.label_0.to(device), batch.label_1.to(device)
    loss = preference_loss(s0, s1, l0, l1).mean()
    return loss, pair_correct(s0.detach(), s1.detach(), l0, l1).tolist()
