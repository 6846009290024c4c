"""SPO configuration: typed dataclasses, presets as data, YAML files and dotted CLI overrides.

Precedence: preset < YAML file (--config) < command-line overrides (--section.field value).
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..families import FAMILIES


class ConfigError(ValueError):
    """A bad config key or value; the message is one line naming the flag."""


@dataclass
class ModelConfig:
    source: str = "shapes"
    """diffusers directory, hub id, single-file .safetensors, or "shapes" (the shipped ShapesWorld pipeline)"""
    family: str = "auto"
    """auto | sd15 | sdxl | shapes"""
    config_dir: str = ""
    """diffusers-layout config dir with tokenizers, for single-file checkpoints offline"""


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
class SamplingConfig:
    num_steps: int = 20
    guidance_scale: float = 5.0
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
    rounds_per_epoch: int = 2
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
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    """no | fp16 | bf16"""


@dataclass
class SPOConfig:
    preset: str = "shapes"
    prompts: str = "shapes"
    """text file with one prompt per line, or "shapes" (ShapesWorld training captions)"""
    output_dir: str = "outputs/spo-shapes"
    seed: int = 0
    checkpoint_every: int = 1
    """epochs between checkpoints"""
    validate_every: int = 0
    """epochs between validation grids (0 = only at the end)"""
    resume: bool = False
    """continue from the newest checkpoint in output_dir"""
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
        "sampling.rounds_per_epoch": 2,
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
        "sampling.rounds_per_epoch": 40,
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
        "sampling.rounds_per_epoch": 200,
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


def field_docs(cls) -> dict[str, str]:
    """Docstrings written under dataclass fields (read from source; used by --help)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    docs, body = {}, tree.body[0].body
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(getattr(b, "value", None), ast.Constant):
            docs[a.target.id] = str(b.value.value)
    return docs


def flat_fields(cfg=None, prefix: str = "") -> dict[str, tuple[Any, type, str]]:
    """{"sampling.k": (value, type, doc), ...} for every leaf field."""
    cfg = cfg if cfg is not None else SPOConfig()
    hints = typing.get_type_hints(type(cfg))
    docs = field_docs(type(cfg))
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flat_fields(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = (value, hints[f.name], docs.get(f.name, ""))
    return out


def _coerce(key: str, raw: Any, typ) -> Any:
    if not isinstance(raw, str):
        if typing.get_origin(typ) is list and not isinstance(raw, list):
            raise ConfigError(f"--{key}: expected a list, got {raw!r}")
        return raw
    try:
        if typ is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            return int(raw)
        if typ is float:
            return float(raw)
        if typing.get_origin(typ) is list:
            return [s.strip() for s in raw.split(",") if s.strip()]
        return raw
    except ValueError:
        raise ConfigError(f"--{key}: cannot read {raw!r} as {getattr(typ, '__name__', typ)}") from None


def set_value(cfg: SPOConfig, key: str, raw: Any) -> None:
    fields = flat_fields(cfg)
    if key not in fields:
        near = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
        hint = f"; did you mean --{near[0]}?" if near else "; see --help for the list"
        raise ConfigError(f"unknown config key --{key}{hint}")
    obj = cfg
    *parents, leaf = key.split(".")
    for p in parents:
        obj = getattr(obj, p)
    setattr(obj, leaf, _coerce(key, raw, fields[key][1]))


def flatten_mapping(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_mapping(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def build_config(preset: str = "shapes", yaml_path: str | None = None, overrides: dict[str, Any] | None = None) -> SPOConfig:
    """Preset, then YAML file, then overrides; validated."""
    if preset not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = SPOConfig(preset=preset)
    for k, v in PRESETS[preset].items():
        set_value(cfg, k, v)
    if yaml_path:
        import yaml

        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(f"--config: no such file {yaml_path}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"--config {yaml_path}: expected a mapping of config keys")
        for k, v in flatten_mapping(data).items():
            if k == "preset":
                continue
            set_value(cfg, k, v)
    for k, v in (overrides or {}).items():
        set_value(cfg, k, v)
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
    if t.mixed_precision not in ("no", "fp16", "bf16"):
        raise ConfigError(f"--train.mixed_precision must be no, fp16 or bf16 (got {t.mixed_precision!r})")
    if cfg.lora.rank < 1:
        raise ConfigError(f"--lora.rank must be >= 1 (got {cfg.lora.rank})")


def to_dict(cfg: SPOConfig) -> dict:
    return dataclasses.asdict(cfg)
