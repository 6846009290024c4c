"""Turn config strings into objects: the model, the scorer, the prompt list.

"shapes…" names resolve to ShapesWorld's shipped weights; anything else is a path or hub id.
"""
from __future__ import annotations

from pathlib import Path

from ..models import DiffusionModel, load_model
from .config import ConfigError, SPOConfig

SHAPES_SCORERS = ("shapes-spm", "shapes-preference", "shapes-aesthetic", "shapes-utility")


def shapes_weights(part: str) -> Path:
    """A shipped ShapesWorld model directory (pipeline | preference | spm), checked to be there."""
    from ..shapes import REBUILD, ShapesWeightsError, check_weights, weights_dir

    if part == "pipeline":
        return check_weights()
    path = weights_dir(part)
    if not path.is_dir() or not any(path.iterdir()):
        raise ShapesWeightsError(f"ShapesWorld {part} model not found at {path}; rebuild it with `{REBUILD}`")
    return path


def resolve_model(cfg: SPOConfig, device="cpu") -> DiffusionModel:
    source = cfg.model.source
    if source == "shapes":
        source = str(shapes_weights("pipeline"))
    family = cfg.model.family
    if cfg.model.source == "shapes" and family == "auto":
        family = "shapes"
    return load_model(source, family=family, device=device, config_dir=cfg.model.config_dir or None)


def resolve_scorer(cfg: SPOConfig, device="cpu"):
    """An object with score(images, prompts, timesteps) -> Tensor[B]."""
    source = cfg.scorer.source
    if source == "shapes-aesthetic":
        from ..shapes import AestheticScore

        return AestheticScore()
    if source == "shapes-utility":
        from ..shapes import CombinedScore

        return _Scaled(CombinedScore(), 10.0)
    from ..spm import load_spm

    if source in ("shapes-spm", "shapes-preference"):
        source = str(shapes_weights("spm" if source == "shapes-spm" else "preference"))
    elif not Path(source).exists():
        raise ConfigError(
            f"--scorer.source: no such SPM file or directory {source!r} (download the released SPM checkpoint, "
            f"or use one of {', '.join(SHAPES_SCORERS)})"
        )
    try:
        return load_spm(source, device=device)
    except ValueError as e:  # trainer.spm's messages already name the file and the problem
        raise ConfigError(f"--scorer.source: {e}") from None


def resolve_prompts(cfg: SPOConfig) -> list[str]:
    if cfg.prompts == "shapes":
        from ..shapes import train_captions

        return train_captions()
    if not cfg.prompts:
        raise ConfigError("--prompts: give a text file with one prompt per line (e.g. 4,000 Pick-a-Pic prompts)")
    path = Path(cfg.prompts)
    if not path.is_file():
        raise ConfigError(f"--prompts: no such file {cfg.prompts}")
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise ConfigError(f"--prompts: {cfg.prompts} is a binary file; give a text file with one prompt per line")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"--prompts: {cfg.prompts} is not UTF-8 text (line {line}); save it as UTF-8") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"--prompts: {cfg.prompts} holds no prompts")
    return prompts


class _Scaled:
    """A scorer times a constant: the rater's 0–1 utility on the 0–10 scale of the aesthetic, so one
    pair threshold (a gap of softmax probabilities) means the same for both ground-truth rewards."""

    def __init__(self, scorer, factor: float):
        self.scorer, self.factor = scorer, factor

    def score(self, images, prompts, timesteps):
        return self.factor * self.scorer.score(images, prompts, timesteps)
