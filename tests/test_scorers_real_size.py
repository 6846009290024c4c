"""The scorer loaders at the released checkpoints' real sizes: every key and shape of the released
layout (random values, saved and reloaded strictly), one forward. Slow: gigabytes of random weights."""
from __future__ import annotations

import pytest
import torch

from scorer_fixtures import write_bert_tokenizer
from tiny_models import write_tokenizer

pytestmark = pytest.mark.slow


def _random_fp16(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(s, generator=g) * 0.02).half() for k, s in shapes.items()}


def test_hpsv2_real_size_vit_h14(tmp_path):
    from trainer.scorers.hpsv2 import expected_openclip_shapes, load_hpsv2, vit_h14_config

    shapes = expected_openclip_shapes(vit_h14_config())
    assert shapes["visual.conv1.weight"] == (1280, 3, 14, 14) and shapes["text_projection"] == (1024, 1024)
    assert len([k for k in shapes if k.startswith("visual.transformer.resblocks.") and k.endswith("in_proj_weight")]) == 32
    torch.save({"state_dict": _random_fp16(shapes)}, tmp_path / "HPS_v2.1_compressed.pt")
    write_tokenizer(tmp_path / "tokenizer", max_length=77)
    scorer = load_hpsv2(tmp_path / "HPS_v2.1_compressed.pt", dtype=torch.bfloat16)  # bf16: ~2 GB instead of 4
    s = scorer.score(torch.rand(1, 3, 256, 320) * 2 - 1, ["a photo of a cat"])
    assert s.shape == (1,) and torch.isfinite(s).all() and -1 <= float(s) <= 1


def test_imagereward_real_size_blip_large(tmp_path):
    from trainer.scorers.imagereward import IGNORED, default_config, expected_shapes, load_imagereward

    cfg = default_config()
    shapes = expected_shapes(cfg)
    assert shapes["blip.visual_encoder.pos_embed"] == (1, 197, 1024)
    assert shapes["blip.text_encoder.embeddings.word_embeddings.weight"] == (30524, 768)
    assert shapes["blip.text_encoder.encoder.layer.11.crossattention.self.key.weight"] == (768, 1024)
    assert shapes["mlp.layers.0.weight"] == (1024, 768)
    state = _random_fp16(shapes)
    state.update({"blip.vision_proj.weight": torch.zeros(256, 1024), "blip.vision_proj.bias": torch.zeros(256),
                  "blip.text_proj.weight": torch.zeros(256, 768), "blip.text_proj.bias": torch.zeros(256),
                  "blip.text_encoder.embeddings.position_ids": torch.arange(512)[None]})
    assert all(any(k.startswith(i) for i in IGNORED) for k in state if k not in shapes)
    torch.save(state, tmp_path / "ImageReward.pt")
    write_bert_tokenizer(tmp_path / "tokenizer")
    scorer = load_imagereward(tmp_path / "ImageReward.pt")
    s = scorer.score(torch.rand(2, 3, 300, 200) * 2 - 1, ["a red circle", "a blue square on a green background"])
    assert s.shape == (2,) and torch.isfinite(s).all()


def test_aesthetic_real_size_mlp_on_a_vit_l14(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    from trainer.scorers.aesthetic import expected_shapes, load_aesthetic

    shapes = expected_shapes(768)
    assert [shapes[f"layers.{i}.weight"] for i in (0, 2, 4, 6, 7)] == [(1024, 768), (128, 1024), (64, 128), (16, 64), (1, 16)]
    torch.save(_random_fp16(shapes), tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    # openai/clip-vit-large-patch14's vision tower and projection (the text tower is unused and kept small)
    cfg = CLIPConfig(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, projection_dim=768),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14, hidden_act="quick_gelu", projection_dim=768),
        projection_dim=768,
    )
    CLIPModel(cfg).save_pretrained(str(tmp_path / "clip"))
    scorer = load_aesthetic(tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    s = scorer.score(torch.rand(2, 3, 512, 512) * 2 - 1)
    assert s.shape == (2,) and torch.isfinite(s).all()
