"""Export -> import is exact: kohya, diffusers and PEFT layouts, SD-1.5 and SDXL tiny models."""

import json

import pytest
import torch
from safetensors import safe_open

from fixtures_lora import (
    TEXT_TARGETS, UNET_TARGETS_SD15, add_random_adapter, tiny_sd15_unet, tiny_sdxl_unet, tiny_text_encoder,
)
from trainer.lora import (
    LoraState, combine, lora_from_peft, read_lora, save_diffusers, save_kohya, save_peft, to_kohya_state_dict,
)


def adapted_state(family):
    """A LoRA over UNet (attention, ff, proj, resnet convs, samplers) and text encoder(s), alpha != rank."""
    unet = tiny_sdxl_unet() if family == "sdxl" else tiny_sd15_unet()
    add_random_adapter(unet, UNET_TARGETS_SD15, r=4, alpha=6.0, rank_pattern={"ff.net.2": 2},
                       alpha_pattern={"conv1": 3.0, "proj_out": 2.5})
    te = add_random_adapter(tiny_text_encoder(seed=1), TEXT_TARGETS, r=3, alpha=5.0, seed=3)
    parts = [lora_from_peft(unet, family=family), lora_from_peft(te, "text_encoder", family=family)]
    if family == "sdxl":
        te2 = add_random_adapter(tiny_text_encoder(True, seed=2), TEXT_TARGETS, r=2, alpha=1.0, seed=4)
        parts.append(lora_from_peft(te2, "text_encoder_2", family=family))
    return combine(*parts)


def assert_same_modules(a, b, dtype=None):
    assert a.modules.keys() == b.modules.keys()
    for key, m in a.modules.items():
        n = b.modules[key]
        down, up = (m.down, m.up) if dtype is None else (m.down.to(dtype), m.up.to(dtype))
        assert torch.equal(down, n.down) and torch.equal(up, n.up), key
        assert m.effective_alpha == n.effective_alpha, key


def test_lora_from_peft_keeps_the_real_alpha():
    state = adapted_state("sd15")
    q = state.modules["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    assert (q.rank, q.alpha) == (4, 6.0)
    conv = state.modules["unet.down_blocks.0.resnets.0.conv1"]
    assert conv.alpha == 3.0 and conv.down.shape == (4, 32, 3, 3) and conv.up.shape == (32, 4, 1, 1)
    assert state.modules["unet.up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2"].rank == 2
    assert state.modules["text_encoder.text_model.encoder.layers.1.mlp.fc1"].alpha == 5.0


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_kohya_round_trip_is_exact(family, tmp_path):
    state = adapted_state(family)
    path = tmp_path / "lora.safetensors"
    save_kohya(state, path, dtype=torch.float32, training_comment={"method": "SPO", "beta": 10.0})
    back = read_lora(path, check_shapes=False)
    assert (back.family, back.layout, back.unknown_keys) == (family, "kohya", [])
    assert_same_modules(state, back)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_kohya_fp16_round_trip_equals_the_fp16_cast(family, tmp_path):
    state = adapted_state(family)
    path = tmp_path / "lora16.safetensors"
    save_kohya(state, path)  # fp16 by default
    back = read_lora(path, check_shapes=False)
    assert all(m.down.dtype == torch.float16 for m in back.modules.values())
    assert_same_modules(state, back, dtype=torch.float16)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_diffusers_and_peft_round_trips_are_exact(family, tmp_path):
    state = adapted_state(family)
    save_diffusers(state, tmp_path / "d.safetensors")
    back = read_lora(tmp_path / "d.safetensors", family=family, check_shapes=False)
    assert back.layout == "diffusers"
    assert_same_modules(state, back)

    unet_only = LoraState({k: m for k, m in state.modules.items() if k.startswith("unet.")}, family=family)
    folders = save_peft(unet_only, tmp_path / "peft")
    assert folders == [tmp_path / "peft"]
    back = read_lora(tmp_path / "peft", family=family, check_shapes=False)
    assert back.layout == "peft"
    assert_same_modules(unet_only, back)


def test_kohya_metadata_fields_are_strings_and_complete(tmp_path):
    state = adapted_state("sdxl")
    path = tmp_path / "m.safetensors"
    save_kohya(state, path, output_name="spo_sdxl", base_model_name="sd_xl_base_1.0.safetensors",
               training_comment={"method": "SPO", "steps": 20})
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "6.0"  # most common, not alpha = rank
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["ss_output_name"] == "spo_sdxl" and meta["modelspec.title"] == "spo_sdxl"
    assert meta["ss_sd_model_name"] == "sd_xl_base_1.0.safetensors"
    assert json.loads(meta["ss_training_comment"]) == {"method": "SPO", "steps": 20}
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert meta["modelspec.sai_model_spec"] and meta["modelspec.date"][:2] == "20"
    # 3x3 convs: conv1 has alpha 3, the more numerous conv2/shortcut/sampler convs alpha 6
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "6.0"}
    sd15 = tmp_path / "s.safetensors"
    save_kohya(adapted_state("sd15"), sd15, training_comment="plain text")
    with safe_open(str(sd15), "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "sd_v1" and meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["ss_training_comment"] == "plain text" and meta["ss_output_name"] == "s"


def test_sshs_model_hash_is_what_a1111_computes_from_the_file(tmp_path):
    """sd-webui-additional-networks / A1111 hash: sha256 of everything after the safetensors header."""
    import hashlib

    path = tmp_path / "h.safetensors"
    meta = save_kohya(adapted_state("sd15"), path)
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert meta["sshs_model_hash"] == hashlib.sha256(data[8 + n:]).hexdigest()
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["sshs_model_hash"] == meta["sshs_model_hash"]


def test_shapes_family_is_written_with_sd15_names(tmp_path):
    state = adapted_state("sd15")
    state.family = "shapes"
    path = tmp_path / "shapes.safetensors"
    meta = save_kohya(state, path)
    assert meta["ss_base_model_version"] == "sd_v1"
    assert all(k.startswith(("lora_unet_down_blocks", "lora_unet_mid_block", "lora_unet_up_blocks", "lora_te_"))
               for k in to_kohya_state_dict(state))
    assert read_lora(path).family == "shapes"  # from spo_studio.family; no real-size shape check


def test_openclip_layers_are_complete(tmp_path):
    """SDXL te2 layers touched on q/v only get zero k/out_proj so A1111 does not skip the layer."""
    te2 = add_random_adapter(tiny_text_encoder(True), ["q_proj", "v_proj"], r=2, alpha=2.0)
    state = lora_from_peft(te2, "text_encoder_2", family="sdxl")
    sd = to_kohya_state_dict(state)
    for layer in range(2):
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            assert f"lora_te2_text_model_encoder_layers_{layer}_self_attn_{proj}.lora_down.weight" in sd
        k = sd[f"lora_te2_text_model_encoder_layers_{layer}_self_attn_k_proj.lora_up.weight"]
        assert k.abs().sum() == 0  # no change to the model
