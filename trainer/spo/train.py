"""The SPO training loop: sample rounds, train on kept transitions, checkpoint, export.

Every epoch's randomness comes from a generator seeded by (seed, epoch, rank), so a run
resumed from a checkpoint continues exactly as an uninterrupted one would.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from ..atomic import write_text
from ..models import DiffusionModel, PromptEmbeds
from . import rundir
from .config import ConfigError, SPOConfig, to_dict
from .rollout import Transitions, spo_round
from .step import transition_loss

CHECKPOINTS = rundir.CHECKPOINTS


def add_lora(model: DiffusionModel, cfg) -> list[torch.nn.Parameter]:
    """Inject a peft LoRA adapter into model.unet; freeze everything else. Returns the trainable params."""
    from peft import LoraConfig

    model.unet.requires_grad_(False)
    model.unet.add_adapter(
        LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            init_lora_weights="gaussian" if cfg.init == "gaussian" else True,
            target_modules=list(cfg.targets),
        )
    )
    params = [p for p in model.unet.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"--lora.targets: no module of the UNet matches {cfg.targets}")
    return params


def lora_fingerprint(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """Tensor[2] float64 summarising the LoRA weights (sum, position-weighted sum) to compare ranks."""
    flat = torch.cat([p.detach().double().flatten().cpu() for p in params])
    return torch.stack([flat.sum(), (flat * torch.linspace(1, 2, len(flat), dtype=torch.float64)).sum()])


def epoch_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 9_973 + rank * 131) % (2**63))


@dataclass
class EpochData:
    transitions: Transitions
    cond: PromptEmbeds
    uncond: PromptEmbeds
    stats: dict


def sample_epoch(model, scorer, prompts, cfg: SPOConfig, gen: torch.Generator, show: bool) -> EpochData:
    """cfg.sampling.rounds_per_epoch SPO rounds on prompts drawn uniformly with `gen`."""
    s = cfg.sampling
    parts, conds, offsets, stats = [], [], [], []
    n_prompts = 0
    for _ in tqdm(range(s.rounds_per_epoch), desc="sampling", disable=not show, leave=False):
        idx = torch.randint(0, len(prompts), (s.batch_size,), generator=gen)
        result = spo_round(model, scorer, [prompts[i] for i in idx], s, gen, cfg.scorer.score_timestep)
        parts.append(result.transitions)
        conds.append(result.embeds)
        offsets.append(n_prompts)
        n_prompts += len(result.prompts)
        stats.append(result.stats)
    cond = PromptEmbeds.cat(conds)
    merged = {
        "branched": sum(x["branched"] for x in stats),
        "kept": sum(x["kept"] for x in stats),
        "reward": sum(x["final_score"] for x in stats) / len(stats),
    }
    merged["tie_rate"] = 1 - merged["kept"] / max(merged["branched"], 1)
    return EpochData(Transitions.cat(parts, offsets), cond, model.uncond_embeds(n_prompts), merged)


def train_on(model, unet_for_grad, accelerator, optimizer, params, data: EpochData, cfg: SPOConfig, gen, show) -> dict:
    """One pass over the epoch's transitions in shuffled micro-batches; returns mean loss info.

    Every process runs the same number of optimizer steps (the smallest count over ranks),
    since DDP needs all ranks in every gradient all-reduce.
    """
    t = cfg.train
    n = len(data.transitions)
    counts = accelerator.gather(torch.tensor([n], device=accelerator.device))
    n_common = int(counts.min())
    micro = n_common // t.batch_size
    steps = micro // t.grad_accum
    if steps == 0:
        return {"loss": float("nan"), "steps": 0, "grad_norm": float("nan")}
    perm = torch.randperm(n, generator=gen)[: steps * t.grad_accum * t.batch_size]
    losses, norms, margins = [], [], []
    unet_for_grad.train()
    for step in tqdm(range(steps), desc="training", disable=not show, leave=False):
        for a in range(t.grad_accum):
            rows = perm[(step * t.grad_accum + a) * t.batch_size : (step * t.grad_accum + a + 1) * t.batch_size]
            batch = data.transitions.index(rows)
            sync = a == t.grad_accum - 1
            ctx = accelerator.no_sync(unet_for_grad) if not sync else nullcontext()
            with ctx, accelerator.autocast():
                loss, info = transition_loss(
                    model, unet_for_grad, batch, data.cond, data.uncond,
                    cfg.sampling.num_steps, cfg.sampling.guidance_scale, cfg.sampling.eta, t.beta, t.clip_eps,
                )
                accelerator.backward(loss / t.grad_accum)
            losses.append(float(loss.detach()))
            margins.append(float(info["reward_margin"]))
        norms.append(float(accelerator.clip_grad_norm_(params, t.max_grad_norm)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    unet_for_grad.eval()
    return {"loss": sum(losses) / len(losses), "steps": steps, "grad_norm": max(norms), "margin": sum(margins) / len(margins)}


# -- checkpoints (trainer.spo.rundir holds the folder rules) -------------------------------------------
def save_checkpoint(out: Path, epoch: int, unet, optimizer, cfg: SPOConfig, keep: int = 2) -> Path:
    """Write checkpoints/epoch-NNNN atomically (temp dir, then rename); keep the newest `keep`."""
    from peft.utils import get_peft_model_state_dict

    return rundir.save_checkpoint(out, epoch, get_peft_model_state_dict(unet), optimizer, cfg, keep)


def latest_checkpoint(out: Path) -> Path | None:
    done = rundir.checkpoints(out)
    return done[0] if done else None


def load_checkpoint(path: Path, unet, optimizer, ckpt: dict | None = None) -> int:
    """Restore LoRA weights, optimizer and RNG; return the epoch the checkpoint ended."""
    from peft.utils import set_peft_model_state_dict

    ckpt = ckpt if ckpt is not None else rundir.read_checkpoint(path)
    set_peft_model_state_dict(unet, ckpt["lora"])
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"])
    return int(ckpt["state"]["epoch"])


# -- outputs -------------------------------------------------------------------------------------
def export_lora(out: Path, model: DiffusionModel, cfg: SPOConfig) -> dict[str, Path]:
    """The trained adapter as a kohya/WebUI file and in diffusers/PEFT form, with the config beside it.

    All three are written into a temporary folder first and then moved into place together: a full
    disk or a kill leaves either the earlier export or the new one, never a mix and no temporary.
    """
    from ..atomic import publish
    from ..lora import lora_from_peft, save_diffusers, save_kohya

    name = rundir.export_name(cfg)
    comment = {
        "method": "SPO (step-aware preference optimization)",
        "k": cfg.sampling.k,
        "branch": [cfg.sampling.branch_start, cfg.sampling.branch_end],
        "inner_steps": cfg.sampling.inner_steps,
        "threshold": cfg.sampling.threshold,
        "continuation": cfg.sampling.continuation,
        "beta": cfg.train.beta,
        "epochs": cfg.train.epochs,
        "lr": cfg.train.lr,
        "scorer": cfg.scorer.source,
    }
    state = lora_from_peft(model.unet, component="unet", family=model.family.name)
    with publish(out, [f"{name}.safetensors", "diffusers", "config.yaml"]) as stage:
        save_kohya(
            state,
            stage / f"{name}.safetensors",
            family=model.family.name,
            output_name=name,
            base_model_name=Path(str(model.source)).name,
            training_comment=comment,
            dtype=torch.float16,
        )
        (stage / "diffusers").mkdir()
        save_diffusers(state, stage / "diffusers" / "pytorch_lora_weights.safetensors", dtype=torch.float32)
        (stage / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return {"kohya": out / f"{name}.safetensors", "diffusers": out / "diffusers"}


def check_output_dir(out: Path) -> None:
    rundir.check_writable(out)


def train(cfg: SPOConfig, model: DiffusionModel | None = None, scorer=None, prompts: list[str] | None = None) -> dict:
    """Run SPO post-training as configured; returns paths and the last epoch's summary.

    model / scorer / prompts: objects to use instead of resolving cfg.model / cfg.scorer /
    cfg.prompts (library use and tests); the scorer fits trainer.scoring.Scorer.
    """
    out = Path(cfg.output_dir)
    lock = rundir.prepare_output_dir(cfg)  # one run per folder, checked before anything loads
    try:
        return _train(cfg, out, model, scorer, prompts)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: SPOConfig, out: Path, model, scorer, prompts) -> dict:
    from accelerate import Accelerator

    from .sources import resolve_model, resolve_prompts, resolve_scorer

    # Without a GPU, processes started by torchrun (`accelerate launch --multi_gpu`) must be told
    # to use the CPU, or accelerate runs each of them alone instead of as one gloo group.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=multi_cpu)
    show = accelerator.is_local_main_process
    prompts = prompts if prompts is not None else resolve_prompts(cfg)
    model = model if model is not None else resolve_model(cfg, device=accelerator.device)
    scorer = scorer if scorer is not None else resolve_scorer(cfg, device=accelerator.device)
    torch.manual_seed(cfg.seed)  # LoRA init: the same on every rank
    params = add_lora(model, cfg.lora)
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    unet_for_grad, optimizer = accelerator.prepare(model.unet, optimizer)

    start = 0
    if cfg.overwrite and accelerator.is_main_process:
        rundir.clear_run(out, cfg)  # only now: every input of the new run has loaded
    accelerator.wait_for_everyone()
    if cfg.resume:
        path, ckpt = rundir.load_newest_intact(out, cfg, say=print if show else (lambda m: None))
        start = load_checkpoint(path, model.unet, optimizer, ckpt) + 1
        if show:
            print(f"resumed from {path} (epoch {start - 1} done)")
    if accelerator.is_main_process:
        rundir.trim_log(out, start)  # a resumed run logs each epoch once

    writer = _tensorboard(out / "logs") if accelerator.is_main_process else None
    summary = {}
    for epoch in range(start, cfg.train.epochs):
        t0 = time.time()
        gen = epoch_generator(cfg.seed, epoch, accelerator.process_index)
        model.unet.eval()
        data = sample_epoch(model, scorer, prompts, cfg, gen, show)
        info = train_on(model, unet_for_grad, accelerator, optimizer, params, data, cfg, gen, show)
        summary = {"epoch": epoch, **data.stats, **info, "seconds": round(time.time() - t0, 1)}
        if show:
            print(
                f"epoch {epoch + 1}/{cfg.train.epochs}: pairs kept {data.stats['kept']}/{data.stats['branched']} "
                f"(tie rate {data.stats['tie_rate']:.2f}), loss {info['loss']:.4f}, reward {data.stats['reward']:.3f}, "
                f"{info['steps']} steps, {summary['seconds']}s"
            )
        if writer is not None:
            for key, value in summary.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    writer.add_scalar(f"spo/{key}", value, epoch)
            rundir.append_log(out, summary)
        if accelerator.is_main_process and cfg.checkpoint_every and (epoch + 1) % cfg.checkpoint_every == 0:
            save_checkpoint(out, epoch, model.unet, optimizer, cfg)
        if accelerator.is_main_process and cfg.validate_every and (epoch + 1) % cfg.validate_every == 0:
            from .report import validation_grid

            validation_grid(model, prompts, out / f"validation-epoch-{epoch + 1:04d}.png")
        accelerator.wait_for_everyone()

    fingerprints = accelerator.gather(lora_fingerprint(params).to(accelerator.device)[None]).cpu()
    if accelerator.is_main_process:
        # DDP keeps replicas equal; written down so a multi-GPU user (and the test) can check it.
        write_text(out / "ranks.json", json.dumps({"lora_fingerprints": fingerprints.tolist()}))
    result = {"summary": summary, "model": model, "output_dir": out}
    if accelerator.is_main_process:
        result.update(export_lora(out, model, cfg))
        if cfg.validate_every == 0 and cfg.model.source != "shapes":  # ShapesWorld's report has its own grid
            from .report import validation_grid

            result["grid"] = validation_grid(model, prompts, out / "validation.png")
    if writer is not None:
        writer.close()
    accelerator.wait_for_everyone()
    return result


def _tensorboard(logdir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra; log.jsonl is always written
        print(f"{logdir}: not written, TensorBoard logging needs the tensorboard extra "
              f"(pip install tensorboard); log.jsonl has the same per-epoch numbers")
        return _NoWriter()
    return SummaryWriter(str(logdir))


class _NoWriter:
    def add_scalar(self, *a, **k):
        pass

    def close(self):
        pass
