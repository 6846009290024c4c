"""Where ShapesWorld's shipped weights live, and loading them with a one-line error when they are broken."""
from __future__ import annotations

import json
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "weights"
REBUILD = "python -m trainer.shapes.build --stage all"
PIPELINE_PARTS = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler")


class ShapesWeightsError(RuntimeError):
    """Raised when a shipped ShapesWorld model is missing or unreadable; the message names the rebuild command."""


def weights_dir(part: str = "pipeline") -> Path:
    """Path of a shipped part: "pipeline", "clip", "preference", "spm", or "record.json"."""
    return WEIGHTS / part


def check_weights(directory: str | Path | None = None) -> Path:
    """Check that a pipeline directory has every SD part with readable configs; return its path.

    Raises ShapesWeightsError (one line, naming the rebuild command) otherwise.
    """
    d = Path(directory) if directory is not None else weights_dir("pipeline")
    if not d.is_dir():
        raise ShapesWeightsError(f"ShapesWorld pipeline not found at {d}; rebuild it with `{REBUILD}`")
    for part in PIPELINE_PARTS:
        if not (d / part).exists():
            raise ShapesWeightsError(f"ShapesWorld pipeline {d} lacks {part}; rebuild it with `{REBUILD}`")
    for cfg in ["model_index.json"] + [f"{p}/config.json" for p in ("unet", "vae", "text_encoder")]:
        try:
            json.loads((d / cfg).read_text())
        except (OSError, ValueError) as e:
            raise ShapesWeightsError(f"ShapesWorld pipeline file {d / cfg} is unreadable ({e}); rebuild it with `{REBUILD}`") from None
    for part in ("unet", "vae", "text_encoder"):
        if not list((d / part).glob("*.safetensors")):
            raise ShapesWeightsError(f"ShapesWorld pipeline {d / part} has no weights; rebuild it with `{REBUILD}`")
    return d


def load_shapes_pipeline_dir(directory: str | Path | None = None, **kwargs):
    """StableDiffusionPipeline of the shipped (or given) ShapesWorld directory, as SD-1.5 is loaded.

    kwargs go to `from_pretrained`. Corrupted files raise ShapesWeightsError naming the rebuild command.
    """
    from diffusers import StableDiffusionPipeline

    d = check_weights(directory)
    try:
        return StableDiffusionPipeline.from_pretrained(str(d), safety_checker=None, requires_safety_checker=False, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ShapesWeightsError(f"ShapesWorld pipeline {d} failed to load ({first[:200]}); rebuild it with `{REBUILD}`") from None
