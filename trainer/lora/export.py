"""LoraState -> the tensors and metadata of each layout we write (pure; writing is in files.py)."""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from collections import Counter
from typing import Mapping

import safetensors.torch
import torch

from ..families import FAMILIES
from ..families import get as get_family
from .names import KOHYA_PREFIX, diffusers_to_ldm, path_to_kohya
from .state import LoraModule, LoraState

# A1111 applies a q/k/v LoRA on SDXL's OpenCLIP encoder (nn.MultiheadAttention there) only when
# all four projections of the layer are present, and silently skips the layer otherwise.
OPENCLIP_ATTN = ("q_proj", "k_proj", "v_proj", "out_proj")

# the metadata we write per family (kohya ss_*, sai_model_spec), from the family table
BASE_MODEL_VERSION = {n: f.ss_base_model_version for n, f in FAMILIES.items()}
ARCHITECTURE = {n: f.modelspec_architecture for n, f in FAMILIES.items()}
IMPLEMENTATION = {n: f.modelspec_implementation for n, f in FAMILIES.items()}
RESOLUTION = {n: f"{f.resolution}x{f.resolution}" for n, f in FAMILIES.items()}
DEFAULT_BASE_MODEL = {n: f.base_model for n, f in FAMILIES.items()}


def _naming(family: str) -> str:
    return get_family(family).lora_naming


def complete_openclip_layers(modules: Mapping[str, LoraModule]) -> dict[str, LoraModule]:
    """Add zero LoRAs so every text_encoder_2 attention layer touched has all of q, k, v, out_proj.

    A zero up-weight adds nothing to the layer, so the model is unchanged; A1111 then applies
    the layer instead of skipping it.
    """
    out = dict(modules)
    pattern = re.compile(r"^text_encoder_2\.(text_model\.encoder\.layers\.\d+\.self_attn)\.(\w+)$")
    layers: dict[str, list[LoraModule]] = {}
    for key, mod in modules.items():
        m = pattern.match(key)
        if m and m.group(2) in OPENCLIP_ATTN:
            layers.setdefault(m.group(1), []).append(mod)
    for layer, present in layers.items():
        ref = present[0]
        for proj in OPENCLIP_ATTN:
            key = f"text_encoder_2.{layer}.{proj}"
            if key not in out:
                width = int(ref.down.shape[1])  # q, k, v, out_proj are all width -> width
                out[key] = LoraModule(ref.down.new_zeros(ref.rank, width), ref.up.new_zeros(width, ref.rank), ref.alpha)
    return out


def kohya_key(component: str, path: str, family: str, unet_config: Mapping | None = None) -> str:
    """kohya/WebUI module name (without .lora_down.weight) of one module."""
    naming = _naming(family)
    if (naming, component) not in KOHYA_PREFIX:
        raise ValueError(f"a {family} LoRA has no {component} (kohya prefixes: lora_unet, lora_te / lora_te1, lora_te2)")
    if component == "unet" and naming == "sdxl":
        from .layouts import unet_config_for

        path = diffusers_to_ldm(path, unet_config or unet_config_for("sdxl"))
    return f"{KOHYA_PREFIX[(naming, component)]}_{path_to_kohya(path)}"


def to_kohya_state_dict(
    state: LoraState, family: str | None = None, dtype: torch.dtype | None = None, unet_config: Mapping | None = None
) -> dict[str, torch.Tensor]:
    """kohya/WebUI tensors: <name>.lora_down.weight, .lora_up.weight (in `dtype`), .alpha (fp32 scalar)."""
    family = family or state.family
    out: dict[str, torch.Tensor] = {}
    modules = complete_openclip_layers(state.modules) if _naming(family) == "sdxl" else state.modules
    for key, mod in modules.items():
        component, path = key.split(".", 1)
        name = kohya_key(component, path, family, unet_config)
        if f"{name}.lora_down.weight" in out:
            raise ValueError(f"two modules map to the kohya name {name}")
        down, up = mod.down, mod.up
        if dtype is not None:
            down, up = down.to(dtype), up.to(dtype)
        out[f"{name}.lora_down.weight"] = down.detach().cpu().contiguous()
        out[f"{name}.lora_up.weight"] = up.detach().cpu().contiguous()
        out[f"{name}.alpha"] = torch.tensor(mod.effective_alpha, dtype=torch.float32)
    return out


def _common(counter: Counter):
    return counter.most_common(1)[0][0] if counter else None


def _format_alpha(alpha: float) -> str:
    return str(float(alpha))


def kohya_metadata(
    state: LoraState,
    family: str,
    *,
    output_name: str,
    base_model_name: str | None = None,
    training_comment: dict | str | None = None,
    now: datetime.datetime | None = None,
) -> dict[str, str]:
    """The ss_* and modelspec.* fields kohya's trainer writes and A1111 / kohya tools read (all strings).

    The sshs_* hashes are added by `with_model_hashes`, once the tensors are final.
    """
    _naming(family)
    linear = [m for m in state.modules.values() if not m.is_conv or tuple(m.down.shape[2:]) == (1, 1)]
    conv = [m for m in state.modules.values() if m.is_conv and tuple(m.down.shape[2:]) != (1, 1)]
    dim = _common(Counter(m.rank for m in linear)) or _common(Counter(m.rank for m in conv))
    alpha = _common(Counter(m.effective_alpha for m in linear)) or _common(Counter(m.effective_alpha for m in conv))
    if isinstance(training_comment, dict):
        training_comment = json.dumps(training_comment, sort_keys=True)
    now = now or datetime.datetime.now()
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(dim),
        "ss_network_alpha": _format_alpha(alpha),
        "ss_base_model_version": BASE_MODEL_VERSION[family],
        "ss_v2": "False",
        "ss_output_name": output_name,
        "ss_sd_model_name": base_model_name or DEFAULT_BASE_MODEL[family],
        "ss_training_comment": training_comment or "",
        "ss_training_started_at": str(now.timestamp()),
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": ARCHITECTURE[family],
        "modelspec.implementation": IMPLEMENTATION[family],
        "modelspec.title": output_name,
        "modelspec.resolution": RESOLUTION[family],
        "modelspec.date": now.replace(microsecond=0).isoformat(),
        "modelspec.prediction_type": "epsilon",
        "spo_studio.family": family,
    }
    if conv:
        args = {"conv_dim": str(_common(Counter(m.rank for m in conv))),
                "conv_alpha": _format_alpha(_common(Counter(m.effective_alpha for m in conv)))}
        meta["ss_network_args"] = json.dumps(args)
    return meta


def addnet_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) exactly as kohya's precalculate_safetensors_hashes.

    model hash: sha256 of the safetensors data section (everything after the header), which is
    also what A1111 / sd-webui-additional-networks compute from the saved file. legacy hash:
    first 8 hex digits of sha256 over bytes 0x100000..0x110000 of the file serialised with only
    the ss_* metadata.
    """
    ss_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    blob = safetensors.torch.save(dict(tensors), ss_only)
    header_len = int.from_bytes(blob[:8], "little")
    model_hash = hashlib.sha256(blob[8 + header_len :]).hexdigest()
    legacy_hash = hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]
    return model_hash, legacy_hash


def with_model_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> dict[str, str]:
    model_hash, legacy_hash = addnet_hashes(tensors, metadata)
    return {**metadata, "sshs_model_hash": model_hash, "sshs_legacy_hash": legacy_hash}


def module_path_for(component: str, path: str, text_model_level: bool) -> str:
    """The path a live transformers model uses (CLIPTextModel in transformers 5 lacks `text_model.`)."""
    if component != "unet" and not text_model_level and path.startswith("text_model."):
        return path[len("text_model."):]
    return path


def lora_config_dict(modules: Mapping[str, LoraModule]) -> dict:
    """peft LoraConfig fields (r, lora_alpha, target_modules, rank/alpha patterns) for these modules.

    modules: module path -> LoraModule of one model. Patterns are escaped full paths, so each
    matches exactly one layer.
    """
    r = _common(Counter(m.rank for m in modules.values()))
    alpha = _common(Counter(m.effective_alpha for m in modules.values()))
    rank_pattern = {re.escape(p): m.rank for p, m in modules.items() if m.rank != r}
    alpha_pattern = {re.escape(p): m.effective_alpha for p, m in modules.items() if m.effective_alpha != alpha}
    return {
        "r": r,
        "lora_alpha": alpha,
        "target_modules": sorted(modules),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "lora_dropout": 0.0,
        "bias": "none",
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
    }


def live_text_paths() -> bool:
    """Whether the installed transformers' CLIPTextModel has the `text_model.` level."""
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        model = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                             num_attention_heads=1, vocab_size=10, max_position_embeddings=4))
    return hasattr(model, "text_model")


def to_diffusers_state_dict(state: LoraState, dtype: torch.dtype | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """diffusers (PEFT-era) form: "<component>.<path>.lora_A.weight" / ".lora_B.weight" and the
    `lora_adapter_metadata` entry diffusers reads the per-module ranks and alphas from.

    Text-encoder paths keep `text_model.` (the form diffusers' loader expects for every
    transformers version).
    """
    tensors: dict[str, torch.Tensor] = {}
    packed: dict[str, object] = {}
    for component in state.components():
        mods = state.component(component)
        for path, mod in mods.items():
            down, up = (mod.down, mod.up) if dtype is None else (mod.down.to(dtype), mod.up.to(dtype))
            tensors[f"{component}.{path}.lora_A.weight"] = down.detach().cpu().contiguous()
            tensors[f"{component}.{path}.lora_B.weight"] = up.detach().cpu().contiguous()
        # target/pattern names match as suffixes in peft, so text paths without "text_model."
        # find the layers with and without that level (transformers 4 and 5)
        names = {module_path_for(component, p, False): m for p, m in mods.items()}
        for k, v in lora_config_dict(names).items():
            packed[f"{component}.{k}"] = v
    return tensors, {"lora_adapter_metadata": json.dumps(packed, indent=2, sort_keys=True)}


def to_peft_state_dict(
    state: LoraState, component: str = "unet", dtype: torch.dtype | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """Bare PEFT form of one component: ("base_model.model.<path>.lora_A.weight" tensors, LoraConfig dict).

    Paths are those of the live model (see `module_path_for`), so `PeftModel.from_pretrained`
    on the component finds every layer.
    """
    mods = state.component(component)
    if not mods:
        raise ValueError(f"this LoRA has no {component} modules (it has: {', '.join(state.components())})")
    level = live_text_paths()
    live = {module_path_for(component, p, level): m for p, m in mods.items()}
    tensors = {}
    for path, mod in live.items():
        down, up = (mod.down, mod.up) if dtype is None else (mod.down.to(dtype), mod.up.to(dtype))
        tensors[f"base_model.model.{path}.lora_A.weight"] = down.detach().cpu().contiguous()
        tensors[f"base_model.model.{path}.lora_B.weight"] = up.detach().cpu().contiguous()
    config = {"peft_type": "LORA", "task_type": None, **lora_config_dict(live)}
    return tensors, config
