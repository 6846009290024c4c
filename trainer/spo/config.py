"""SPO configuration: typed dataclasses, presets as data, YAML files and dotted CLI overrides.

Precedence: preset < YAML file (--config) < command-line overrides (--section.field value).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .. import typed_config
from ..config_sections import DDIMConfig, ModelConfig
from ..families import FAMILIES
from ..typed_config import ConfigError


@dataclass
class ScorerConfig:
    source: str = "shapes-spm"
    """SPM file/dir (.bin, .safetensors, our format), or shapes-spm | shapes-preference | shapes-aesthetic | shapes-utility (ground truth: the rater's utility ×10)"""
    score_timestep: str = "candidate"
    """candidate: score x̂0 at the candidate's timestep (step-aware) | zero: always at t=0"""


@dataclass
class LoraConfig:
    rank: int = 4
    alpha: float = 4.0
    init: str = "gaussian"
    """gaussian | default (peft's: B = 0)"""
    targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])


@dataclass
class SamplingConfig(DDIMConfig):
    """SPO's rollouts: the DDIM settings (η = 1 here, as in the paper: a stochastic step is what makes a
    branch's k candidates differ), then the branching and pair selection."""

    eta: float = 1.0
    k: int = 4
    """candidates drawn from each noisy latent at a branching step"""
    branch_start: int = 4
    """first branched step index (4 of 20 = the paper's κ = 750)"""
    branch_end: int = -1
    """last branched step index + 1; -1 = through the final step"""
    inner_steps: int = 0
    """MSPO j: plain DDIM steps each candidate runs before it is scored"""
    threshold: float = 0.3
    """keep a pair only when softmax-gap of its scores exceeds this"""
    continuation: str = "random"
    """random | winner | loser: which candidate the trajectory continues from"""
    batch_size: int = 10
    """prompts per SPO round (per process)"""
    rounds_per_epoch: int = 0
    """sampling batches per epoch (per process); 0 = one pass over the shuffled prompt list, as the reference"""
    micro_batch: int = 0
    """chunk of candidates per UNet/VAE/scorer call when scoring (0 = all at once)"""
    reuse_forward: bool = True
    """reuse the continued candidate's scoring forward as the next step's (False = the reference's cost)"""


@dataclass
class TrainConfig:
    epochs: int = 10
    lr: float = 6e-5
    weight_decay: float = 1e-4
    beta: float = 10.0
    clip_eps: float = 0.1
    batch_size: int = 10
    """kept transitions per optimizer micro-step (per process)"""
    grad_accum: int = 1
    max_grad_norm: float = 0.0
    """clip the LoRA gradient norm to this; 0 = never clip (the reference's effective behaviour)"""
    mixed_precision: str = "no"
    """no | fp16 | bf16"""
    frozen_dtype: str = "auto"
    """frozen UNet/text encoders/VAE: auto (mixed_precision's dtype on a GPU, fp32 on CPU) | fp32 | fp16 | bf16; LoRA and optimizer state stay fp32"""


@dataclass
class SPOConfig:
    preset: str = "shapes"
    prompts: str = "shapes"
    """text file with one prompt per line, or "shapes" (ShapesWorld training captions)"""
    output_dir: str = "outputs/spo-shapes"
    """folder of the run's checkpoints, logs and exported LoRA: one run per folder"""
    seed: int = 0
    """seeds the LoRA init and every epoch's sampling"""
    checkpoint_every: int = 1
    """epochs between checkpoints"""
    validate_every: int = 0
    """epochs between validation grids (0 = only at the end)"""
    resume: bool = False
    """continue from the newest intact checkpoint in output_dir (model and LoRA settings must match it)"""
    overwrite: bool = False
    """start over in an output_dir that holds a run: its checkpoints, logs and exports are removed first"""
    eval_seeds: int = 4
    """fixed seeds per held-out caption in the before/after evaluation (ShapesWorld)"""
    model: ModelConfig = field(default_factory=ModelConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# Presets as data: the reference hyper-parameters of spec §3 (per GPU), and a ShapesWorld
# default sized for ~4.5 minutes on 2 CPU cores (most of it the VAE decoding every candidate's x̂0 for the scorer).
PRESETS: dict[str, dict[str, Any]] = {
    "shapes": {
        "sampling.k": 4,
        "sampling.batch_size": 16,
        "sampling.rounds_per_epoch": 2,  # 32 of the 1080 captions per epoch, drawn without replacement
        "train.max_grad_norm": 1.0,
        # Every pair: the shipped SPM's preferences between four near-identical x̂0 are rarely 0.1
        # apart (at 0.1 it called 80–86 % ties and the run gained +0.11 aesthetic for −0.03
        # alignment); with all pairs at a quarter of that rate, +0.34 with alignment within noise.
        "sampling.threshold": 0.0,
        # Branch at steps 10–19 (t ≤ 500): from step 4 the SPM, near chance on blurry x̂0, steered
        # the LoRA into the wrong colour (docs/shapes-16k-base.md).
        "sampling.branch_start": 10,
        "train.epochs": 6,
        "train.lr": 1.25e-4,
        "train.batch_size": 16,
        "lora.rank": 4,
        "lora.alpha": 4.0,
    },
    "sd15": {
        "model.source": FAMILIES["sd15"].base_model,
        "model.family": "sd15",
        "scorer.source": FAMILIES["sd15"].released_spm,
        "prompts": "",
        "output_dir": "outputs/spo-sd15",
        "sampling.k": 4,
        "sampling.inner_steps": 0,
        "sampling.batch_size": 10,
        "sampling.rounds_per_epoch": 0,
        "train.max_grad_norm": 0.0,
        "sampling.threshold": 0.3,
        "train.epochs": 10,
        "train.batch_size": 10,
        "train.grad_accum": 1,
        "train.lr": 6e-5,
        "train.mixed_precision": "fp16",
        "lora.rank": 4,
        "lora.alpha": 4.0,
    },
    "sdxl": {
        "model.source": FAMILIES["sdxl"].base_model,
        "model.family": "sdxl",
        "scorer.source": FAMILIES["sdxl"].released_spm,
        "prompts": "",
        "output_dir": "outputs/spo-sdxl",
        "sampling.k": 2,
        "sampling.inner_steps": 3,
        "sampling.batch_size": 2,
        "sampling.rounds_per_epoch": 0,
        "train.max_grad_norm": 0.0,
        "sampling.threshold": 0.4,
        "train.epochs": 10,
        "train.batch_size": 2,
        "train.grad_accum": 2,
        "train.lr": 1e-5,
        "train.mixed_precision": "fp16",
        "lora.rank": 64,
        "lora.alpha": 64.0,
    },
}


def flat_fields(cfg=None) -> dict[str, tuple[Any, type, str]]:
    """{"sampling.k": (value, type, doc), ...} for every leaf field."""
    return typed_config.fields_of(cfg if cfg is not None else SPOConfig())


def build_config(preset: str | None = "shapes", yaml_path: str | None = None, overrides: dict[str, Any] | None = None) -> SPOConfig:
    """Preset, then YAML file, then overrides; type-checked (trainer.typed_config) and validated.

    preset None: the YAML file's `preset:`, else "shapes".
    """
    cfg = typed_config.build(SPOConfig, PRESETS, preset=preset, yaml_path=yaml_path, overrides=overrides,
                             default_preset="shapes")
    validate(cfg)
    return cfg


def validate(cfg: SPOConfig) -> None:
    s, t = cfg.sampling, cfg.train
    if s.k < 2:
        raise ConfigError(f"--sampling.k must be at least 2 to form a pair (got {s.k})")
    if not 0 <= s.threshold < 1:
        raise ConfigError(f"--sampling.threshold must be in [0, 1) (got {s.threshold})")
    if s.continuation not in ("random", "winner", "loser"):
        raise ConfigError(f"--sampling.continuation must be random, winner or loser (got {s.continuation!r})")
    if cfg.scorer.score_timestep not in ("candidate", "zero"):
        raise ConfigError(f"--scorer.score_timestep must be candidate or zero (got {cfg.scorer.score_timestep!r})")
    end = s.num_steps if s.branch_end < 0 else s.branch_end
    if not 0 <= s.branch_start < end <= s.num_steps:
        raise ConfigError(
            f"--sampling.branch_start/--sampling.branch_end must satisfy 0 <= start < end <= num_steps "
            f"(got {s.branch_start}, {s.branch_end}, {s.num_steps})"
        )
    if s.inner_steps < 0 or s.branch_start + s.inner_steps >= s.num_steps:
        raise ConfigError(f"--sampling.inner_steps must be >= 0 and leave room after branch_start (got {s.inner_steps})")
    if s.micro_batch < 0:
        raise ConfigError(f"--sampling.micro_batch must be >= 0 (got {s.micro_batch})")
    if s.batch_size < 1 or t.batch_size < 1 or t.grad_accum < 1:
        raise ConfigError("--sampling.batch_size, --train.batch_size and --train.grad_accum must be >= 1")
    if s.micro_batch and (s.batch_size * s.k) % s.micro_batch:
        raise ConfigError(
            f"--sampling.micro_batch ({s.micro_batch}) must divide batch_size·k = {s.batch_size * s.k}"
        )
    if s.rounds_per_epoch < 0:
        raise ConfigError(f"--sampling.rounds_per_epoch must be >= 0 (0 = every prompt once; got {s.rounds_per_epoch})")
    if not (math.isfinite(t.max_grad_norm) and t.max_grad_norm >= 0):
        raise ConfigError(f"--train.max_grad_norm must be >= 0 (0 = no clipping; got {t.max_grad_norm})")
    if t.frozen_dtype not in ("auto", "fp32", "fp16", "bf16"):
        raise ConfigError(f"--train.frozen_dtype must be auto, fp32, fp16 or bf16 (got {t.frozen_dtype!r})")
    if t.mixed_precision not in ("no", "fp16", "bf16"):
        raise ConfigError(f"--train.mixed_precision must be no, fp16 or bf16 (got {t.mixed_precision!r})")
    if cfg.lora.rank < 1:
        raise ConfigError(f"--lora.rank must be >= 1 (got {cfg.lora.rank})")
    # Values that would train nothing or divide by zero: refused before any model is loaded.
    for flag, value in (("--train.lr", t.lr), ("--train.beta", t.beta), ("--lora.alpha", cfg.lora.alpha),
                        ("--train.clip_eps", t.clip_eps)):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{flag} must be a number > 0 (got {value})")
    for flag, value in (("--train.epochs", t.epochs),  # rounds_per_epoch 0 = every prompt once, checked above
                        ("--sampling.num_steps", s.num_steps), ("--eval_seeds", cfg.eval_seeds)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1 (got {value})")
    if t.weight_decay < 0 or s.eta < 0 or cfg.checkpoint_every < 0 or cfg.validate_every < 0:
        raise ConfigError("--train.weight_decay, --sampling.eta, --checkpoint_every and --validate_every must be >= 0")
    if cfg.lora.init not in LORA_INITS:
        raise ConfigError(f"--lora.init must be one of {', '.join(LORA_INITS)} (got {cfg.lora.init!r})")
    if not cfg.lora.targets:
        raise ConfigError("--lora.targets: give at least one module name, e.g. to_q,to_k,to_v,to_out.0")
    if cfg.model.family != "auto" and cfg.model.family not in FAMILIES:
        raise ConfigError(f"--model.family must be auto or one of {', '.join(FAMILIES)} (got {cfg.model.family!r})")
    if not cfg.output_dir.strip():
        raise ConfigError("--output_dir is empty; give the folder the run writes to")


LORA_INITS = ("gaussian", "default")
# Settings a checkpoint's LoRA depends on: --resume refuses to continue under other values.
MODEL_KEYS = ("model.source", "model.family", "model.config_dir", "lora.rank", "lora.alpha", "lora.init", "lora.targets")


def to_dict(cfg: SPOConfig) -> dict:
    return typed_config.to_dict(cfg)
