"""Component configs of the real base models, shipped so that loading works offline.

`sd15/` mirrors runwayml/stable-diffusion-v1-5 and `sdxl/` mirrors
stabilityai/stable-diffusion-xl-base-1.0: `unet/`, `vae/`, `text_encoder/`
(`text_encoder_2/` for SDXL) hold `config.json`, `scheduler/` holds
`scheduler_config.json`, each in the diffusers/transformers layout so that
`UNet2DConditionModel.from_config`, `CLIPTextConfig.from_pretrained` and
`from_single_file(config=...)`-style loaders read them unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..families import REAL_FAMILIES

FAMILIES = REAL_FAMILIES  # the family table's real base models (trainer/families.py)

_ROOT = Path(__file__).resolve().parent


def config_dir(family: str) -> Path:
    """Directory holding the component configs of `family` ("sd15" or "sdxl")."""
    if family not in FAMILIES:
        raise ValueError(f"no shipped configs for model family {family!r}; expected one of {FAMILIES}")
    return _ROOT / family


def load_component_config(family: str, component: str) -> dict:
    """The JSON config of one component ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler")."""
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    path = config_dir(family) / component / name
    if not path.is_file():
        raise ValueError(f"model family {family!r} has no component {component!r} (looked for {path.name})")
    return json.loads(path.read_text())
