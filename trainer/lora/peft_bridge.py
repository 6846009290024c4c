"""LoraState <-> live models: read a peft-wrapped model, inject a LoRA through peft, or fold it in."""

from __future__ import annotations

import torch

from ..families import family_of_unet_config
from .errors import LoraFileError
from .export import lora_config_dict
from .families import shape_mismatch
from .state import LoraModule, LoraState, canonical_text_path


def component_of(model: torch.nn.Module) -> str:
    """"unet", "text_encoder" or "text_encoder_2" from the model's class (SDXL's second encoder
    is the one with a projection)."""
    name = type(model).__name__
    if "UNet" in name:
        return "unet"
    if name == "CLIPTextModelWithProjection":
        return "text_encoder_2"
    if name.startswith("CLIPText"):
        return "text_encoder"
    raise ValueError(f"cannot tell which component a {name} is; pass component=")


def family_of_unet(unet: torch.nn.Module) -> str:
    """The family table's real family whose UNet config this is; other UNets are ShapesWorld-sized ones."""
    return family_of_unet_config(dict(unet.config)) or "shapes"


def _strip_wrapper(name: str) -> str:
    return name[len("base_model.model."):] if name.startswith("base_model.model.") else name


def lora_from_peft(
    model: torch.nn.Module, component: str = "unet", adapter_name: str = "default", family: str | None = None
) -> LoraState:
    """The LoRA of a peft-wrapped diffusers UNet / transformers text encoder as a LoraState.

    alpha is peft's real `lora_alpha` (stored as scale · rank, so rsLoRA comes out right too).
    family: default detected from a UNet's config ("sd15" for text encoders).
    """
    from peft.tuners.lora import LoraLayer

    modules = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, LoraLayer) or adapter_name not in getattr(mod, "lora_A", {}):
            continue
        if adapter_name not in mod.lora_A or not hasattr(mod.lora_A[adapter_name], "weight"):
            continue
        path = _strip_wrapper(name)
        if component != "unet":
            path = canonical_text_path(path)
        down = mod.lora_A[adapter_name].weight.detach().cpu().clone()
        up = mod.lora_B[adapter_name].weight.detach().cpu().clone()
        alpha = float(mod.scaling[adapter_name]) * int(down.shape[0])
        modules[f"{component}.{path}"] = LoraModule(down, up, alpha)
    if not modules:
        raise ValueError(f"the {type(model).__name__} has no LoRA layers for adapter {adapter_name!r}")
    if family is None:
        family = family_of_unet(model) if component == "unet" else "sd15"
    return LoraState(modules, family, "peft_model")


def _resolve(model: torch.nn.Module, state: LoraState, component: str | None) -> tuple[str, dict[str, tuple[str, LoraModule]]]:
    """component, and live module path -> (canonical path, LoraModule); errors for layers the model lacks."""
    component = component or component_of(model)
    wanted = state.component(component)
    if not wanted:
        raise LoraFileError(f"{state.source or 'LoRA'}: has no {component} layers (it has {', '.join(state.components())})")
    live = dict(model.named_modules())
    out = {}
    for path, mod in wanted.items():
        candidates = [path] if component == "unet" else [path, path[len("text_model."):]]
        target = next((c for c in candidates if c in live), None)
        where = state.source or "LoRA"
        if target is None:
            raise LoraFileError(f"{where}: {component} layer {path} does not exist in this model (a LoRA for another model family?)")
        layer = getattr(live[target], "base_layer", live[target])  # a layer peft already wraps
        if not isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
            raise LoraFileError(f"{where}: {component}.{path} is a {type(layer).__name__}, not a Linear/Conv2d layer")
        why = shape_mismatch(mod, tuple(layer.weight.shape))
        if why:
            raise LoraFileError(f"{where}: {component}.{path}: {why} (a LoRA for another model family?)")
        out[target] = (path, mod)
    return component, out


def apply_lora(
    model: torch.nn.Module, state: LoraState, scale: float = 1.0, *, component: str | None = None,
    adapter_name: str = "spo",
) -> list[str]:
    """Inject `state`'s layers into `model` as a peft adapter (rank and alpha per layer) and load them.

    component: which part of the state this model is (default from the model class).
    scale: multiplies every layer's alpha / rank. Returns the adapted module paths.
    """
    from peft import LoraConfig, inject_adapter_in_model

    component, resolved = _resolve(model, state, component)
    fields = lora_config_dict({live: mod for live, (_, mod) in resolved.items()})
    fields.pop("init_lora_weights")
    config = LoraConfig(**fields)
    inject_adapter_in_model(config, model, adapter_name=adapter_name)
    live = dict(model.named_modules())
    with torch.no_grad():
        for path, (_, mod) in resolved.items():
            layer = live[path]
            a, b = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
            a.copy_(mod.down.reshape(a.shape).to(a.dtype))
            b.copy_(mod.up.reshape(b.shape).to(b.dtype))
            layer.lora_alpha[adapter_name] = mod.effective_alpha  # exact, whatever the config patterns matched
            layer.set_scale(adapter_name, scale)
    return sorted(resolved)


def merge_lora(
    model: torch.nn.Module, state: LoraState, scale: float = 1.0, *, component: str | None = None
) -> list[str]:
    """Fold the LoRA into the weights: W <- W + scale · (alpha / rank) · up @ down. Returns the paths changed."""
    component, resolved = _resolve(model, state, component)
    live = dict(model.named_modules())
    with torch.no_grad():
        for path, (_, mod) in resolved.items():
            weight = getattr(live[path], "base_layer", live[path]).weight
            delta = mod.delta().reshape(weight.shape)
            weight.copy_((weight.float() + scale * delta).to(weight.dtype))
    return sorted(resolved)
