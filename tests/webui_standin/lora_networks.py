"""What A1111's built-in Lora extension (extensions-builtin/Lora/networks.py, v1.10) does with
the keys of a LoRA file, and the module names it matches them against.

A1111 names every module of the loaded checkpoint `name.replace(".", "_")`:
- the UNet as the original LDM code builds it: "diffusion_model_input_blocks_1_1_...";
- SD-1.5's text encoder (HF CLIPTextModel of transformers 4.x, inside FrozenCLIPEmbedder):
  "transformer_text_model_encoder_layers_0_self_attn_q_proj";
- SDXL's two: "0_transformer_text_model_..." (CLIP-L) and "1_model_transformer_resblocks_0_attn"
  (OpenCLIP-G: q/k/v live in one nn.MultiheadAttention).

For a key "<prefix>.lora_down.weight" it looks the prefix up, in this order: its
diffusers→LDM conversion of the name; that result minus a trailing "_q_proj|_k_proj|_v_proj"
(MultiheadAttention); "lora_unet" → "diffusion_model" on the raw prefix; "lora_te1_text_model"
→ "0_transformer_text_model", then → "transformer_text_model". Unmatched keys are dropped
with only a debug log line. These rules are re-implemented here from reading that code.
"""
from __future__ import annotations

import re
from typing import Mapping

# --------------------------------------------------------------------- A1111's name rules

_RESNET_SUFFIX = {
    "conv1": "in_layers_2",
    "conv2": "out_layers_3",
    "norm1": "in_layers_0",
    "norm2": "out_layers_0",
    "time_emb_proj": "emb_layers_1",
    "conv_shortcut": "skip_connection",
}
_X_PROJ = re.compile(r"(.*)_([qkv]_proj)$")


def _suffix(kind: str, rest: str) -> str:
    return _RESNET_SUFFIX.get(rest, rest) if kind == "resnets" else rest


def _te2_rest(rest: str) -> str:
    if "mlp_fc1" in rest:
        return rest.replace("mlp_fc1", "mlp_c_fc")
    if "mlp_fc2" in rest:
        return rest.replace("mlp_fc2", "mlp_c_proj")
    return rest.replace("self_attn", "attn")


def diffusers_name_to_compvis(key: str, is_sd2: bool = False) -> str:
    """A1111's `convert_diffusers_name_to_compvis`: SD-1.5 index arithmetic for diffusers-style
    UNet names (3 LDM blocks per level, as SD-1.x/2.x have), OpenCLIP names for lora_te2 (and
    SD2's lora_te); anything else comes back unchanged."""
    n = lambda s: int(s)  # noqa: E731
    m = re.fullmatch(r"lora_unet_conv_in(.*)", key)
    if m:
        return f"diffusion_model_input_blocks_0_0{m[1]}"
    m = re.fullmatch(r"lora_unet_conv_out(.*)", key)
    if m:
        return f"diffusion_model_out_2{m[1]}"
    m = re.fullmatch(r"lora_unet_time_embedding_linear_(\d+)(.*)", key)
    if m:
        return f"diffusion_model_time_embed_{n(m[1]) * 2 - 2}{m[2]}"
    m = re.fullmatch(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key)
    if m:
        block, kind, layer, rest = n(m[1]), m[2], n(m[3]), m[4]
        return f"diffusion_model_input_blocks_{1 + 3 * block + layer}_{1 if kind == 'attentions' else 0}_{_suffix(kind, rest)}"
    m = re.fullmatch(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", key)
    if m:
        kind, layer, rest = m[1], n(m[2]), m[3]
        return f"diffusion_model_middle_block_{1 if kind == 'attentions' else 2 * layer}_{_suffix(kind, rest)}"
    m = re.fullmatch(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key)
    if m:
        block, kind, layer, rest = n(m[1]), m[2], n(m[3]), m[4]
        return f"diffusion_model_output_blocks_{3 * block + layer}_{1 if kind == 'attentions' else 0}_{_suffix(kind, rest)}"
    m = re.fullmatch(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", key)
    if m:
        return f"diffusion_model_input_blocks_{3 + 3 * n(m[1])}_0_op"
    m = re.fullmatch(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv", key)
    if m:
        block = n(m[1])
        return f"diffusion_model_output_blocks_{2 + 3 * block}_{2 if block > 0 else 1}_conv"
    m = re.fullmatch(r"lora_te_text_model_encoder_layers_(\d+)_(.+)", key)
    if m:
        if is_sd2:
            return f"model_transformer_resblocks_{m[1]}_{_te2_rest(m[2])}"
        return f"transformer_text_model_encoder_layers_{m[1]}_{m[2]}"
    m = re.fullmatch(r"lora_te2_text_model_encoder_layers_(\d+)_(.+)", key)
    if m:
        return f"1_model_transformer_resblocks_{m[1]}_{_te2_rest(m[2])}"
    return key


def a1111_match(prefix: str, layer_mapping: Mapping[str, object]) -> str | None:
    """The module name A1111 applies the LoRA weights of `prefix` to, or None (key dropped)."""
    is_sd2 = "model_transformer_resblocks" in layer_mapping
    key = diffusers_name_to_compvis(prefix, is_sd2)
    if key in layer_mapping:
        return key
    m = _X_PROJ.match(key)
    if m and m.group(1) in layer_mapping:
        return m.group(1)
    if "lora_unet" in prefix:
        key = prefix.replace("lora_unet", "diffusion_model")
        return key if key in layer_mapping else None
    if "lora_te1_text_model" in prefix:
        for target in ("0_transformer_text_model", "transformer_text_model"):
            key = prefix.replace("lora_te1_text_model", target)
            if key in layer_mapping:
                return key
    return None


def a1111_version(metadata: Mapping[str, str]) -> str:
    """network.NetworkOnDisk.detect_version: "SDXL" | "SD2" | "SD1" | "Unknown"."""
    if str(metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
        return "SDXL"
    if str(metadata.get("ss_v2", "")) == "True":
        return "SD2"
    return "SD1" if metadata else "Unknown"


# --------------------------------------------------------------------- the loaded model's module names


def ldm_unet_modules(config: Mapping) -> dict[str, str]:
    """Weight-bearing modules of the LDM UNet (openaimodel) a diffusers UNet config describes:
    dotted path under `diffusion_model.` -> diffusers module path (from the layout rules: LDM
    numbers input blocks 1 + (layers+1)·level + layer, output blocks (layers+1)·level + layer).
    Tests check this table against diffusers' own LDM→diffusers checkpoint converter."""
    lpb = int(config["layers_per_block"])
    downs, ups = list(config["down_block_types"]), list(config["up_block_types"])
    tlayers = config.get("transformer_layers_per_block", 1)
    tlayers = [tlayers] * len(downs) if isinstance(tlayers, int) else list(tlayers)
    chans = list(config["block_out_channels"])
    table: dict[str, str] = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
                             "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}
    if config.get("addition_embed_type") == "text_time":
        table.update({"label_emb.0.0": "add_embedding.linear_1", "label_emb.0.2": "add_embedding.linear_2"})

    def resnet(ldm: str, dif: str, shortcut: bool) -> None:
        pairs = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
                 ("out_layers.0", "norm2"), ("out_layers.3", "conv2")]
        if shortcut:
            pairs.append(("skip_connection", "conv_shortcut"))
        table.update({f"{ldm}.{a}": f"{dif}.{b}" for a, b in pairs})

    def transformer(ldm: str, dif: str, depth: int) -> None:
        table.update({f"{ldm}.{a}": f"{dif}.{a}" for a in ("norm", "proj_in", "proj_out")})
        for t in range(depth):
            parts = ["norm1", "norm2", "norm3", "ff.net.0.proj", "ff.net.2"]
            parts += [f"{attn}.{p}" for attn in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")]
            table.update({f"{ldm}.transformer_blocks.{t}.{p}": f"{dif}.transformer_blocks.{t}.{p}" for p in parts})

    ch = chans[0]
    for level, kind in enumerate(downs):
        for j in range(lpb):
            i = 1 + (lpb + 1) * level + j
            resnet(f"input_blocks.{i}.0", f"down_blocks.{level}.resnets.{j}", shortcut=ch != chans[level])
            ch = chans[level]
            if "CrossAttn" in kind:
                transformer(f"input_blocks.{i}.1", f"down_blocks.{level}.attentions.{j}", tlayers[level])
        if level < len(downs) - 1:
            table[f"input_blocks.{(lpb + 1) * (level + 1)}.0.op"] = f"down_blocks.{level}.downsamplers.0.conv"
    resnet("middle_block.0", "mid_block.resnets.0", shortcut=False)
    transformer("middle_block.1", "mid_block.attentions.0", tlayers[-1])
    resnet("middle_block.2", "mid_block.resnets.1", shortcut=False)
    for up, kind in enumerate(ups):
        depth = list(reversed(tlayers))[up]
        for j in range(lpb + 1):
            i = (lpb + 1) * up + j
            resnet(f"output_blocks.{i}.0", f"up_blocks.{up}.resnets.{j}", shortcut=True)
            has_attn = "CrossAttn" in kind
            if has_attn:
                transformer(f"output_blocks.{i}.1", f"up_blocks.{up}.attentions.{j}", depth)
            if j == lpb and up < len(ups) - 1:
                table[f"output_blocks.{i}.{2 if has_attn else 1}.conv"] = f"up_blocks.{up}.upsamplers.0.conv"
    return table


def openclip_text_modules(num_layers: int, prefix: str = "1_model_") -> dict[str, str]:
    """OpenCLIP text tower resblocks, A1111-named -> module kind."""
    out = {}
    for i in range(num_layers):
        base = f"{prefix}transformer_resblocks_{i}_"
        out.update({base + "attn": "mha", base + "attn_out_proj": "linear", base + "mlp_c_fc": "linear",
                    base + "mlp_c_proj": "linear", base + "ln_1": "norm", base + "ln_2": "norm"})
    return out
