"""Stand-in of comfy.lora: kohya key maps for SD-1.5-layout models and load_lora.

load_lora returns patches in the tuple form ComfyUI used before its weight_adapter classes:
{model_key: ("lora", (up, down, alpha, mid, dora_scale))}.
"""
import logging

LORA_CLIP_MAP = {
    "mlp.fc1": "mlp_fc1",
    "mlp.fc2": "mlp_fc2",
    "self_attn.k_proj": "self_attn_k_proj",
    "self_attn.q_proj": "self_attn_q_proj",
    "self_attn.v_proj": "self_attn_v_proj",
    "self_attn.out_proj": "self_attn_out_proj",
}


def model_lora_keys_clip(model, key_map={}):
    sdk = model.state_dict().keys()
    for k in sdk:
        if k.endswith(".weight"):
            key_map["text_encoders.{}".format(k[: -len(".weight")])] = k
    for b in range(32):
        for c, short in LORA_CLIP_MAP.items():
            k = "clip_l.transformer.text_model.encoder.layers.{}.{}.weight".format(b, c)
            if k in sdk:
                key_map["lora_te_text_model_encoder_layers_{}_{}".format(b, short)] = k
                key_map["lora_te1_text_model_encoder_layers_{}_{}".format(b, short)] = k
                key_map["text_encoder.text_model.encoder.layers.{}.{}".format(b, c)] = k
    return key_map


def model_lora_keys_unet(model, key_map={}):
    """The stand-in's UNet keeps diffusers module names under diffusion_model., so the kohya
    name of a module is what ComfyUI derives for SD-1.5 through unet_to_diffusers."""
    for k in model.state_dict().keys():
        if k.startswith("diffusion_model.") and k.endswith(".weight"):
            key_lora = k[len("diffusion_model."): -len(".weight")].replace(".", "_")
            key_map["lora_unet_{}".format(key_lora)] = k
            key_map["{}".format(k[: -len(".weight")])] = k
    return key_map


def load_lora(lora, to_load, log_missing=True):
    patch_dict = {}
    loaded_keys = set()
    for x in to_load:
        alpha_name = "{}.alpha".format(x)
        alpha = None
        if alpha_name in lora.keys():
            alpha = lora[alpha_name].item()
            loaded_keys.add(alpha_name)
        up_name, down_name = "{}.lora_up.weight".format(x), "{}.lora_down.weight".format(x)
        if up_name in lora.keys():
            patch_dict[to_load[x]] = ("lora", (lora[up_name], lora[down_name], alpha, None, None))
            loaded_keys.update((up_name, down_name))
    if log_missing:
        for x in lora.keys():
            if x not in loaded_keys:
                logging.warning("lora key not loaded: {}".format(x))
    return patch_dict
