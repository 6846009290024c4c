"""Tiny SD-1.5- and SDXL-layout models for the LoRA tests (same classes as the real ones, tiny widths).

Block layouts follow the real models' first blocks (SD-1.5: cross-attention down blocks first,
a plain up block first; SDXL: a plain down block first, cross-attention up blocks first,
linear proj_in/out, text_time conditioning), so the real models' naming rules apply to them.
"""

from __future__ import annotations

import torch

TEXT_DIM = 32


def tiny_text_encoder(with_projection: bool = False, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(hidden_size=TEXT_DIM, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=1000, max_position_embeddings=77, projection_dim=TEXT_DIM,
                         bos_token_id=0, eos_token_id=2, pad_token_id=1)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(cfg).eval()


def tiny_sd15_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=8, norm_num_groups=8,
    ).eval()


def tiny_sdxl_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + TEXT_DIM, cross_attention_dim=2 * TEXT_DIM, norm_num_groups=8,
    ).eval()


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                         up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=8, sample_size=8).eval()


def tiny_tokenizer(directory):
    """A CLIPTokenizer from a hand-written 20-word vocabulary (no hub access)."""
    import json
    from pathlib import Path

    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    words = ["<|startoftext|>", "<|endoftext|>", "!", "a</w>", "red</w>", "circle</w>", "blue</w>", "square</w>"]
    vocab = {w: i for i, w in enumerate(words)}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))


# -- adapters ------------------------------------------------------------------------------

UNET_TARGETS_SD15 = [
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "time_emb_proj", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv",
]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def add_random_adapter(model, targets, *, r=4, alpha=6.0, seed=1, rank_pattern=None, alpha_pattern=None,
                       adapter_name="default"):
    """peft LoRA with alpha != rank on `targets`, both factors random (peft zero-inits lora_B)."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, rank_pattern=rank_pattern or {},
                        alpha_pattern=alpha_pattern or {})
    inject_adapter_in_model(config, model, adapter_name=adapter_name)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, LoraLayer) and adapter_name in mod.lora_A:
                for w in (mod.lora_A[adapter_name].weight, mod.lora_B[adapter_name].weight):
                    w.copy_(torch.randn(w.shape, generator=g) * 0.2)
    return model


def unet_inputs(unet, batch=2, seed=0):
    """Random (sample, timestep, encoder_hidden_states, added_cond_kwargs) for a tiny UNet."""
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    sample = torch.randn(batch, cfg.in_channels, 8, 8, generator=g)
    t = torch.tensor([10, 500][:batch])
    hidden = torch.randn(batch, 5, cfg.cross_attention_dim, generator=g)
    added = None
    if cfg.addition_embed_type == "text_time":
        added = {"text_embeds": torch.randn(batch, TEXT_DIM, generator=g),
                 "time_ids": torch.tensor([[8.0, 8.0, 0.0, 0.0, 8.0, 8.0]] * batch)}
    return sample, t, hidden, added


@torch.no_grad()
def unet_out(unet, inputs):
    sample, t, hidden, added = inputs
    return unet(sample, t, encoder_hidden_states=hidden, added_cond_kwargs=added).sample
