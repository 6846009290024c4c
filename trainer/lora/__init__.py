"""LoRA files: read any layout, write kohya/WebUI, diffusers and PEFT forms, apply or merge into models.

    state = read_lora("spo_sdxl_lora_diffusers.safetensors")        # any layout -> LoraState
    save_kohya(state, "spo_sdxl.safetensors", training_comment={...})  # A1111 / ComfyUI / kohya
    apply_lora(unet, state)                                           # through peft
CLI: `python -m trainer.lora inspect|convert|merge ...`.
"""

from .errors import LoraFileError
from .export import (
    addnet_hashes,
    kohya_key,
    kohya_metadata,
    to_diffusers_state_dict,
    to_kohya_state_dict,
    to_peft_state_dict,
)
from .files import read_lora, save_diffusers, save_kohya, save_peft
from .layouts import build_state
from .peft_bridge import apply_lora, lora_from_peft, merge_lora
from .state import LoraModule, LoraState, combine

__all__ = [
    "LoraFileError",
    "LoraModule",
    "LoraState",
    "addnet_hashes",
    "apply_lora",
    "build_state",
    "combine",
    "kohya_key",
    "kohya_metadata",
    "lora_from_peft",
    "merge_lora",
    "read_lora",
    "save_diffusers",
    "save_kohya",
    "save_peft",
    "to_diffusers_state_dict",
    "to_kohya_state_dict",
    "to_peft_state_dict",
]
