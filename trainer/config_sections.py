"""Config sections more than one command reads: the base model and the DDIM sampler.

`python -m trainer.spo` and `python -m trainer.eval` load the same models (trainer.models.load_model)
and sample with the same DDIM step (trainer.schedule.ddim_step), so each of these fields, with its
type, default and help, is written once here; each command's config subclasses or embeds them
(trainer/spo/config.py, trainer/eval/config.py) and keeps its own flag names and presets.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelConfig:
    source: str = "shapes"
    """diffusers directory, hub id, single-file .safetensors, or "shapes" (the shipped ShapesWorld pipeline)"""
    family: str = "auto"
    """auto | sd15 | sdxl | shapes"""
    config_dir: str = ""
    """diffusers-layout config dir with tokenizers, for single-file checkpoints offline"""


@dataclass
class DDIMConfig:
    """The sampler's settings; a command's `sampling` section adds its own fields after these."""

    num_steps: int = 20
    """DDIM steps"""
    guidance_scale: float = 5.0
    """classifier-free guidance scale"""
    eta: float = 0.0
    """DDIM η: 0 = deterministic DDIM (the paper's evaluation sampler), 1 = DDPM-like"""
