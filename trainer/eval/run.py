"""One evaluation: check every input, generate what is missing, score what is unscored, write the report."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..atomic import write_text
from ..scorers import ScorerError, ScorerSpec, load_scorer
from .config import SHAPES_DEFAULT_LORA, ConfigError, EvalConfig, to_dict
from .generate import check_lora_family, generate_missing, image_keys, plan_variants
from .prompts import read_prompts
from .report import build_report, gallery_html, to_markdown, write_outputs
from .scoring import score_all


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device here; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device: cannot read {name!r}; use auto, cpu, cuda or cuda:N") from None


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def model_family(cfg: EvalConfig) -> str | None:
    """The base model's family without loading its weights (None for a hub id: known after loading)."""
    from ..models import _read_single_file_keys, detect_family_from_dir, detect_family_from_keys

    if cfg.model.family != "auto":
        return cfg.model.family
    if cfg.model.source == "shapes":
        return "shapes"
    p = Path(cfg.model.source).expanduser()
    if p.is_dir():
        return detect_family_from_dir(p)
    if p.is_file():
        return detect_family_from_keys(_read_single_file_keys(p), str(p))
    return None


def check_inputs(cfg: EvalConfig):
    """Everything a run needs, checked before anything heavy loads: (prompts, variants, scorer specs)."""
    if cfg.preset == "shapes" and cfg.lora == [SHAPES_DEFAULT_LORA] and not Path(SHAPES_DEFAULT_LORA).is_file():
        raise ConfigError(
            f"--lora: no ShapesWorld LoRA at {SHAPES_DEFAULT_LORA}; run `python -m trainer.spo` first "
            "(the default ShapesWorld run, a few minutes on a CPU), or pass --lora FILE"
        )
    if cfg.model.source not in ("shapes",) and not Path(cfg.model.source).expanduser().exists():
        from ..models import HUB_ID

        if not HUB_ID.match(cfg.model.source):
            raise ConfigError(f"--model.source: no such model directory or file {cfg.model.source}")
    prompts = read_prompts(cfg.prompts).head(cfg.max_prompts)
    specs = [ScorerSpec.parse(s) for s in cfg.scorers]
    seen = set()
    for s in specs:
        if s.label in seen:
            raise ConfigError(f"--scorers: label {s.label!r} given twice; name one of them label=KIND:PATH")
        seen.add(s.label)
        path = s.resolved_path()
        if s.path and not Path(path).expanduser().exists():
            raise ScorerError(f"--scorers {s.label}: no such file or folder {s.path}")
    variants = plan_variants(cfg)
    family = model_family(cfg)
    if family is not None:
        for v in variants[1:]:
            check_lora_family(v.lora, family)
    return prompts, variants, specs


def evaluate(cfg: EvalConfig, progress: bool = True) -> dict:
    """Run (or resume) the evaluation described by cfg; returns {"table", "markdown", "paths", "generated"}."""
    prompts, variants, specs = check_inputs(cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.scoring.dtype, device)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "eval_config.json", json.dumps(to_dict(cfg), indent=1))
    keys = image_keys(prompts, cfg)

    def load_model():
        from ..spo.sources import shapes_weights
        from ..models import load_model as load

        source, family = cfg.model.source, cfg.model.family
        if source == "shapes":
            source, family = str(shapes_weights("pipeline")), "shapes" if family == "auto" else family
        return load(source, family=family, dtype=dtype, device=device, config_dir=cfg.model.config_dir or None)

    generated = generate_missing(cfg, prompts, variants, out, load_model, progress=progress)
    scores = score_all(
        specs, variants, keys, prompts, out,
        lambda spec: load_scorer(spec, device=device, dtype=dtype, assets=cfg.assets),
        batch_size=cfg.scoring.batch_size, progress=progress,
    )
    cfg_dict = to_dict(cfg)
    table = build_report(cfg_dict, prompts, variants, keys, specs, scores)
    markdown = to_markdown(table)
    paths = write_outputs(out, table, markdown, gallery_html(table, prompts, variants, keys, scores))
    return {"table": table, "markdown": markdown, "paths": paths, "generated": generated}
