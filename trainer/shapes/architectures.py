"""Configs of ShapesWorld's models: the same classes as Stable Diffusion 1.5, scaled down.

Latents: 64×64 RGB ↔ 16×16×4 (SD's 8× becomes 4×). The text tower's width is the UNet's
cross-attention width, as in SD-1.5 (768 there, 64 here).
"""
from __future__ import annotations

TEXT_WIDTH = 64


def token_ids() -> tuple[int, int, int]:
    """(vocab_size, bos_id, eos_id) of the tokenizer that tokenizer.write_tokenizer writes."""
    from .tokenizer import BOS, EOS, bpe_tables
    from .world import vocabulary_words

    vocab, _ = bpe_tables(vocabulary_words() + [","])
    return len(vocab), vocab[BOS], vocab[EOS]


def clip_config():
    """CLIP (text + vision, patch 8 on 64×64): contrastive pretraining, text tower reused by the pipeline."""
    from transformers import CLIPConfig

    vocab_size, bos_id, eos_id = token_ids()
    text = dict(vocab_size=vocab_size, hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH, num_hidden_layers=3,
                num_attention_heads=4, max_position_embeddings=77, bos_token_id=bos_id, eos_token_id=eos_id,
                pad_token_id=eos_id, projection_dim=64)
    vision = dict(image_size=64, patch_size=8, hidden_size=96, intermediate_size=384, num_hidden_layers=4,
                  num_attention_heads=4, projection_dim=64)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)


TOKEN_LENGTH = 16  # tokenizer.model_max_length: captions are ≤ 13 tokens; 77 would cost the UNet 4×


def vae_config() -> dict:
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 64, 64), layers_per_block=1, norm_num_groups=16,
    )


def unet_config() -> dict:
    return dict(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        # Four levels, 16×16 down to 2×2, as SD-1.5 has four. The UNet has no positional encoding:
        # it can only tell "top left" from "bottom right" through the zero padding of its convolutions,
        # and the five shape positions lie inside a 4×4 map, where no 3×3 kernel sees the border. A
        # 2×2 level, where every cell is a corner, learned the position words in 2,000 steps; with the
        # lowest level at 4×4 they were still ignored after 18,000 in one build and learned in the other.
        # Cross-attention at 8×8 and below only: at 16×16 it would triple the cost on CPU.
        block_out_channels=(32, 64, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=4, norm_num_groups=32,
    )


def scheduler_config() -> dict:
    """SD-1.5's DDIM scheduler config."""
    return dict(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        steps_offset=1, set_alpha_to_one=False, clip_sample=False, prediction_type="epsilon",
        timestep_spacing="leading",
    )
