"""The internal form every LoRA layout is read into and written from.

A module's LoRA update is  ΔW = (alpha / rank) · up @ down  (kohya's convention, also peft's
`lora_alpha / r`). Keys are "<component>.<module path>" with component one of COMPONENTS and the
module path in diffusers/transformers naming; text-encoder paths always start with
"text_model." (the form kohya, A1111 and ComfyUI name them by, whatever transformers version
is installed).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from ..families import FAMILIES as _FAMILY_TABLE

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
FAMILIES = tuple(_FAMILY_TABLE)


@dataclass
class LoraModule:
    """One adapted layer.

    down: Tensor[r, in] (Linear) or Tensor[r, in, kh, kw] (Conv2d).
    up: Tensor[out, r] (Linear) or Tensor[out, r, 1, 1] (Conv2d).
    alpha: the layer's alpha; None when the file stored none (then alpha = rank, scale 1).
    """

    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def effective_alpha(self) -> float:
        return float(self.rank) if self.alpha is None else float(self.alpha)

    @property
    def scale(self) -> float:
        return self.effective_alpha / self.rank

    @property
    def is_conv(self) -> bool:
        return self.down.ndim == 4

    def delta(self) -> torch.Tensor:
        """ΔW in fp32, shaped like the adapted layer's weight ([out, in] or [out, in, kh, kw])."""
        down, up = self.down.float(), self.up.float()
        if down.ndim == 2 and up.ndim == 2:
            return self.scale * (up @ down)
        # conv: up is a 1x1 conv, so ΔW[o, i, y, x] = Σ_r up[o, r] · down[r, i, y, x]
        d4 = down if down.ndim == 4 else down[:, :, None, None]
        return self.scale * torch.einsum("or,rihw->oihw", up.reshape(up.shape[0], -1), d4)


@dataclass
class LoraState:
    """A whole LoRA file in one form.

    modules: "<component>.<module path>" -> LoraModule.
    family: "sd15" | "sdxl" | "shapes" (ShapesWorld: tiny SD-1.5-layout UNet).
    layout: the layout it was read from: "kohya", "diffusers_old", "diffusers", "peft", or
        "peft_model" (taken from a live peft-wrapped model).
    metadata: the file's safetensors metadata (all strings).
    unknown_keys: keys of the file that are not LoRA weights of a known layout.
    source: file it was read from ("" when built in memory), for error messages.
    """

    modules: dict[str, LoraModule]
    family: str = "sd15"
    layout: str = "peft_model"
    metadata: dict[str, str] = field(default_factory=dict)
    unknown_keys: list[str] = field(default_factory=list)
    source: str = ""

    def components(self) -> list[str]:
        present = {key.split(".", 1)[0] for key in self.modules}
        return [c for c in COMPONENTS if c in present]

    def component(self, name: str) -> dict[str, LoraModule]:
        """Module path (without the component prefix) -> LoraModule for one component."""
        prefix = name + "."
        return {k[len(prefix):]: m for k, m in self.modules.items() if k.startswith(prefix)}

    def ranks(self) -> Counter:
        return Counter(m.rank for m in self.modules.values())

    def alphas(self) -> Counter:
        return Counter(m.effective_alpha for m in self.modules.values())

    def to(self, dtype: torch.dtype) -> "LoraState":
        """A copy with every weight in `dtype` (alphas unchanged)."""
        mods = {k: LoraModule(m.down.to(dtype), m.up.to(dtype), m.alpha) for k, m in self.modules.items()}
        return LoraState(mods, self.family, self.layout, dict(self.metadata), list(self.unknown_keys), self.source)


def combine(*states: LoraState) -> LoraState:
    """One state holding the modules of several (e.g. a UNet and a text-encoder adapter)."""
    if not states:
        raise ValueError("combine() needs at least one LoraState")
    families = {s.family for s in states}
    if len(families) > 1:
        raise ValueError(f"cannot combine LoRAs of different model families: {sorted(families)}")
    modules: dict[str, LoraModule] = {}
    for s in states:
        clash = modules.keys() & s.modules.keys()
        if clash:
            raise ValueError(f"combine(): module {sorted(clash)[0]} appears in two states")
        modules.update(s.modules)
    first = states[0]
    return LoraState(modules, first.family, first.layout, dict(first.metadata), [k for s in states for k in s.unknown_keys])


def canonical_text_path(path: str) -> str:
    """Text-encoder module path in the "text_model.encoder.layers.N..." form.

    transformers 5's CLIPTextModel has no `text_model.` level (CLIPTextModelWithProjection
    still has); LoRA files name the layers with it.
    """
    return path if path.startswith("text_model.") or path == "text_model" else "text_model." + path
