"""HPSv2 / HPSv2.1 (Wu et al. 2023): an OpenCLIP ViT-H/14 fine-tuned on human preferences.

The released `HPS_v2_compressed.pt` / `HPS_v2.1_compressed.pt` hold {"state_dict": OpenCLIP keys}.
They are mapped key by key onto transformers' CLIPModel (same network: pre-LN ViT and causal
text transformer, exact GELU, CLS / EOT pooling, bias-free projections), so neither open_clip nor
torchvision is needed. The score is what `hpsv2.score` returns: cos(image, text) of the normalised
embeddings (no logit scale), ~0.2–0.3 on real images; papers often print it ×100.

Preprocessing as HPSv2's own `score` runs it (`preprocess_val` of its open_clip fork, built with
`light_augmentation=True`, so `resize_longest_max`): the longest side to 224 with antialiased
bicubic on the float tensor (overshoot kept), zero padding to 224 × 224, OpenAI CLIP mean/std —
`trainer.spm.preprocess.hpsv2_preprocess`. It is not a centre crop: a 832×1216 picture is scored
whole, with black bars.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .files import ScorerError, check_keys, find_tokenizer, read_weights

TOKENIZER_FILES = ("vocab.json", "merges.txt")


def openclip_key_map(text_layers: int, vision_layers: int) -> dict[str, str]:
    """OpenCLIP name -> transformers CLIPModel name for the tensors copied as they are
    (attention in_proj and the two projections are split / transposed in `openclip_to_transformers`)."""
    m = {
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale",
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    }
    for src, dst, n in (("transformer", "text_model", text_layers), ("visual.transformer", "vision_model", vision_layers)):
        for i in range(n):
            a, b = f"{src}.resblocks.{i}.", f"{dst}.encoder.layers.{i}."
            for oc, hf in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"),
                           ("mlp.c_proj", "mlp.fc2"), ("attn.out_proj", "self_attn.out_proj")):
                for p in ("weight", "bias"):
                    m[f"{a}{oc}.{p}"] = f"{b}{hf}.{p}"
    return m


def openclip_to_transformers(state: dict[str, torch.Tensor], text_layers: int, vision_layers: int) -> dict[str, torch.Tensor]:
    """An OpenCLIP CLIP state dict -> transformers CLIPModel state dict (tensors shared, not copied).

    in_proj_weight [3D, D] / in_proj_bias [3D] are q, k, v stacked in that order (nn.MultiheadAttention);
    text_projection [D_text, P] and visual.proj [D_vision, P] are used as x @ W, transformers' Linear as x @ Wᵀ.
    """
    out = {dst: state[src] for src, dst in openclip_key_map(text_layers, vision_layers).items()}
    for src, dst, n in (("transformer", "text_model", text_layers), ("visual.transformer", "vision_model", vision_layers)):
        for i in range(n):
            w = state[f"{src}.resblocks.{i}.attn.in_proj_weight"].chunk(3, dim=0)
            b = state[f"{src}.resblocks.{i}.attn.in_proj_bias"].chunk(3, dim=0)
            for name, wi, bi in zip(("q_proj", "k_proj", "v_proj"), w, b):
                out[f"{dst}.encoder.layers.{i}.self_attn.{name}.weight"] = wi
                out[f"{dst}.encoder.layers.{i}.self_attn.{name}.bias"] = bi
    out["text_projection.weight"] = state["text_projection"].t()
    out["visual_projection.weight"] = state["visual.proj"].t()
    out["vision_model.embeddings.patch_embedding.weight"] = state["visual.conv1.weight"]
    return out


def expected_openclip_shapes(config) -> dict[str, tuple[int, ...]]:
    """Every key and shape of an OpenCLIP ViT state dict with this CLIPConfig's sizes (the released layout)."""
    t, v, p = config.text_config, config.vision_config, config.projection_dim
    D, V = t.hidden_size, v.hidden_size
    grid = (v.image_size // v.patch_size) ** 2
    shapes = {
        "positional_embedding": (t.max_position_embeddings, D), "text_projection": (D, p), "logit_scale": (),
        "token_embedding.weight": (t.vocab_size, D), "ln_final.weight": (D,), "ln_final.bias": (D,),
        "visual.class_embedding": (V,), "visual.positional_embedding": (grid + 1, V), "visual.proj": (V, p),
        "visual.conv1.weight": (V, 3, v.patch_size, v.patch_size),
        "visual.ln_pre.weight": (V,), "visual.ln_pre.bias": (V,), "visual.ln_post.weight": (V,), "visual.ln_post.bias": (V,),
    }
    for prefix, width, mlp, n in (("transformer", D, t.intermediate_size, t.num_hidden_layers),
                                  ("visual.transformer", V, v.intermediate_size, v.num_hidden_layers)):
        for i in range(n):
            a = f"{prefix}.resblocks.{i}."
            shapes.update({
                a + "ln_1.weight": (width,), a + "ln_1.bias": (width,), a + "ln_2.weight": (width,), a + "ln_2.bias": (width,),
                a + "attn.in_proj_weight": (3 * width, width), a + "attn.in_proj_bias": (3 * width,),
                a + "attn.out_proj.weight": (width, width), a + "attn.out_proj.bias": (width,),
                a + "mlp.c_fc.weight": (mlp, width), a + "mlp.c_fc.bias": (mlp,),
                a + "mlp.c_proj.weight": (width, mlp), a + "mlp.c_proj.bias": (width,),
            })
    return shapes


def vit_h14_config():
    """OpenCLIP ViT-H-14's architecture as a transformers CLIPConfig (the same as PickScore's CLIP-H)."""
    from ..spm.weights import clip_h14_config

    return clip_h14_config()


class HPSv2(nn.Module):
    kind = "hpsv2"
    family = None  # not tied to a diffusion model family

    def __init__(self, model):
        super().__init__()
        self.model = model  # a step-agnostic StepAwarePreferenceModel: CLIP + tokenizer + preprocessing

    @torch.inference_mode()
    def score(self, images: torch.Tensor, prompts: Sequence[str], timesteps=None) -> torch.Tensor:
        """cos(image, text), Tensor[B] float32 (see module docstring)."""
        from ..spm.model import check_score_inputs

        check_score_inputs(images, prompts, 0)
        unique = list(dict.fromkeys(prompts))
        text = self.model.encode_text(unique)[[unique.index(p) for p in prompts]]
        image = self.model.encode_images(images, torch.zeros(images.shape[0], dtype=torch.long))
        return (image * text).sum(-1).float()


def load_hpsv2(path: str | os.PathLike, device="cpu", dtype=torch.float32, tokenizer: str = "", config=None) -> HPSv2:
    """A released HPSv2 / HPSv2.1 checkpoint, strictly (every OpenCLIP key and shape, nothing else).

    tokenizer: CLIP tokenizer folder (default: tokenizer/ beside the file, or vocab.json + merges.txt there);
    config: a CLIPConfig of another size than ViT-H/14 (tests)."""
    from transformers import CLIPModel

    from ..spm.model import StepAwarePreferenceModel
    from ..spm.preprocess import PreprocessConfig

    path = Path(path)
    config = config if config is not None else vit_h14_config()
    state = read_weights(path, "HPSv2")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # a DDP-saved file
    check_keys(state, expected_openclip_shapes(config), path, "HPSv2 (OpenCLIP ViT)", ignorable=("attn_mask",))
    tok = find_tokenizer(path.parent, tokenizer, TOKENIZER_FILES, "CLIP", "clip_tokenizer")
    mapped = openclip_to_transformers(state, config.text_config.num_hidden_layers, config.vision_config.num_hidden_layers)
    with torch.device("meta"):
        clip = CLIPModel(config)
    clip.load_state_dict(mapped, strict=True, assign=True)
    for emb in (clip.text_model.embeddings, clip.vision_model.embeddings):  # non-persistent buffers left on meta
        n = emb.position_embedding.weight.shape[0]
        emb.register_buffer("position_ids", torch.arange(n).expand((1, -1)), persistent=False)
    spm = StepAwarePreferenceModel(clip=clip, step_aware=False, preprocess=PreprocessConfig(config.vision_config.image_size, method="hpsv2"), tokenizer=tok)
    try:
        spm.get_tokenizer()
    except ValueError as e:
        raise ScorerError(str(e)) from None
    return HPSv2(spm.to(device=device, dtype=dtype).eval().requires_grad_(False))
