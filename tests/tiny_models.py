"""Tiny SD-1.5-layout and SDXL-layout pipelines built from the real classes, saved as diffusers dirs.

Same module names and code paths as the real models; widths small enough for CPU tests.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

SCHEDULER = dict(
    _class_name="DDIMScheduler",
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)


def _byte_chars() -> list[str]:
    """GPT-2/CLIP byte-to-unicode alphabet: the base symbols of a byte-level BPE vocab."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tokenizer(path: Path, max_length: int = 16) -> None:
    """A CLIP tokenizer with a character-level vocab (no merges): any text tokenizes, offline."""
    path.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            dict(
                tokenizer_class="CLIPTokenizer",
                model_max_length=max_length,
                bos_token="<|startoftext|>",
                eos_token="<|endoftext|>",
                unk_token="<|endoftext|>",
                pad_token="<|endoftext|>",
            )
        )
    )


def vocab_size() -> int:
    return 2 * 256 + 2


def tiny_unet(sdxl: bool = False, seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    common = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                  norm_num_groups=8)
    if sdxl:  # SDXL in miniature: no attention in the first block, deeper transformer stacks, text_time embeds
        return UNet2DConditionModel(
            **common,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2),
            attention_head_dim=(2, 4),
            cross_attention_dim=64,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=32 + 6 * 8,
        )
    return UNet2DConditionModel(
        **common,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=4,
        cross_attention_dim=32,
    )


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )


def tiny_text_encoder(hidden: int = 32, projection: bool = False, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=vocab_size(),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        projection_dim=hidden,
        bos_token_id=vocab_size() - 2,
        eos_token_id=vocab_size() - 1,
        pad_token_id=vocab_size() - 1,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def tiny_clip_config(image_size: int = 32, mlp_ratio: int = 2):
    """The CLIPConfig of the tiny CLIPs under the SPM and scorer tests: text width 32 (context 16, this
    module's tokenizer vocab), vision width 40 (patch 8), 2 heads and 2 layers each, projection 24,
    exact GELU; text and vision widths differ, as in CLIP-H. mlp_ratio: MLP width over model width."""
    from transformers import CLIPConfig

    v = vocab_size()
    return CLIPConfig(
        text_config=dict(vocab_size=v, hidden_size=32, intermediate_size=32 * mlp_ratio, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, hidden_act="gelu", projection_dim=24,
                         bos_token_id=v - 2, eos_token_id=v - 1, pad_token_id=v - 1),
        vision_config=dict(hidden_size=40, intermediate_size=40 * mlp_ratio, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8, hidden_act="gelu", projection_dim=24),
        projection_dim=24,
    )


def save_tiny_pipeline(root: Path, sdxl: bool = False, seed: int = 0) -> Path:
    """Write a tiny pipeline directory in the diffusers layout of SD-1.5 (or SDXL) and return it."""
    root = Path(root)
    tiny_unet(sdxl, seed).save_pretrained(root / "unet")
    tiny_vae(seed).save_pretrained(root / "vae")
    write_tokenizer(root / "tokenizer")
    (root / "scheduler").mkdir(parents=True, exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    index = {
        "_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
    }
    if sdxl:
        tiny_text_encoder(32, seed=seed).save_pretrained(root / "text_encoder")
        tiny_text_encoder(32, projection=True, seed=seed + 1).save_pretrained(root / "text_encoder_2")
        write_tokenizer(root / "tokenizer_2")
        index.update(
            text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
            tokenizer_2=["transformers", "CLIPTokenizer"],
            force_zeros_for_empty_prompt=True,
        )
    else:
        tiny_text_encoder(32, seed=seed).save_pretrained(root / "text_encoder")
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (root / "model_index.json").write_text(json.dumps(index))
    return root
