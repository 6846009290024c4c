"""Reading any LoRA layout: tensor names -> LoraState (pure; file access lives in files.py).

Layouts understood, per key (a file may mix them):
  kohya          lora_unet_<m>.lora_down.weight / .lora_up.weight / .alpha  (lora_te, lora_te1, lora_te2)
  diffusers_old  unet.<m>.lora.down.weight / .lora.up.weight, text_encoder.<m>.lora_linear_layer.*,
                 attention-processor form unet.<...>.attn1.processor.to_q_lora.down.weight
  diffusers      unet.<m>.lora_A.weight / .lora_B.weight (alphas in the `lora_adapter_metadata` entry)
  peft           base_model.model.<m>.lora_A.weight (alphas in adapter_config.json beside the file)
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping

import torch

from . import families
from .errors import LoraFileError
from .names import PREFIX_COMPONENT, is_ldm_unet_path, kohya_to_path, ldm_to_diffusers
from .state import COMPONENTS, LoraModule, LoraState, canonical_text_path

_COMPONENT = r"(?:(unet|text_encoder_2|text_encoder)\.)?"
_KOHYA = re.compile(r"^(lora_unet|lora_te1|lora_te2|lora_te)_(.+?)\.(lora_down\.weight|lora_up\.weight|alpha)$")
_PEFT = re.compile(rf"^{_COMPONENT}(base_model\.model\.)?(.+)\.lora_(A|B)(?:\.[A-Za-z0-9_-]+)?\.weight$")
_OLD = re.compile(rf"^{_COMPONENT}(.+?)(\.lora|\.lora_linear_layer|_lora)\.(down|up)\.weight$")
_ALPHA = re.compile(rf"^{_COMPONENT}(?:base_model\.model\.)?(.+)\.alpha$")

_UNET_ROOTS = ("down_blocks", "up_blocks", "mid_block", "conv_in", "conv_out", "conv_norm_out", "time_embedding",
               "add_embedding", "input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb", "out")
_TEXT_ROOTS = ("text_model", "encoder", "embeddings", "final_layer_norm", "text_projection")
_OLD_TEXT_ATTN = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}


@dataclass
class RawEntry:
    """One module's tensors as found in the file, before its family is known."""

    component: str
    path: str  # dotted; UNet paths may still be LDM-style
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # "down" / "up" / "alpha"
    keys: list[str] = field(default_factory=list)


@dataclass
class ParsedFile:
    entries: dict[tuple[str, str], RawEntry]
    layouts: Counter
    unknown_keys: list[str]
    kohya_prefixes: set[str]


def _component_from_path(path: str) -> str | None:
    root = path.split(".", 1)[0]
    if root in _UNET_ROOTS:
        return "unet"
    if root in _TEXT_ROOTS:
        return "text_encoder"
    return None


def _clean_old_path(component: str, path: str, form: str) -> str:
    parts = [p for p in path.split(".") if p != "processor"]
    if form == "_lora" and parts:
        if component == "unet" and parts[-1] == "to_out":
            parts.append("0")
        elif component != "unet" and parts[-1] in _OLD_TEXT_ATTN:
            parts[-1] = _OLD_TEXT_ATTN[parts[-1]]
    return ".".join(parts)


def classify_key(key: str) -> tuple[str, str, str, str] | None:
    """key -> (layout, component, module path, part) or None for a key of no known layout."""
    m = _KOHYA.match(key)
    if m:
        prefix, name, tail = m.groups()
        part = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}[tail]
        return "kohya", PREFIX_COMPONENT[prefix], kohya_to_path(name), part
    m = _PEFT.match(key)
    if m:
        component, bare, path, ab = m.groups()
        layout = "peft" if bare and not component else "diffusers"
        component = component or _component_from_path(path)
        return (layout, component, path, "down" if ab == "A" else "up") if component else None
    m = _OLD.match(key)
    if m:
        component, path, form, du = m.groups()
        component = component or _component_from_path(path)
        if not component:
            return None
        return "diffusers_old", component, _clean_old_path(component, path, form), du
    m = _ALPHA.match(key)
    if m:
        component, path = m.groups()
        component = component or _component_from_path(path)
        return ("diffusers", component, path, "alpha") if component else None
    return None


def parse_keys(tensors: Mapping[str, torch.Tensor]) -> ParsedFile:
    entries: dict[tuple[str, str], RawEntry] = {}
    layouts: Counter = Counter()
    unknown: list[str] = []
    prefixes: set[str] = set()
    for key, tensor in tensors.items():
        found = classify_key(key)
        if found is None:
            unknown.append(key)
            continue
        layout, component, path, part = found
        if component != "unet":
            path = canonical_text_path(path)
        if layout == "kohya":
            prefixes.add(key.split("_", 2)[0] + "_" + key.split("_", 2)[1])
        if part != "alpha":
            layouts[layout] += 1
        entry = entries.setdefault((component, path), RawEntry(component, path))
        if part in entry.parts:
            raise LoraFileError(f"two tensors for {part} of {component}.{path} ({entry.keys[0]}, {key})")
        entry.parts[part] = tensor
        entry.keys.append(key)
    return ParsedFile(entries, layouts, unknown, prefixes)


def peft_alpha(config: Mapping, path: str, rank: int) -> float:
    """kohya-convention alpha (scale · rank) of one module under a peft LoraConfig dict."""
    alpha = float(config.get("lora_alpha", config.get("r", rank)))
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", path):
            alpha = float(value)
            break
    if config.get("use_rslora"):
        return alpha / math.sqrt(rank) * rank
    return alpha


def adapter_configs_from_metadata(metadata: Mapping[str, str]) -> dict[str, dict]:
    """component -> peft LoraConfig dict, from diffusers' `lora_adapter_metadata` entry."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    packed = json.loads(raw)
    out: dict[str, dict] = {}
    for key, value in packed.items():
        component, _, field_name = key.partition(".")
        if component in COMPONENTS:
            out.setdefault(component, {})[field_name] = value
    return out


def _module(entry: RawEntry, config: Mapping | None) -> LoraModule:
    where = f"{entry.component}.{entry.path}"
    if "down" not in entry.parts or "up" not in entry.parts:
        missing = "up" if "down" in entry.parts else "down"
        raise LoraFileError(f"{where} has no {missing} weight (keys: {', '.join(entry.keys)})")
    down, up = entry.parts["down"], entry.parts["up"]
    if down.ndim not in (2, 4) or up.ndim not in (2, 4) or (up.ndim == 4 and tuple(up.shape[2:]) != (1, 1)):
        raise LoraFileError(f"{where}: unexpected LoRA weight shapes down {list(down.shape)}, up {list(up.shape)}")
    if down.shape[0] != up.shape[1]:
        raise LoraFileError(f"{where}: rank of down ({down.shape[0]}) and up ({up.shape[1]}) differ")
    alpha = None
    if "alpha" in entry.parts:
        alpha = float(entry.parts["alpha"].float().item())
    elif config is not None:
        alpha = peft_alpha(config, entry.path, int(down.shape[0]))
    return LoraModule(down, up, alpha)


def build_modules(parsed: ParsedFile, family: str, unet_config: Mapping, configs: Mapping[str, dict]) -> dict[str, LoraModule]:
    """LoraModules keyed "<component>.<diffusers path>" (LDM UNet paths translated with `unet_config`)."""
    modules: dict[str, LoraModule] = {}
    for (component, path), entry in parsed.entries.items():
        if component == "unet" and is_ldm_unet_path(path):
            path = ldm_to_diffusers(path, unet_config)  # ValueError when not in this layout
        key = f"{component}.{path}"
        if key in modules:
            raise LoraFileError(f"module {key} appears twice (under two namings)")
        modules[key] = _module(entry, configs.get(component))
    return modules


def unet_config_for(family: str) -> dict:
    from ..configs import load_component_config

    return load_component_config("sdxl" if family == "sdxl" else "sd15", "unet")


def build_state(
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    *,
    family: str = "auto",
    check_shapes: bool = True,
    unet_config: Mapping | None = None,
    peft_config: Mapping | None = None,
    source: str = "",
) -> LoraState:
    """Detect layout and family of a LoRA state dict and convert it to a LoraState.

    family: "auto" (metadata, then key names, then which real model the shapes fit),
        or "sd15" / "sdxl" / "shapes".
    check_shapes: verify every module against the real SD-1.5/SDXL layer shapes (turn off for
        tiny test models; "shapes" is never checked).
    unet_config: the UNet config whose block layout LDM-style names refer to (default: the
        family's real config).
    peft_config: LoraConfig dict (adapter_config.json) giving alphas for bare PEFT files.
    """
    parsed = parse_keys(tensors)
    # a lone ".alpha" belongs to weights of another kind (LoHa, LoKr, ...): report it with them
    for where, entry in list(parsed.entries.items()):
        if set(entry.parts) == {"alpha"}:
            parsed.unknown_keys.extend(entry.keys)
            del parsed.entries[where]
    if not parsed.entries:
        sample = ", ".join(list(tensors)[:3]) or "no tensors"
        raise LoraFileError(f"no LoRA weights of a known layout found (keys: {sample})")
    configs = adapter_configs_from_metadata(metadata)
    if peft_config is not None:
        for component in {c for c, _ in parsed.entries}:
            configs.setdefault(component, dict(peft_config))
    layout = parsed.layouts.most_common(1)[0][0] if parsed.layouts else "kohya"

    def modules_for(fam: str) -> dict[str, LoraModule]:
        return build_modules(parsed, fam, unet_config or unet_config_for(fam), configs)

    fam = family if family != "auto" else _detect_family(parsed, metadata, check_shapes, modules_for)
    if fam not in ("sd15", "sdxl", "shapes"):
        raise LoraFileError(f"unknown model family {fam!r}; use sd15, sdxl or shapes")
    try:
        modules = modules_for(fam)
    except ValueError as e:
        if isinstance(e, LoraFileError):
            raise
        raise LoraFileError(f"does not fit {fam}: {e}") from None
    if check_shapes and fam in families.REAL_FAMILIES:
        problem = families.fit_problem(modules, families.real_module_table(fam))
        if problem:
            raise LoraFileError(f"does not fit {fam}: {problem}")
    return LoraState(modules, fam, layout, dict(metadata), parsed.unknown_keys, source)


def _detect_family(parsed: ParsedFile, metadata: Mapping[str, str], check_shapes: bool, modules_for) -> str:
    fam = families.family_from_metadata(metadata)
    if fam == "sd2":
        raise LoraFileError("this LoRA is for SD-2.x (per its metadata); spo-studio handles SD-1.5 and SDXL")
    if fam:
        return fam
    hint = families.family_from_names(list(parsed.entries))
    if hint is None and parsed.kohya_prefixes & {"lora_te1", "lora_te2"}:
        hint = "sdxl"
    if not check_shapes:
        return hint or "sd15"
    problems = {}
    for candidate in families.REAL_FAMILIES:
        try:
            problems[candidate] = families.fit_problem(modules_for(candidate), families.real_module_table(candidate))
        except ValueError as e:
            problems[candidate] = str(e)
    fits = [f for f, p in problems.items() if p is None]
    if len(fits) == 1:
        return fits[0]
    if len(fits) == 2:
        if hint:
            return hint
        raise LoraFileError("fits both SD-1.5 and SDXL layers; say which with --family sd15|sdxl")
    raise LoraFileError(
        f"fits neither SD-1.5 ({problems['sd15']}) nor SDXL ({problems['sdxl']}); pass --family shapes for ShapesWorld LoRAs"
    )
