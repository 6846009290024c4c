"""Shared builders for the SPM tests: a tiny CLIP in the released SPM layout (no tests here)."""
from __future__ import annotations

from pathlib import Path

import torch

from tiny_models import vocab_size, write_tokenizer


def tiny_clip_config(image_size: int = 32):
    """A CLIPConfig shaped like CLIP-H in miniature (text/vision widths differ, as in CLIP-H)."""
    from transformers import CLIPConfig

    v = vocab_size()
    return CLIPConfig(
        text_config=dict(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=16, hidden_act="gelu", projection_dim=24,
                         bos_token_id=v - 2, eos_token_id=v - 1, pad_token_id=v - 1),
        vision_config=dict(hidden_size=40, intermediate_size=80, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8, hidden_act="gelu", projection_dim=24),
        projection_dim=24,
    )


def tiny_clip(seed: int = 0, image_size: int = 32):
    from transformers import CLIPModel

    torch.manual_seed(seed)
    return CLIPModel(tiny_clip_config(image_size)).eval()


def randomize_adaln(spm, seed: int = 1, std: float = 0.05) -> None:
    """Give the adaLN and t-embedder weights non-identity values (as a trained SPM has)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in spm.named_parameters():
            if "adaLN" in name or "t_embedder" in name:
                p.add_(torch.randn(p.shape, generator=g) * std)


def released_state_dict(spm, legacy_position_ids: bool = True) -> dict:
    """The state dict as the reference code saved it: `model.*` keys plus the 4.27 position_ids buffers."""
    state = {k: v.detach().clone() for k, v in spm.state_dict().items()}
    if legacy_position_ids:
        cfg = spm.model.config
        state["model.text_model.embeddings.position_ids"] = torch.arange(cfg.text_config.max_position_embeddings)[None]
        n = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2 + 1
        state["model.vision_model.embeddings.position_ids"] = torch.arange(n)[None]
    return state


def tokenizer_dir(root: Path) -> Path:
    write_tokenizer(Path(root) / "tokenizer", max_length=16)
    return Path(root) / "tokenizer"
