"""The SPO training loop: for each batch of the epoch's shuffled prompts, sample an SPO round and
train on its kept transitions at once (on-policy, as the reference); checkpoint, export.

Every epoch's randomness comes from generators seeded by (seed, epoch, rank), so a run
resumed from a checkpoint continues exactly as an uninterrupted one would.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
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


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def frozen_dtype(train_cfg, device: torch.device) -> torch.dtype:
    """The dtype the frozen weights are held in: the reference casts them to the mixed-precision
    dtype on a GPU; on CPU (no fast half kernels) fp32."""
    name = train_cfg.frozen_dtype
    if name == "auto":
        name = train_cfg.mixed_precision if device.type == "cuda" and train_cfg.mixed_precision != "no" else "fp32"
    return DTYPES[name]


def cast_frozen(model: DiffusionModel, dtype: torch.dtype) -> None:
    """Frozen UNet, text encoders and VAE to `dtype` (call before add_lora). SDXL's VAE overflows
    in fp16 (NaN images), so it stays fp32 then; DiffusionModel.decode casts at its boundary."""
    model.unet.to(dtype)
    for enc in model.text_encoders:
        enc.to(dtype)
    model.vae.to(torch.float32 if model.family.name == "sdxl" and dtype == torch.float16 else dtype)


def upcast_trainable(params: list[torch.nn.Parameter]) -> None:
    """LoRA weights (and so the optimizer state built on them) in fp32 over half-precision frozen layers."""
    for p in params:
        p.data = p.data.float()


def lora_fingerprint(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """Tensor[2] float64 summarising the LoRA weights (sum, position-weighted sum) to compare ranks."""
    flat = torch.cat([p.detach().double().flatten().cpu() for p in params])
    return torch.stack([flat.sum(), (flat * torch.linspace(1, 2, len(flat), dtype=torch.float64)).sum()])


def epoch_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 9_973 + rank * 131) % (2**63))


def shared_generator(seed: int, *keys: int) -> torch.Generator:
    """The same on every process: prompt shuffles and the split of gathered transitions."""
    h = seed * 1_000_003 + 7_919
    for k in keys:
        h = (h * 9_973 + k + 1) % (2**63)
    return torch.Generator().manual_seed(h)


# -- the epoch as the reference runs it --------------------------------------------------------------
def prompt_order(n_prompts: int, seed: int, start: int, count: int) -> torch.Tensor:
    """Positions [start, start + count) of the stream perm_0 ++ perm_1 ++ …, where perm_p is a
    seeded shuffle of range(n_prompts): prompts are drawn without replacement, each once per pass.
    Returns Tensor[count] long."""
    parts, p = [], start // n_prompts
    offset = start - p * n_prompts
    while sum(len(x) for x in parts) < count:
        perm = torch.randperm(n_prompts, generator=shared_generator(seed, 1, p))
        parts.append(perm[offset:])
        offset, p = 0, p + 1
    return torch.cat(parts)[:count]


def epoch_batches(n_prompts: int, s, seed: int, epoch: int, rank: int, world: int) -> list[list[int]]:
    """This process's prompt indices for each sampling batch of one epoch.

    rounds_per_epoch = 0 (the reference): one pass over the shuffled prompt list, the last batch
    partial; each global batch of batch_size × world prompts is cut into per-process shards (a
    process may get fewer, or none, in the last one). rounds_per_epoch = R > 0: R full batches per
    process, taken from the same without-replacement stream, so a pass spans several epochs.
    """
    global_bs = s.batch_size * world
    if s.rounds_per_epoch == 0:
        start, count = epoch * n_prompts, n_prompts
    else:
        count = s.rounds_per_epoch * global_bs
        start = epoch * count
    order = prompt_order(n_prompts, seed, start, count)
    return [
        order[g + rank * s.batch_size : min(g + (rank + 1) * s.batch_size, g + global_bs, count)].tolist()
        for g in range(0, count, global_bs)
    ]


def even_split(n_total: int, world: int, rank: int, gen: torch.Generator) -> torch.Tensor:
    """Rows of the gathered transitions this process trains on: one shared shuffle cut into `world`
    equal parts (the n_total mod world left over are dropped), as the reference splits them.
    gen must be in the same state on every process. Returns Tensor[n_total // world] long."""
    perm = torch.randperm(n_total, generator=gen)
    q = n_total // world
    return perm[rank * q : (rank + 1) * q]


def gather_transitions(accelerator, transitions: Transitions, prompts: list[str]) -> tuple[Transitions, list[str]]:
    """Every process's kept transitions and prompts, concatenated in rank order (the same on all)."""
    if accelerator.num_processes == 1:
        return transitions, prompts
    from accelerate.utils import gather_object

    parts = gather_object([(transitions, prompts)])
    offsets, all_prompts = [], []
    for _, p in parts:
        offsets.append(len(all_prompts))
        all_prompts += p
    return Transitions.cat([t for t, _ in parts], offsets), all_prompts


@dataclass
class EpochData:
    transitions: Transitions
    cond: PromptEmbeds
    uncond: PromptEmbeds
    stats: dict


def sample_epoch(model, scorer, prompts, cfg: SPOConfig, gen: torch.Generator, show: bool) -> EpochData:
    """cfg.sampling.rounds_per_epoch SPO rounds with frozen weights on prompts drawn uniformly with `gen`.

    Not how `train` runs an epoch (it samples and trains batch by batch); kept for the benches
    that only study what the scorer labels.
    """
    s = cfg.sampling
    parts, conds, offsets, stats = [], [], [], []
    n_prompts = 0
    for _ in tqdm(range(max(s.rounds_per_epoch, 1)), desc="sampling", disable=not show, leave=False):
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


@dataclass
class TrainState:
    """Optimizer bookkeeping across sampling batches: gradient accumulation runs on over batch
    boundaries (as accelerate's does in the reference), so a short batch's micro-batches count."""

    micro: int = 0
    """micro-batches accumulated since the last optimizer step"""
    steps: int = 0
    trained: int = 0
    """transitions trained on (this process)"""
    losses: list = field(default_factory=list)
    margins: list = field(default_factory=list)
    norms: list = field(default_factory=list)

    def summary(self) -> dict:
        mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
        return {
            "loss": mean(self.losses), "steps": self.steps, "trained": self.trained,
            "grad_norm": max(self.norms) if self.norms else float("nan"),
            "grad_norm_median": sorted(self.norms)[len(self.norms) // 2] if self.norms else float("nan"),
            "margin": mean(self.margins),
        }


def optimizer_step(accelerator, optimizer, params, max_grad_norm: float, state: TrainState) -> None:
    """Clip (when max_grad_norm > 0) and step. The pre-clip norm is logged either way."""
    limit = max_grad_norm if max_grad_norm > 0 else float("inf")
    state.norms.append(float(accelerator.clip_grad_norm_(params, limit)))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state.micro = 0
    state.steps += 1


def flush(accelerator, optimizer, params, cfg: SPOConfig, state: TrainState) -> None:
    """Step on micro-batches still accumulated at the end of an epoch (their gradients were kept
    local by no_sync, so average them across processes first)."""
    if state.micro == 0:
        return
    if accelerator.num_processes > 1:
        for p in params:
            if p.grad is not None:
                p.grad.copy_(accelerator.reduce(p.grad, reduction="mean"))
    optimizer_step(accelerator, optimizer, params, cfg.train.max_grad_norm, state)


def train_batch(model, unet_for_grad, accelerator, optimizer, params, data: EpochData, cfg: SPOConfig, state: TrainState) -> None:
    """Train on all of `data`'s transitions in order, train.batch_size at a time (the last batch
    may be smaller), stepping every grad_accum micro-batches. Every process holds the same
    number of transitions (even_split), so DDP's all-reduces line up."""
    t = cfg.train
    n = len(data.transitions)
    unet_for_grad.train()
    for lo in range(0, n, t.batch_size):
        batch = data.transitions.index(torch.arange(lo, min(lo + t.batch_size, n)))
        sync = (state.micro + 1) % t.grad_accum == 0
        ctx = accelerator.no_sync(unet_for_grad) if not sync else nullcontext()
        with ctx, accelerator.autocast():
            loss, info = transition_loss(
                model, unet_for_grad, batch, data.cond, data.uncond,
                cfg.sampling.num_steps, cfg.sampling.guidance_scale, cfg.sampling.eta, t.beta, t.clip_eps,
            )
            accelerator.backward(loss / t.grad_accum)
        state.micro += 1
        state.trained += len(batch)
        state.losses.append(float(loss.detach()))
        state.margins.append(float(info["reward_margin"]))
        if sync:
            optimizer_step(accelerator, optimizer, params, t.max_grad_norm, state)
    unet_for_grad.eval()


def train_on(model, unet_for_grad, accelerator, optimizer, params, data: EpochData, cfg: SPOConfig, gen=None, show=False) -> dict:
    """Train on one set of transitions (all of them, partial batches included) and step on what is
    left accumulated; returns the mean loss info. `gen` and `show` are accepted for old callers."""
    state = TrainState()
    train_batch(model, unet_for_grad, accelerator, optimizer, params, data, cfg, state)
    flush(accelerator, optimizer, params, cfg, state)
    return state.summary()


def run_epoch(model, scorer, prompts, unet_for_grad, accelerator, optimizer, params, cfg: SPOConfig, epoch: int, show: bool) -> dict:
    """One epoch as the reference runs it: for each sampling batch of this epoch's shuffled prompts,
    sample with the current weights, gather every process's kept transitions, split them evenly
    and train on them at once, so the next batch is sampled by the updated model (on-policy)."""
    s = cfg.sampling
    rank, world = accelerator.process_index, accelerator.num_processes
    gen = epoch_generator(cfg.seed, epoch, rank)
    batches = epoch_batches(len(prompts), s, cfg.seed, epoch, rank, world)
    state = TrainState()
    stats = {"branched": 0, "kept": 0, "rewards": [], "kept_all": 0}
    for b, idx in enumerate(tqdm(batches, desc="batches", disable=not show, leave=False)):
        model.unet.eval()
        batch_prompts = [prompts[i] for i in idx]
        if batch_prompts:
            result = spo_round(model, scorer, batch_prompts, s, gen, cfg.scorer.score_timestep)
            transitions, stats_b = result.transitions, result.stats
            stats["branched"] += stats_b["branched"]
            stats["kept"] += stats_b["kept"]
            stats["rewards"].append(stats_b["final_score"])
        else:  # a short last batch left this process without prompts; it still trains its share
            transitions = _no_transitions(model)
        everything, all_prompts = gather_transitions(accelerator, transitions, batch_prompts)
        stats["kept_all"] += len(everything)
        if len(everything) < world:
            continue
        rows = even_split(len(everything), world, rank, shared_generator(cfg.seed, 2, epoch, b))
        mine = everything.index(rows)
        cond = model.encode_prompts(all_prompts) if world > 1 else result.embeds
        data = EpochData(mine, cond, model.uncond_embeds(len(all_prompts)), {})
        train_batch(model, unet_for_grad, accelerator, optimizer, params, data, cfg, state)
    flush(accelerator, optimizer, params, cfg, state)
    rewards = stats.pop("rewards")
    stats["reward"] = sum(rewards) / len(rewards) if rewards else float("nan")
    stats["tie_rate"] = 1 - stats["kept"] / max(stats["branched"], 1)
    stats["batches"] = len(batches)
    return {**stats, **state.summary()}


def _no_transitions(model) -> Transitions:
    from .rollout import _empty_transitions

    return _empty_transitions(model.latent_shape)


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
    dtype = frozen_dtype(cfg.train, accelerator.device)
    if dtype != model.dtype:
        cast_frozen(model, dtype)
    torch.manual_seed(cfg.seed)  # LoRA init: the same on every rank
    params = add_lora(model, cfg.lora)
    upcast_trainable(params)
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
        info = run_epoch(model, scorer, prompts, unet_for_grad, accelerator, optimizer, params, cfg, epoch, show)
        # what each process trained on: equal shares of everything kept (written for multi-process runs)
        info["trained_per_rank"] = [int(x) for x in accelerator.gather(torch.tensor([info["trained"]], device=accelerator.device)).cpu()]
        summary = {"epoch": epoch, **info, "seconds": round(time.time() - t0, 1)}
        if show:
            print(
                f"epoch {epoch + 1}/{cfg.train.epochs}: pairs kept {info['kept']}/{info['branched']} "
                f"(tie rate {info['tie_rate']:.2f}), loss {info['loss']:.4f}, reward {info['reward']:.3f}, "
                f"{info['steps']} steps, {summary['seconds']}s"
            )
        if writer is not None:
            for key, value in summary.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
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
