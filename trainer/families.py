"""The family table: every fact that differs between SD-1.5, SDXL and ShapesWorld, in one place.

A new model family is one new `Family` row here (plus its component configs in trainer/configs/
when it is a real base model); the loaders, the LoRA writers and readers, the SPM loader, the SPO
presets and both host plugins read this table. Pure Python on purpose: the plugins import it in
hosts that have neither diffusers nor peft (`spo_studio.families`).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Family:
    """What differs between model families.

    name: "sd15" | "sdxl" | "shapes"; display: how messages name it.
    lora_naming: kohya naming scheme of its UNet modules ("sd15": diffusers-style, "sdxl": LDM-style);
        a family with another family's naming runs on that family's hosts' models (ShapesWorld is SD-1.5 layout).
    resolution: default image side in pixels.
    pooled_text: SDXL-style conditioning (two text encoders, pooled embeds, time ids).
    zero_uncond: unconditional embedding is zeros rather than the encoding of "" (SDXL's
        `force_zeros_for_empty_prompt`).
    real: a released base model, with shipped component configs (trainer/configs/<name>).
    base_model: the base model's hub id (SPO preset, LoRA metadata).
    released_spm: file name of the SPO authors' step-aware preference model for it, if any.
    spm_file_prefixes: lower-case file-name prefixes that mark a released SPM for this family.
    ss_base_model_version, modelspec_architecture, modelspec_implementation: LoRA metadata
        (kohya's ss_* and sai_model_spec) we write; ss_version_prefixes, architecture_prefixes: the
        value prefixes that mark another tool's LoRA as made for this family when read.
    unet_signature: UNet config entries that identify the family (empty: none, detected otherwise).
    single_file_key_prefixes: state-dict key prefixes only its original-layout single-file checkpoints have.
    comfy_model_configs: ComfyUI `model_config` class names of its models.
    a1111_flag: the `sd_model` attribute A1111 sets True for its models (None: the default family).
    """

    name: str
    display: str
    lora_naming: str
    resolution: int
    pooled_text: bool = False
    zero_uncond: bool = False
    real: bool = True
    base_model: str = ""
    released_spm: str | None = None
    spm_file_prefixes: tuple[str, ...] = ()
    ss_base_model_version: str = ""
    modelspec_architecture: str = ""
    modelspec_implementation: str = "diffusers"
    ss_version_prefixes: tuple[str, ...] = ()
    architecture_prefixes: tuple[str, ...] = ()
    unet_signature: dict = field(default_factory=dict)
    single_file_key_prefixes: tuple[str, ...] = ()
    comfy_model_configs: tuple[str, ...] = ()
    a1111_flag: str | None = None


FAMILIES: dict[str, Family] = {
    "sd15": Family(
        "sd15", "SD-1.5", "sd15", 512,
        base_model="runwayml/stable-diffusion-v1-5",
        released_spm="sd-v1-5_step-aware_preference_model.bin",
        spm_file_prefixes=("sd-v1-5_", "sd15_"),
        ss_base_model_version="sd_v1", modelspec_architecture="stable-diffusion-v1/lora",
        ss_version_prefixes=("sd_v1",), architecture_prefixes=("stable-diffusion-v1",),
        unet_signature={"cross_attention_dim": 768, "block_out_channels": [320, 640, 1280, 1280]},
        single_file_key_prefixes=("cond_stage_model.transformer.",),
        comfy_model_configs=("SD15",),
    ),
    "sdxl": Family(
        "sdxl", "SDXL", "sdxl", 1024, pooled_text=True, zero_uncond=True,
        base_model="stabilityai/stable-diffusion-xl-base-1.0",
        released_spm="sdxl_step-aware_preference_model.bin",
        spm_file_prefixes=("sdxl_",),
        ss_base_model_version="sdxl_base_v1-0", modelspec_architecture="stable-diffusion-xl-v1-base/lora",
        # kohya's sai_model_spec: SDXL LoRAs name the Stability implementation, SD-1.x LoRAs "diffusers"
        modelspec_implementation="https://github.com/Stability-AI/generative-models",
        ss_version_prefixes=("sdxl",), architecture_prefixes=("stable-diffusion-xl",),
        unet_signature={"addition_embed_type": "text_time"},
        single_file_key_prefixes=("conditioner.embedders.1.",),
        comfy_model_configs=("SDXL", "SSD1B", "Segmind_Vega"),
        a1111_flag="is_sdxl",
    ),
    "shapes": Family(
        "shapes", "ShapesWorld (SD-1.5 layout)", "sd15", 64, real=False,
        base_model="spo-studio/shapesworld",
        ss_base_model_version="sd_v1", modelspec_architecture="stable-diffusion-v1/lora",
    ),
}
REAL_FAMILIES = tuple(n for n, f in FAMILIES.items() if f.real)


def get(name: str) -> Family:
    """The row of `name`; ValueError naming the known families otherwise."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; use {', '.join(FAMILIES)}")
    return FAMILIES[name]


def display(name: str | None) -> str:
    """"SD-1.5" for "sd15"; an unknown name as it is."""
    return FAMILIES[name].display if name in FAMILIES else str(name)


def host_family(name: str) -> str:
    """The real family whose models `name`'s files run on in a host (ShapesWorld LoRAs/SPMs: SD-1.5)."""
    return get(name).lora_naming


def family_of_unet_config(cfg: dict) -> str | None:
    """The real family whose `unet_signature` a diffusers UNet config matches; None if none does."""
    for name in REAL_FAMILIES:
        sig = FAMILIES[name].unet_signature
        if sig and all(_same(cfg.get(k), v) for k, v in sig.items()):
            return name
    return None


def family_of_checkpoint_keys(keys) -> str | None:
    """The real family whose single-file checkpoint keys these are; None if none."""
    keys = list(keys)
    for name in REAL_FAMILIES:
        if any(k.startswith(FAMILIES[name].single_file_key_prefixes) for k in keys):
            return name
    return None


def family_of_comfy_model(config_class_name: str) -> str | None:
    """"sd15" | "sdxl" | None from a ComfyUI model_config class name (SD15, SDXL, SSD1B, ...)."""
    for name in REAL_FAMILIES:
        if config_class_name in FAMILIES[name].comfy_model_configs:
            return name
    return None


def family_from_spm_filename(base: str) -> str | None:
    """'sd15' / 'sdxl' from a released SPM's file name (sd-v1-5_…, sdxl_…), else None."""
    base = base.lower()
    for name, fam in FAMILIES.items():
        if base.startswith(fam.spm_file_prefixes):
            return name
    return None


def _same(a, b) -> bool:
    return list(a) == list(b) if isinstance(b, (list, tuple)) and isinstance(a, (list, tuple)) else a == b
