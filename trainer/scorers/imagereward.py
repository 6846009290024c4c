"""ImageReward-v1.0 (Xu et al. 2023) on transformers' BLIP classes.

The released `ImageReward.pt` is the state dict of ImageReward(nn.Module):
    blip.visual_encoder.*   BLIP's ViT-L/16 (timm layout: cls_token, pos_embed, patch_embed.proj, blocks.i.{norm1,
                            attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm)  -> transformers BlipVisionModel
    blip.text_encoder.*     BLIP's med.py BertModel with cross-attention, no pooler  -> transformers BlipTextModel
                            (ported from the same med.py: identical parameter names)
    blip.vision_proj/text_proj  BLIP's contrastive heads, unused by the reward (accepted, ignored)
    mlp.layers.{0,2,4,6,7}  the reward head on the [CLS] state (the LAION aesthetic MLP's layout)
Why transformers' BLIP and not the ImageReward package: that package needs timm, fairscale and
torchvision and pins old transformers APIs; transformers' BlipVisionModel/BlipTextModel are the same
network (qkv-fused pre-LN ViT with eps 1e-6 and a final norm on all tokens; post-LN BERT, GELU,
cross-attention in every layer), so only the ViT's names need mapping.

reward = (MLP(text_encoder(ids, cross-attending to ViT(image))[:, 0]) − 0.16717) / 1.03334, as
ImageReward.score: prompts tokenised by bert-base-uncased ([DEC] and [ENC] added, as BLIP does),
padded to 35 tokens; images resized (shortest side 224, bicubic), centre-cropped, OpenAI CLIP mean/std.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .aesthetic import aesthetic_mlp
from .aesthetic import expected_shapes as mlp_shapes
from .files import ScorerError, check_keys, find_tokenizer, read_weights

CONFIG = Path(__file__).with_name("imagereward_config.json")
IGNORED = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")


def default_config() -> dict:
    return json.loads(CONFIG.read_text())


def vit_key_map(layers: int) -> dict[str, str]:
    """BLIP ViT (timm layout, under blip.visual_encoder.) -> transformers BlipVisionModel names."""
    m = {
        "cls_token": "embeddings.class_embedding",
        "pos_embed": "embeddings.position_embedding",
        "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
        "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
        "norm.weight": "post_layernorm.weight",
        "norm.bias": "post_layernorm.bias",
    }
    for i in range(layers):
        for src, dst in (("norm1", "layer_norm1"), ("attn.qkv", "self_attn.qkv"), ("attn.proj", "self_attn.projection"),
                         ("norm2", "layer_norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            for p in ("weight", "bias"):
                m[f"blocks.{i}.{src}.{p}"] = f"encoder.layers.{i}.{dst}.{p}"
    return m


def build_modules(cfg: dict):
    """(BlipVisionModel, BlipTextModel without pooler, reward MLP) with the config's sizes, on the meta device."""
    from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

    v, t = cfg["vision"], cfg["text"]
    vision_cfg = BlipVisionConfig(**v)
    # is_decoder=True only makes the layers own their cross-attention; forward runs them as an encoder.
    text_cfg = BlipTextConfig(**t, encoder_hidden_size=v["hidden_size"], is_decoder=True)
    with torch.device("meta"):
        vision = BlipVisionModel(vision_cfg)
        text = BlipTextModel(text_cfg, add_pooling_layer=False)
        mlp = aesthetic_mlp(t["hidden_size"])
    return vision, text, mlp


def expected_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every key and shape of a released-layout ImageReward checkpoint with these sizes (without IGNORED parts)."""
    vision, text, mlp = build_modules(cfg)
    inverse = {dst: src for src, dst in vit_key_map(cfg["vision"]["num_hidden_layers"]).items()}
    shapes = {f"blip.visual_encoder.{inverse[k]}": tuple(p.shape) for k, p in vision.state_dict().items()}
    shapes.update({f"blip.text_encoder.{k}": tuple(p.shape) for k, p in text.state_dict().items()})
    shapes.update({f"mlp.{k}": s for k, s in mlp_shapes(cfg["text"]["hidden_size"]).items()})
    return shapes


class ImageReward(nn.Module):
    kind = "imagereward"
    family = None  # not tied to a diffusion model family

    def __init__(self, vision, text, mlp, tokenizer, cfg: dict):
        super().__init__()
        from ..spm.preprocess import PreprocessConfig

        self.vision, self.text, self.mlp = vision, text, mlp
        self.tokenizer = tokenizer
        self.max_length = int(cfg["max_length"])
        self.mean, self.std = float(cfg["reward_mean"]), float(cfg["reward_std"])
        # ImageReward preprocesses PIL pictures with OpenAI CLIP's transform (torchvision Resize on PIL =
        # PIL's antialiased bicubic, CenterCrop's rounded offsets), not the SPM's plain bicubic on the float
        # tensor (PreprocessConfig's default).
        self.preprocess = PreprocessConfig(int(cfg["vision"]["image_size"]), method="openai")

    def reward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, 3, S, S] (normalised), input_ids / attention_mask [B, L] -> z-scored reward Tensor[B] float32."""
        dtype = self.mlp[0].weight.dtype
        image_embeds = self.vision(pixel_values=pixel_values.to(dtype)).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds,
                        encoder_attention_mask=image_atts, is_decoder=False)
        r = self.mlp(out.last_hidden_state[:, 0]).squeeze(-1).float()
        return (r - self.mean) / self.std

    @torch.inference_mode()
    def score(self, images: torch.Tensor, prompts: Sequence[str], timesteps=None) -> torch.Tensor:
        from ..spm.model import check_score_inputs
        from ..spm.preprocess import clip_preprocess

        check_score_inputs(images, prompts, 0)
        device = self.mlp[0].weight.device
        enc = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt")
        pixels = clip_preprocess(images.to(device), self.preprocess)
        return self.reward(pixels, enc.input_ids.to(device), enc.attention_mask.to(device))


def blip_tokenizer(folder: str):
    """bert-base-uncased with BLIP's two added tokens ([DEC] as bos, [ENC]), as BLIP's init_tokenizer builds it."""
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(folder)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


def load_imagereward(path: str | os.PathLike, device="cpu", dtype=torch.float32, tokenizer: str = "", config: dict | None = None) -> ImageReward:
    """A released ImageReward.pt, strictly. tokenizer: bert-base-uncased folder (default tokenizer/ or vocab.txt
    beside the file); config: sizes (default the released ViT-L + BERT-base, trainer/scorers/imagereward_config.json)."""
    path = Path(path)
    cfg = config if config is not None else default_config()
    state = read_weights(path, "ImageReward")
    check_keys(state, expected_shapes(cfg), path, "ImageReward (BLIP + MLP)", ignorable=IGNORED)
    tok_dir = find_tokenizer(path.parent, tokenizer, ("vocab.txt",), "BERT (bert-base-uncased)", "bert_tokenizer")
    vision, text, mlp = build_modules(cfg)
    vit = {dst: state[f"blip.visual_encoder.{src}"] for src, dst in vit_key_map(cfg["vision"]["num_hidden_layers"]).items()}
    vision.load_state_dict(vit, strict=True, assign=True)
    text.load_state_dict({k: state[f"blip.text_encoder.{k}"] for k in text.state_dict()}, strict=True, assign=True)
    text.embeddings.register_buffer("position_ids", torch.arange(cfg["text"]["max_position_embeddings"]).expand((1, -1)), persistent=False)
    mlp.load_state_dict({k: state[f"mlp.layers.{k}"] for k in mlp.state_dict()}, strict=True, assign=True)
    try:
        tok = blip_tokenizer(tok_dir)
    except (OSError, ValueError) as e:
        raise ScorerError(f"{tok_dir}: cannot load the BERT tokenizer ({str(e).splitlines()[0][:120]})") from None
    if len(tok) > cfg["text"]["vocab_size"]:
        raise ScorerError(f"{tok_dir}: tokenizer has {len(tok)} tokens but the checkpoint's vocabulary {cfg['text']['vocab_size']}")
    model = ImageReward(vision, text, mlp, tok, cfg)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
