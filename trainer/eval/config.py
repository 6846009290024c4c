"""`python -m trainer.eval` settings: typed dataclasses, presets as data, YAML and --section.field overrides.

Precedence: preset < YAML file (--config) < command line. `--lora` may be repeated (each adds one
LoRA to compare with the base); `--scorers` takes `name=PATH,name=PATH` (see trainer/scorers).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# The model and DDIM sections are trainer.spo's too (trainer/config_sections.py).
from ..config_sections import DDIMConfig, ModelConfig
# The project's one config machinery (trainer/typed_config.py); `build_config` is the only caller.
from ..typed_config import ConfigError, build, fields_of  # noqa: F401 (ConfigError, fields_of re-exported)

SHAPES_DEFAULT_LORA = "outputs/spo-shapes/spo-shapes.safetensors"


@dataclass
class SamplingConfig(DDIMConfig):
    """The DDIM settings (η = 0: the paper evaluates with deterministic DDIM), then the image seeds and batching."""

    seed: int = 0
    """image j of prompt i uses seed + i·images_per_prompt + j, the same for every model"""
    images_per_prompt: int = 1
    batch_size: int = 8
    """images per sampling call"""


@dataclass
class ScoringConfig:
    batch_size: int = 16
    """images per scorer call"""
    dtype: str = "auto"
    """auto (fp16 on a GPU, fp32 on the CPU) | fp32 | fp16 | bf16, for scorers and generation"""


@dataclass
class AssetsConfig:
    """Files some released checkpoints need beside their weights; found next to the checkpoint when empty."""

    clip_tokenizer: str = ""
    """CLIP tokenizer folder (vocab.json, merges.txt) for HPSv2 and released SPM files"""
    bert_tokenizer: str = ""
    """bert-base-uncased tokenizer folder (vocab.txt) for ImageReward"""
    aesthetic_clip: str = ""
    """CLIP ViT-L/14 folder (openai/clip-vit-large-patch14) under the LAION aesthetic MLP"""


@dataclass
class EvalConfig:
    preset: str = "shapes"
    prompts: str = "shapes-heldout"
    """prompt file (.txt, .tsv PartiPrompts, .json HPDv2, .csv DrawBench, .parquet / datasets folder Pick-a-Pic), or shapes-heldout | shapes-train"""
    max_prompts: int = 0
    """use the first N prompts (0 = all)"""
    lora: list[str] = field(default_factory=list)
    """LoRA file(s) to compare with the base model; repeat --lora or give a comma list"""
    lora_scale: float = 1.0
    scorers: list[str] = field(default_factory=list)
    """name=PATH list: pickscore, hpsv2, imagereward, aesthetic, clipscore, spm (+ shapes-* ground truth); label=KIND:PATH for a custom label"""
    output_dir: str = "outputs/eval-shapes"
    """images, scores, report.md/json and gallery.html; rerunning resumes from what is there"""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N"""
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    assets: AssetsConfig = field(default_factory=AssetsConfig)


SHAPES_SCORERS = [
    "shapes-aesthetic", "shapes-alignment", "shapes-utility", "shapes-preference", "shapes-spm", "clipscore=shapes-clip",
]

PRESETS: dict[str, dict[str, Any]] = {
    # ShapesWorld, offline in a couple of minutes on a CPU: the shipped base against the default SPO run.
    "shapes": {
        "model.source": "shapes",
        "prompts": "shapes-heldout",
        "lora": [SHAPES_DEFAULT_LORA],
        "scorers": SHAPES_SCORERS,
        "sampling.images_per_prompt": 4,
        "sampling.batch_size": 32,
        "output_dir": "outputs/eval-shapes",
    },
    # The paper's evaluation (Pick-a-Pic v1 validation_unique, 500 prompts): DDIM 20 steps, CFG 5.0, one image each.
    "paper": {
        "model.source": "",
        "prompts": "",
        "lora": [],
        "scorers": [],
        "sampling.num_steps": 20,
        "sampling.guidance_scale": 5.0,
        "sampling.eta": 0.0,
        "sampling.images_per_prompt": 1,
        "sampling.batch_size": 8,
        "output_dir": "outputs/eval",
    },
}


def build_config(preset: str | None = None, yaml_path: str | None = None, overrides: dict[str, Any] | None = None) -> EvalConfig:
    """Preset, then YAML file, then overrides (trainer.typed_config: every value type-checked); validated."""
    cfg = build(EvalConfig, PRESETS, preset=preset, yaml_path=yaml_path, overrides=overrides, default_preset="shapes")
    validate(cfg)
    return cfg


def validate(cfg: EvalConfig) -> None:
    s = cfg.sampling
    if s.num_steps < 1:
        raise ConfigError(f"--sampling.num_steps must be >= 1 (got {s.num_steps})")
    if s.eta < 0:
        raise ConfigError(f"--sampling.eta must be >= 0 (got {s.eta})")
    if s.images_per_prompt < 1 or s.batch_size < 1 or cfg.scoring.batch_size < 1:
        raise ConfigError("--sampling.images_per_prompt, --sampling.batch_size and --scoring.batch_size must be >= 1")
    if cfg.max_prompts < 0:
        raise ConfigError(f"--max_prompts must be >= 0 (got {cfg.max_prompts})")
    if cfg.scoring.dtype not in ("auto", "fp32", "fp16", "bf16"):
        raise ConfigError(f"--scoring.dtype must be auto, fp32, fp16 or bf16 (got {cfg.scoring.dtype!r})")
    if not cfg.model.source:
        raise ConfigError("--model.source: give the base model (a diffusers directory or a .safetensors checkpoint)")
    if not cfg.prompts:
        raise ConfigError("--prompts: give a prompt set (e.g. Pick-a-Pic validation_unique parquet, PartiPrompts.tsv, a .txt file)")
    if not cfg.scorers:
        raise ConfigError("--scorers: give at least one, e.g. --scorers pickscore=PickScore_v1/,aesthetic=sac+logos+ava1-l14-linearMSE.pth")


def to_dict(cfg: EvalConfig) -> dict:
    return dataclasses.asdict(cfg)
