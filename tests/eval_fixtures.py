"""Builders for the trainer.eval / trainer.scorers tests (no tests here)."""
from __future__ import annotations

from pathlib import Path

import torch


def shapes_lora(path: Path, seed: int = 1, std: float = 0.3) -> Path:
    """A random rank-4 LoRA on the shipped ShapesWorld UNet's attention, saved as kohya (what trainer.spo writes)."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    from trainer.lora import lora_from_peft, save_kohya
    from trainer.models import load_model
    from trainer.shapes import weights_dir

    model = load_model(str(weights_dir("pipeline")), family="shapes")
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]), model.unet)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.unet.modules():
            if isinstance(mod, LoraLayer):
                for w in (mod.lora_A["default"].weight, mod.lora_B["default"].weight):
                    w.copy_(torch.randn(w.shape, generator=g) * std)
    state = lora_from_peft(model.unet, component="unet", family="shapes")
    save_kohya(state, path, family="shapes", dtype=torch.float32)
    return Path(path)


def sdxl_lora(path: Path) -> Path:
    """A tiny SDXL-layout LoRA (kohya naming and metadata of the SDXL family)."""
    from fixtures_lora import add_random_adapter, tiny_sdxl_unet

    from trainer.lora import lora_from_peft, save_kohya

    unet = add_random_adapter(tiny_sdxl_unet(), ["to_q", "to_k"])
    state = lora_from_peft(unet, component="unet", family="sdxl")
    save_kohya(state, path, family="sdxl", dtype=torch.float32)
    return Path(path)


def sd15_lora(path: Path) -> Path:
    """A tiny SD-1.5-layout LoRA: SD-1.5 naming like ShapesWorld's, but layers and widths that do not fit it."""
    from fixtures_lora import add_random_adapter, tiny_sd15_unet

    from trainer.lora import lora_from_peft, save_kohya

    unet = add_random_adapter(tiny_sd15_unet(), ["to_q", "to_k"])
    save_kohya(lora_from_peft(unet, component="unet", family="sd15"), path, family="sd15", dtype=torch.float32)
    return Path(path)
