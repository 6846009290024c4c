"""SPO LoRA files written by `trainer.lora.save_kohya` load in A1111's built-in Lora with every
key mapped: A1111's own name rules (tests/webui_standin/lora_networks.py) applied to every key
of real files, against the module names of A1111's SD-1.5 / SDXL models, on tiny models with
the real block topology (A1111's SD-1.5 index arithmetic assumes it)."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

import webui_harness  # noqa: F401  (puts the stand-in on sys.path)
from lora_networks import (
    a1111_match,
    a1111_version,
    diffusers_name_to_compvis,
    ldm_unet_modules,
    openclip_text_modules,
)


def unet(family: str):
    """Tiny UNet with SD-1.5's or SDXL's block layout (2 layers per block, same block types)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    if family == "sd15":
        return UNet2DConditionModel(
            sample_size=8, block_out_channels=(8, 16, 16, 16), layers_per_block=2, norm_num_groups=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            attention_head_dim=2, cross_attention_dim=16,
        )
    return UNet2DConditionModel(
        sample_size=8, block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 3), attention_head_dim=(2, 2, 4), cross_attention_dim=24,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=16 + 6 * 4,
    )


def text_encoder(hidden: int, layers: int = 2):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(1)
    cfg = CLIPTextConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=2, max_position_embeddings=8, projection_dim=hidden,
                         bos_token_id=62, eos_token_id=63, pad_token_id=63)
    return CLIPTextModelWithProjection(cfg)  # keeps the `text_model.` level LoRA paths are named by


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_ldm_module_table_agrees_with_diffusers_converter(family):
    """The LDM names A1111's model has, checked against diffusers' own LDM -> diffusers converter."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    model = unet(family)
    table = ldm_unet_modules(model.config)
    ckpt = {}
    for i, (ldm, _) in enumerate(table.items()):
        ckpt[f"model.diffusion_model.{ldm}.weight"] = torch.tensor([float(i)])
        ckpt[f"model.diffusion_model.{ldm}.bias"] = torch.tensor([float(i)])
    converted = convert_ldm_unet_checkpoint(ckpt, dict(model.config))
    ldm_of = {i: ldm for i, ldm in enumerate(table)}
    got = {key.rsplit(".", 1)[0]: ldm_of[int(v.reshape(-1)[0])] for key, v in converted.items()}
    weighted = {n for n, m in model.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)}
    assert set(got) == weighted  # every diffusers module with weights, and nothing else
    assert {dif: ldm for dif, ldm in got.items()} == {dif: ldm for ldm, dif in table.items()}


def lora_state(family: str):
    """A LoRA on every Linear and Conv2d of the UNet and on every text-encoder Linear."""
    from trainer.lora import LoraModule, LoraState

    g = torch.Generator().manual_seed(0)
    modules = {}

    def add(component, name, mod):
        r = 2
        if isinstance(mod, torch.nn.Conv2d):
            down = torch.randn(r, mod.in_channels, *mod.kernel_size, generator=g)
            up = torch.randn(mod.out_channels, r, 1, 1, generator=g)
        else:
            down, up = torch.randn(r, mod.in_features, generator=g), torch.randn(mod.out_features, r, generator=g)
        modules[f"{component}.{name}"] = LoraModule(down=down, up=up, alpha=1.0)

    model = unet(family)
    for name, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            add("unet", name, mod)
    encoders = [("text_encoder", 16)] if family == "sd15" else [("text_encoder", 16), ("text_encoder_2", 24)]
    for component, hidden in encoders:
        for name, mod in text_encoder(hidden).named_modules():
            if isinstance(mod, torch.nn.Linear) and name.startswith("text_model.encoder."):
                add(component, name, mod)
    return LoraState(modules=modules, family=family), model


def a1111_model_modules(family: str, model) -> dict[str, object]:
    """A1111's network_layer_mapping for this model: module name -> weight shape ("mha" for
    OpenCLIP's MultiheadAttention). Names are `path.replace(".", "_")` of A1111's modules."""
    dif_modules = dict(model.named_modules())
    shapes = {"diffusion_model_" + ldm.replace(".", "_"): tuple(dif_modules[dif].weight.shape)
              for ldm, dif in ldm_unet_modules(model.config).items()}
    te_prefix = "transformer_" if family == "sd15" else "0_transformer_"  # FrozenCLIPEmbedder.transformer
    for name, mod in text_encoder(16).named_modules():
        if isinstance(mod, torch.nn.Linear) and name.startswith("text_model."):
            shapes[te_prefix + name.replace(".", "_")] = tuple(mod.weight.shape)
    if family == "sdxl":  # OpenCLIP-G resblocks, shapes as the HF layout of the same width
        hf = dict(text_encoder(24).named_modules())
        for name, kind in openclip_text_modules(2).items():
            layer = f"text_model.encoder.layers.{name.split('_')[4]}."
            source = {"attn_out_proj": "self_attn.out_proj", "mlp_c_fc": "mlp.fc1", "mlp_c_proj": "mlp.fc2"}
            tail = next((v for k, v in source.items() if name.endswith(k)), None)
            shapes[name] = "mha" if kind == "mha" else tuple(hf[layer + tail].weight.shape) if tail else None
    return shapes


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_every_key_of_save_kohya_files_maps_under_a1111_rules(tmp_path, family):
    from trainer.lora import save_kohya

    state, model = lora_state(family)
    path = tmp_path / f"spo_{family}.safetensors"
    save_kohya(state, path, family=family, unet_config=dict(model.config))
    with safe_open(str(path), "pt") as f:
        keys, metadata = list(f.keys()), f.metadata()
        tensors = {k: f.get_tensor(k) for k in keys}
    assert a1111_version(metadata) == ("SDXL" if family == "sdxl" else "SD1")

    mapping = a1111_model_modules(family, model)
    prefixes = {}
    for key in keys:
        prefix, _, part = key.partition(".")  # networks.load_network splits at the first dot
        assert part in ("lora_down.weight", "lora_up.weight", "alpha"), key
        prefixes.setdefault(prefix, set()).add(part)
    assert len(prefixes) == len(state.modules)  # one A1111 network module per LoRA module
    unmatched = [p for p in prefixes if a1111_match(p, mapping) is None]
    assert unmatched == []
    for prefix, parts in prefixes.items():
        assert parts == {"lora_down.weight", "lora_up.weight", "alpha"}, prefix
        target = a1111_match(prefix, mapping)
        if mapping[target] == "mha":
            continue  # q/k/v of OpenCLIP's MultiheadAttention: checked below
        down, up = tensors[prefix + ".lora_down.weight"], tensors[prefix + ".lora_up.weight"]
        weight_shape = mapping[target]
        assert (up.shape[0], down.shape[1]) == weight_shape[:2], (prefix, target)
        if len(weight_shape) == 4:  # conv: A1111 builds a conv with the layer's kernel from lora_down
            assert tuple(down.shape[2:]) == weight_shape[2:] and tuple(up.shape[2:]) == (1, 1)
    # A1111 applies an OpenCLIP layer's q/k/v only when q, k, v and out_proj are all there
    for i in range(2 if family == "sdxl" else 0):
        base = f"lora_te2_text_model_encoder_layers_{i}_self_attn_"
        assert {base + s for s in ("q_proj", "k_proj", "v_proj", "out_proj")} <= set(prefixes)


def test_a1111_rules_reproduce_its_sdxl_upsampler_quirk():
    """Why SDXL UNet names must be written in LDM form: A1111's SD-1.5 arithmetic sends the
    diffusers name of SDXL's first up-sampler to a module that does not exist."""
    table = ldm_unet_modules(unet("sdxl").config)
    mapping = {"diffusion_model_" + k.replace(".", "_"): None for k in table}
    assert "diffusion_model_output_blocks_2_2_conv" in mapping
    assert diffusers_name_to_compvis("lora_unet_up_blocks_0_upsamplers_0_conv") == "diffusion_model_output_blocks_2_1_conv"
    assert a1111_match("lora_unet_up_blocks_0_upsamplers_0_conv", mapping) is None
    assert a1111_match("lora_unet_output_blocks_2_2_conv", mapping) == "diffusion_model_output_blocks_2_2_conv"
