"""SPO LoRA Loader: any LoRA layout trainer.lora reads, converted to kohya form, then applied by
ComfyUI's own key mapping and patching (comfy.lora), with a one-line report of what applied."""
from __future__ import annotations

import logging
import math

from .errors import NodeInputError, library_imports, one_line
from .host import filename_list, full_path, show_text_on_node
from .sampler_node import model_family
from .spm_nodes import CATEGORY

log = logging.getLogger("spo-studio")
NODE = "SPO LoRA Loader"


def kohya_module_names(kohya: dict) -> list[str]:
    """Module names ("lora_unet_..._to_q") of a kohya state dict, sorted."""
    return sorted({k[: -len(".lora_down.weight")] for k in kohya if k.endswith(".lora_down.weight")})


def apply_lora(model, clip, kohya: dict, strength_model: float, strength_clip: float):
    """Patch clones of MODEL and CLIP with a kohya-form LoRA through comfy.lora.

    Returns (model, clip, applied module names, not-applied module names). Mirrors what
    comfy.sd.load_lora_for_models does, keeping the patched keys so that they can be reported.
    """
    import comfy.lora

    key_map = {}
    if model is not None:
        key_map = comfy.lora.model_lora_keys_unet(model.model, key_map)
    if clip is not None:
        key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    try:
        import comfy.lora_convert

        kohya = comfy.lora_convert.convert_lora(kohya)
    except ImportError:  # ComfyUI before lora_convert existed: nothing to convert for SD-1.5/SDXL
        pass
    try:
        patches = comfy.lora.load_lora(kohya, key_map, log_missing=False)
    except TypeError:  # older ComfyUI: no log_missing argument
        patches = comfy.lora.load_lora(kohya, key_map)
    patched = set()
    new_model, new_clip = model, clip
    if model is not None:
        new_model = model.clone()
        patched |= set(new_model.add_patches(patches, strength_model))
    if clip is not None:
        new_clip = clip.clone()
        patched |= set(new_clip.add_patches(patches, strength_clip))
    names = kohya_module_names(kohya)
    applied = [n for n in names if n in key_map and key_map[n] in patched]
    not_applied = [n for n in names if n not in applied]
    return new_model, new_clip, applied, not_applied


def report_line(lora_name: str, layout: str, family: str, applied: list[str], not_applied: list[str]) -> str:
    from spo_studio.families import display  # pure Python, already loaded by load_lora

    unet = sum(1 for n in applied if n.startswith("lora_unet_"))
    line = (f"{lora_name}: {layout} LoRA for {display(family)}: "
            f"{len(applied)}/{len(applied) + len(not_applied)} modules applied "
            f"(UNet {unet}, text encoder {len(applied) - unet}), {len(not_applied)} not applied")
    if not_applied:
        line += " (" + ", ".join(not_applied[:3]) + (", ..." if len(not_applied) > 3 else "") + ")"
    return line


class SPOLoraLoader:
    """Apply an SPO (or any SD-1.5/SDXL) LoRA in any common layout to MODEL and CLIP."""

    DESCRIPTION = (
        "Loads a LoRA from models/loras in any layout spo-studio reads (official SPO diffusers releases, "
        "PEFT, kohya), converts it to kohya form and patches MODEL and CLIP with ComfyUI's own LoRA code. "
        "Reports how many LoRA modules were applied."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "CLIP", "STRING")
    RETURN_NAMES = ("model", "clip", "report")
    OUTPUT_TOOLTIPS = ("The patched model.", "The patched CLIP.", "Modules applied / not applied, one line.")
    FUNCTION = "load_lora"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to patch."}),
                "clip": ("CLIP", {"tooltip": "The text encoder to patch (LoRAs without text-encoder parts leave it as is)."}),
                "lora_name": (filename_list("loras"), {
                    "tooltip": "LoRA file in models/loras: SPO release (unet.*.lora.down), PEFT (lora_A/lora_B) or kohya.",
                }),
                "strength_model": ("FLOAT", {
                    "default": 1.0, "min": -20.0, "max": 20.0, "step": 0.01,
                    "tooltip": "Multiplier of the UNet update (1.0 = as trained).",
                }),
                "strength_clip": ("FLOAT", {
                    "default": 1.0, "min": -20.0, "max": 20.0, "step": 0.01,
                    "tooltip": "Multiplier of the text-encoder update.",
                }),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def load_lora(self, model, clip, lora_name: str, strength_model: float = 1.0, strength_clip: float = 1.0,
                  unique_id=None):
        with library_imports(NODE):
            from spo_studio.families import display, host_family
            from spo_studio.lora import read_lora, to_kohya_state_dict

        for name, value in (("strength_model", strength_model), ("strength_clip", strength_clip)):
            if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
                raise NodeInputError(f"{NODE}: {name} must be a finite number, got {value}")
        path = full_path("loras", lora_name, NODE)
        try:
            state = read_lora(path)
        except (ValueError, OSError) as e:
            raise one_line(f"{NODE} ({lora_name})", e) from None
        target = model_family(model.model)
        if target is not None and host_family(state.family) != target:
            raise NodeInputError(
                f"{NODE}: {lora_name} was made for {display(state.family)} but the model is "
                f"{display(target)}; pick a LoRA made for {display(target)}"
            )
        try:
            kohya = to_kohya_state_dict(state, state.family)
        except ValueError as e:
            raise one_line(f"{NODE} ({lora_name})", e) from None
        if strength_model == 0 and strength_clip == 0:
            line = f"{lora_name}: both strengths are 0, nothing applied"
            return {"ui": {"text": [line]}, "result": (model, clip, line)}
        try:
            new_model, new_clip, applied, not_applied = apply_lora(model, clip, kohya, strength_model, strength_clip)
        except (ValueError, RuntimeError) as e:
            raise one_line(f"{NODE} ({lora_name})", e) from None
        line = report_line(lora_name, state.layout, state.family, applied, not_applied)
        if not applied:
            raise NodeInputError(f"{NODE}: no module of {lora_name} matches this model ({line})")
        log.info("%s: %s", NODE, line)
        show_text_on_node(line, unique_id)
        return {"ui": {"text": [line]}, "result": (new_model, new_clip, line)}
