"""kohya/LDM module names vs the real SD-1.5 and SDXL models (built on the meta device: no weights)."""

import pytest
import torch

from trainer.configs import load_component_config
from trainer.lora.export import kohya_key
from trainer.lora.families import real_module_table
from trainer.lora.layouts import classify_key
from trainer.lora.names import diffusers_to_ldm, kohya_to_path, ldm_to_diffusers

SDXL = load_component_config("sdxl", "unet")
SD15 = load_component_config("sd15", "unet")

# Hand-computed from the index rules (input = 1 + 3·block + layer, output = 3·block + layer) and
# checked line by line against ComfyUI's comfy/utils.py unet_to_diffusers.
SDXL_CASES = [
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "input_blocks.4.1.transformer_blocks.0.attn1.to_q"),
    ("down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2", "input_blocks.8.1.transformer_blocks.9.ff.net.2"),
    ("mid_block.attentions.0.transformer_blocks.9.ff.net.2", "middle_block.1.transformer_blocks.9.ff.net.2"),
    ("mid_block.resnets.1.conv2", "middle_block.2.out_layers.3"),
    ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
    ("down_blocks.1.downsamplers.0.conv", "input_blocks.6.0.op"),
    ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),  # A1111's SD-1.5 arithmetic would say .2.1
    ("up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
    ("up_blocks.0.attentions.2.proj_out", "output_blocks.2.1.proj_out"),
    ("up_blocks.2.resnets.2.conv_shortcut", "output_blocks.8.0.skip_connection"),
    ("down_blocks.0.resnets.1.time_emb_proj", "input_blocks.2.0.emb_layers.1"),
    ("down_blocks.2.resnets.0.conv1", "input_blocks.7.0.in_layers.2"),
    ("conv_in", "input_blocks.0.0"),
    ("conv_out", "out.2"),
    ("time_embedding.linear_1", "time_embed.0"),
    ("add_embedding.linear_2", "label_emb.0.2"),
]


@pytest.mark.parametrize("diffusers_path,ldm_path", SDXL_CASES)
def test_sdxl_ldm_names_follow_the_index_rules(diffusers_path, ldm_path):
    assert diffusers_to_ldm(diffusers_path, SDXL) == ldm_path
    assert ldm_to_diffusers(ldm_path, SDXL) == diffusers_path


def test_sd15_upsampler_after_a_plain_up_block_is_index_1():
    assert diffusers_to_ldm("up_blocks.0.upsamplers.0.conv", SD15) == "output_blocks.2.1.conv"
    assert diffusers_to_ldm("up_blocks.1.upsamplers.0.conv", SD15) == "output_blocks.5.2.conv"
    assert diffusers_to_ldm("down_blocks.3.resnets.1.conv2", SD15) == "input_blocks.11.0.out_layers.3"


def test_kohya_names_from_the_facts_page():
    assert kohya_key("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "sd15") == \
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert kohya_key("unet", "mid_block.attentions.0.proj_in", "sd15") == "lora_unet_mid_block_attentions_0_proj_in"
    assert kohya_key("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "sdxl") == \
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    assert kohya_key("unet", "mid_block.attentions.0.transformer_blocks.9.ff.net.2", "sdxl") == \
        "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2"
    assert kohya_key("unet", "up_blocks.0.upsamplers.0.conv", "sdxl") == "lora_unet_output_blocks_2_2_conv"
    # ComfyUI's model_lora_keys_clip: "lora_te_text_model_encoder_layers_{}_{}" / lora_te1_ / lora_te2_
    te = "text_model.encoder.layers.3.self_attn.q_proj"
    assert kohya_key("text_encoder", te, "sd15") == "lora_te_text_model_encoder_layers_3_self_attn_q_proj"
    assert kohya_key("text_encoder", te, "shapes") == "lora_te_text_model_encoder_layers_3_self_attn_q_proj"
    assert kohya_key("text_encoder", te, "sdxl") == "lora_te1_text_model_encoder_layers_3_self_attn_q_proj"
    assert kohya_key("text_encoder_2", "text_model.encoder.layers.31.mlp.fc2", "sdxl") == \
        "lora_te2_text_model_encoder_layers_31_mlp_fc2"
    assert kohya_to_path("time_embed_0") == "time_embed.0"


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_every_real_layer_name_round_trips_through_kohya(family):
    """All Linear/Conv2d layers of the real UNet and text encoders: export name -> parse -> same layer."""
    tables = real_module_table(family)
    assert len(tables["unet"]) > 250  # 282 in SD-1.5, 794 in SDXL
    for component, table in tables.items():
        for path in table:
            key = kohya_key(component, path, family) + ".lora_down.weight"
            layout, comp, parsed, part = classify_key(key)
            if comp == "unet" and family == "sdxl":
                parsed = ldm_to_diffusers(parsed, SDXL)
            assert (layout, comp, parsed, part) == ("kohya", component, path, "down"), key


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_ldm_names_agree_with_diffusers_single_file_converter(family):
    """Our LDM name of every real UNet parameter is the key an original checkpoint stores it under.

    diffusers' own converter of original (LDM) checkpoints is the independent reference: feed it
    a checkpoint whose keys are our names and check each value lands on the right parameter.
    """
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = load_component_config(family, "unet")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    params = [name for name, _ in unet.named_parameters()]
    checkpoint = {}
    for i, name in enumerate(params):
        module, leaf = name.rsplit(".", 1)
        checkpoint[f"model.diffusion_model.{diffusers_to_ldm(module, config)}.{leaf}"] = torch.tensor([float(i)])
    converted = convert_ldm_unet_checkpoint(checkpoint, config)
    assert set(converted) == set(params)
    for i, name in enumerate(params):
        assert converted[name].item() == float(i), name
