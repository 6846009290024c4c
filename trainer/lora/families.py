"""Which base model a LoRA fits: module tables of the real SD-1.5 / SDXL models, family detection.

The tables come from the shipped configs (trainer/configs) built on the meta device, so they
hold the exact module names and weight shapes of the real models without any weights.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Mapping

import torch

from ..families import FAMILIES, REAL_FAMILIES
from .errors import LoraFileError
from .state import LoraModule, canonical_text_path

# metadata value prefixes -> family (the family table)
_SS_VERSION = tuple((p, n) for n in REAL_FAMILIES for p in FAMILIES[n].ss_version_prefixes)
_ARCHITECTURE = tuple((p, n) for n in REAL_FAMILIES for p in FAMILIES[n].architecture_prefixes)

ModuleTable = dict[str, tuple[int, ...]]  # module path -> weight shape ([out, in] or [out, in, kh, kw])


def weight_shapes(model: torch.nn.Module, text: bool = False) -> ModuleTable:
    """Path -> weight shape of every Linear and Conv2d in `model` (text paths canonicalised)."""
    table = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            table[canonical_text_path(name) if text else name] = tuple(mod.weight.shape)
    return table


@lru_cache(maxsize=None)
def real_module_table(family: str) -> dict[str, ModuleTable]:
    """component -> ModuleTable of the real base model of `family` ("sd15" or "sdxl")."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from ..configs import load_component_config

    out = {}
    with torch.device("meta"):
        out["unet"] = weight_shapes(UNet2DConditionModel.from_config(load_component_config(family, "unet")))
        te = CLIPTextModel(CLIPTextConfig(**load_component_config(family, "text_encoder")))
        out["text_encoder"] = weight_shapes(te, text=True)
        if family == "sdxl":
            te2 = CLIPTextModelWithProjection(CLIPTextConfig(**load_component_config(family, "text_encoder_2")))
            out["text_encoder_2"] = weight_shapes(te2, text=True)
    return out


def shape_mismatch(module: LoraModule, weight_shape: tuple[int, ...]) -> str | None:
    """Why `module` cannot adapt a layer whose weight has `weight_shape`; None when it can."""
    out_f, in_f = weight_shape[0], weight_shape[1]
    kernel = tuple(weight_shape[2:]) or (1, 1)
    got_out, got_in = int(module.up.shape[0]), int(module.down.shape[1])
    got_kernel = tuple(module.down.shape[2:]) or (1, 1)
    if (got_out, got_in) != (out_f, in_f) or got_kernel != kernel:
        return f"LoRA maps {got_in}->{got_out} (kernel {got_kernel}) but the layer is {in_f}->{out_f} (kernel {kernel})"
    if len(weight_shape) == 2 and module.down.ndim != 2:
        return "conv-shaped LoRA weights for a Linear layer"
    return None


def fit_problem(modules: Mapping[str, LoraModule], tables: Mapping[str, ModuleTable]) -> str | None:
    """First reason why `modules` ("<component>.<path>" keys) do not fit `tables`; None if all fit."""
    for key, mod in modules.items():
        component, path = key.split(".", 1)
        table = tables.get(component)
        if table is None:
            return f"{component} is not part of this model"
        if path not in table:
            return f"{component} has no layer {path}"
        why = shape_mismatch(mod, table[path])
        if why:
            return f"{component}.{path}: {why}"
    return None


def family_from_metadata(metadata: Mapping[str, str]) -> str | None:
    if metadata.get("spo_studio.family") in FAMILIES:
        return metadata["spo_studio.family"]
    version = metadata.get("ss_base_model_version", "")
    for prefix, fam in _SS_VERSION:
        if version.startswith(prefix):
            return fam
    arch = metadata.get("modelspec.architecture", "")
    for prefix, fam in _ARCHITECTURE:
        if arch.startswith(prefix):
            return fam
    if version.startswith("sd_v2") or arch.startswith("stable-diffusion-v2"):
        return "sd2"
    return None


def family_from_names(component_paths: list[tuple[str, str]]) -> str | None:
    """A family hint from key names alone: SDXL-only modules or SD-1.5-only block indices."""
    for component, path in component_paths:
        if component == "text_encoder_2" or path.startswith(("add_embedding", "label_emb")):
            return "sdxl"
        if path.startswith(("down_blocks.3", "up_blocks.3")):
            return "sd15"
    return None
