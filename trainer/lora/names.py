"""Module names: kohya keys <-> module paths, and diffusers UNet paths <-> original (LDM) paths.

kohya keys are "<prefix>_<module path with '.' replaced by '_'>". Because module names
themselves contain underscores ("transformer_blocks", "to_q"), turning a key back into a path
needs the list of multi-word names below (ATOMS).

SDXL kohya files name UNet modules as the original Stability (LDM/SGM) UNet does
(`input_blocks.4.1.transformer_blocks.0.attn1.to_q`); SD-1.5 files use diffusers names. The
index rules (read from ComfyUI's `comfy/utils.py: unet_to_diffusers`, which maps the same way):
  down_blocks.b.resnets.l / attentions.l   -> input_blocks.(1 + (L+1)·b + l).0 / .1
  down_blocks.b.downsamplers.0.conv        -> input_blocks.((L+1)·(b+1)).0.op
  mid_block.resnets.0 / attentions.0 / resnets.1 -> middle_block.0 / .1 / .2
  up_blocks.b.resnets.l / attentions.l     -> output_blocks.((L+1)·b + l).0 / .1
  up_blocks.b.upsamplers.0.conv            -> output_blocks.((L+1)·b + L).(2 if the block has
                                              attentions else 1).conv
with L = layers_per_block (2 in SD-1.5 and SDXL, so L+1 = 3), and inside a resnet
conv1 -> in_layers.2, conv2 -> out_layers.3, time_emb_proj -> emb_layers.1,
conv_shortcut -> skip_connection.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Mapping

KOHYA_PREFIX = {
    # (family naming, component) -> kohya prefix
    ("sd15", "unet"): "lora_unet",
    ("sd15", "text_encoder"): "lora_te",
    ("sdxl", "unet"): "lora_unet",
    ("sdxl", "text_encoder"): "lora_te1",
    ("sdxl", "text_encoder_2"): "lora_te2",
}
PREFIX_COMPONENT = {"lora_unet": "unet", "lora_te": "text_encoder", "lora_te1": "text_encoder", "lora_te2": "text_encoder_2"}

# Multi-word module names of SD UNets (diffusers and LDM spelling) and CLIP text encoders.
ATOMS = {
    tuple(a.split("_"))
    for a in (
        "down_blocks up_blocks mid_block transformer_blocks to_q to_k to_v to_out proj_in proj_out "
        "time_emb_proj conv_shortcut conv_in conv_out conv_norm_out time_embedding add_embedding "
        "linear_1 linear_2 input_blocks output_blocks middle_block in_layers out_layers emb_layers "
        "skip_connection time_embed label_emb text_model self_attn q_proj k_proj v_proj out_proj "
        "final_layer_norm layer_norm1 layer_norm2 text_projection token_embedding position_embedding"
    ).split()
}
_ATOM_LENGTHS = sorted({len(a) for a in ATOMS}, reverse=True)

LDM_UNET_ROOTS = ("input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb", "out")

_RESNET_PARTS = {
    "conv1": "in_layers.2",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
    "norm1": "in_layers.0",
    "norm2": "out_layers.0",
}
_TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "conv_out": "out.2",
    "conv_norm_out": "out.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}


def kohya_to_path(name: str) -> str:
    """Underscored kohya module name (prefix removed) -> dotted module path.

    "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0"
    -> "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"
    """
    tokens = name.split("_")
    parts: list[str] = []
    i = 0
    while i < len(tokens):
        for n in _ATOM_LENGTHS:
            if tuple(tokens[i : i + n]) in ATOMS:
                parts.append("_".join(tokens[i : i + n]))
                i += n
                break
        else:
            parts.append(tokens[i])
            i += 1
    return ".".join(parts)


def path_to_kohya(path: str) -> str:
    return path.replace(".", "_")


def is_ldm_unet_path(path: str) -> bool:
    return path.split(".", 1)[0] in LDM_UNET_ROOTS


def _layers_per_block(config: Mapping) -> int:
    lpb = config.get("layers_per_block", 2)
    if isinstance(lpb, (list, tuple)):
        if len(set(lpb)) != 1:
            raise ValueError("LDM naming needs the same layers_per_block in every UNet block")
        lpb = lpb[0]
    return int(lpb)


def unet_ldm_map(unet_config: Mapping) -> dict[str, str]:
    """diffusers module path -> LDM module path, for every block-level module of a UNet config.

    Paths inside an attention block (proj_in, transformer_blocks.*) are the same in both
    namings and are mapped through their attention-block prefix.
    """
    lpb = _layers_per_block(unet_config)
    down, up = list(unet_config["down_block_types"]), list(unet_config["up_block_types"])
    out: dict[str, str] = dict(_TOP_LEVEL)

    def resnet(d: str, ldm: str) -> None:
        for a, b in _RESNET_PARTS.items():
            out[f"{d}.{a}"] = f"{ldm}.{b}"

    for b, kind in enumerate(down):
        for i in range(lpb):
            n = 1 + (lpb + 1) * b + i
            resnet(f"down_blocks.{b}.resnets.{i}", f"input_blocks.{n}.0")
            if "CrossAttn" in kind:
                out[f"down_blocks.{b}.attentions.{i}"] = f"input_blocks.{n}.1"
        if b < len(down) - 1:
            out[f"down_blocks.{b}.downsamplers.0.conv"] = f"input_blocks.{(lpb + 1) * (b + 1)}.0.op"
    resnet("mid_block.resnets.0", "middle_block.0")
    out["mid_block.attentions.0"] = "middle_block.1"
    resnet("mid_block.resnets.1", "middle_block.2")
    for b, kind in enumerate(up):
        for i in range(lpb + 1):
            n = (lpb + 1) * b + i
            resnet(f"up_blocks.{b}.resnets.{i}", f"output_blocks.{n}.0")
            if "CrossAttn" in kind:
                out[f"up_blocks.{b}.attentions.{i}"] = f"output_blocks.{n}.1"
        if b < len(up) - 1:
            n = (lpb + 1) * b + lpb
            out[f"up_blocks.{b}.upsamplers.0.conv"] = f"output_blocks.{n}.{2 if 'CrossAttn' in kind else 1}.conv"
    return out


def _translate(path: str, table: Mapping[str, str]) -> str | None:
    parts = path.split(".")
    for k in range(len(parts), 0, -1):
        head = ".".join(parts[:k])
        if head in table:
            return ".".join([table[head], *parts[k:]])
    return None


@lru_cache(maxsize=8)
def _maps(config_key: tuple) -> tuple[dict[str, str], dict[str, str]]:
    config = dict(config_key)
    forward = unet_ldm_map(config)
    return forward, {v: k for k, v in forward.items()}


def _config_key(unet_config: Mapping) -> tuple:
    keys = ("layers_per_block", "down_block_types", "up_block_types")
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in ((k, unet_config.get(k)) for k in keys))


def diffusers_to_ldm(path: str, unet_config: Mapping) -> str:
    """diffusers UNet module path -> LDM path; ValueError for a module LDM naming cannot express."""
    ldm = _translate(path, _maps(_config_key(unet_config))[0])
    if ldm is None:
        raise ValueError(f"UNet module {path!r} has no original (LDM) name")
    return ldm


def ldm_to_diffusers(path: str, unet_config: Mapping) -> str:
    """LDM UNet module path -> diffusers path; ValueError when the path is not in this UNet."""
    diffusers = _translate(path, _maps(_config_key(unet_config))[1])
    if diffusers is None:
        raise ValueError(f"UNet module {path!r} is not a module of this UNet layout")
    return diffusers
