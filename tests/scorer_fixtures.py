"""Tiny checkpoints in the released layouts of HPSv2, ImageReward and the LAION aesthetic MLP
(real key names and shapes, small sizes, seeded random values) and fixed inputs, shared by the
scorer tests and by tests/reference/*.py, which recomputed the reference numbers with the
original implementations. No tests here."""
from __future__ import annotations

from pathlib import Path

import torch

from tiny_models import tiny_clip_config, vocab_size, write_tokenizer


def seeded_state(shapes: dict[str, tuple[int, ...]], seed: int, std: float = 0.1) -> dict[str, torch.Tensor]:
    """One tensor per key, drawn in sorted key order from one generator; LayerNorm-like weights near 1
    (name contains 'ln' / 'norm' / 'LayerNorm' and ends in '.weight') so activations stay in range."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k in sorted(shapes):
        t = torch.randn(shapes[k], generator=g) * std
        if k.endswith(".weight") and any(s in k for s in ("ln_", "norm", "LayerNorm")):
            t = 1 + t
        out[k] = t
    if "logit_scale" in out:
        out["logit_scale"] = torch.tensor(4.6052)
    return out


# -- HPSv2: an OpenCLIP ViT in miniature ------------------------------------------------------------
def tiny_openclip_config():
    """CLIPConfig matching OpenCLIP with embed_dim 24, vision (32 px, patch 8, width 40, 2 layers, head_width 20),
    text (context 16, width 32, 2 heads, 2 layers), mlp_ratio 4, exact GELU."""
    return tiny_clip_config(image_size=32, mlp_ratio=4)


def tiny_openclip_state(seed: int = 0) -> dict[str, torch.Tensor]:
    from trainer.scorers.hpsv2 import expected_openclip_shapes

    return seeded_state(expected_openclip_shapes(tiny_openclip_config()), seed)


def save_tiny_hpsv2(root: Path, seed: int = 0) -> Path:
    """HPS_v2_compressed.pt in miniature: {"state_dict": OpenCLIP keys} plus a tokenizer/ folder beside it."""
    root.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": tiny_openclip_state(seed)}, root / "HPS_v2_compressed.pt")
    write_tokenizer(root / "tokenizer", max_length=16)
    return root / "HPS_v2_compressed.pt"


def fixed_pixels(n: int = 2, size: int = 32, seed: int = 7) -> torch.Tensor:
    """Preprocessed (already normalised) pixel values Tensor[n, 3, size, size]."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def fixed_clip_ids() -> torch.Tensor:
    """Token ids Tensor[2, 16]: start token, a few characters, end token (the largest id), zero padding,
    the layout OpenCLIP's tokenizer produces (EOT found by argmax)."""
    v = vocab_size()
    ids = torch.zeros(2, 16, dtype=torch.long)
    for row, body in enumerate(([70, 71, 72], [300, 5, 9, 400, 11])):
        seq = [v - 2, *body, v - 1]
        ids[row, : len(seq)] = torch.tensor(seq)
    return ids


def clip_to_openclip(clip) -> dict[str, torch.Tensor]:
    """A transformers CLIPModel's weights in OpenCLIP's layout (the inverse of trainer.scorers.hpsv2's map),
    to build HPSv2-layout files from trained ShapesWorld CLIPs."""
    from trainer.scorers.hpsv2 import openclip_key_map

    sd = clip.state_dict()
    t, v = clip.config.text_config.num_hidden_layers, clip.config.vision_config.num_hidden_layers
    out = {src: sd[dst].clone() for src, dst in openclip_key_map(t, v).items()}
    for src, dst, n in (("transformer", "text_model", t), ("visual.transformer", "vision_model", v)):
        for i in range(n):
            a = f"{dst}.encoder.layers.{i}.self_attn."
            out[f"{src}.resblocks.{i}.attn.in_proj_weight"] = torch.cat([sd[a + f"{p}_proj.weight"] for p in "qkv"])
            out[f"{src}.resblocks.{i}.attn.in_proj_bias"] = torch.cat([sd[a + f"{p}_proj.bias"] for p in "qkv"])
    out["text_projection"] = sd["text_projection.weight"].t().clone()
    out["visual.proj"] = sd["visual_projection.weight"].t().clone()
    return out


# -- ImageReward: BLIP ViT + BERT with cross-attention in miniature ------------------------------------
BERT_WORDS = ["a", "red", "green", "blue", "yellow", "purple", "circle", "square", "triangle", "diamond", "on",
              "background", "top", "bottom", "left", "right", "center", "small", "large", ","]


def write_bert_tokenizer(folder: Path) -> Path:
    """A bert-base-uncased-style WordPiece vocab.txt with ShapesWorld's words and single letters."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *BERT_WORDS, *"abcdefghijklmnopqrstuvwxyz", *[f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return folder


def bert_vocab_size() -> int:
    return 5 + len(BERT_WORDS) + 52 + 2  # + BLIP's [DEC] and [ENC]


def tiny_imagereward_config() -> dict:
    return {
        "vision": {"image_size": 32, "patch_size": 8, "hidden_size": 40, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "intermediate_size": 80, "layer_norm_eps": 1e-6, "hidden_act": "gelu"},
        "text": {"vocab_size": bert_vocab_size(), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "intermediate_size": 64, "max_position_embeddings": 40, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
                 "pad_token_id": 0, "bos_token_id": None, "sep_token_id": None},
        "embed_dim": 16, "max_length": 35, "reward_mean": 0.16717362830052426, "reward_std": 1.0333394966054072,
    }


def tiny_imagereward_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The released ImageReward.pt layout: blip.visual_encoder / blip.text_encoder / mlp, plus the parts the
    reward never uses but the file holds (contrastive projections, BERT's persistent position_ids)."""
    from trainer.scorers.imagereward import expected_shapes

    cfg = tiny_imagereward_config()
    state = seeded_state(expected_shapes(cfg), seed)
    v, t = cfg["vision"]["hidden_size"], cfg["text"]["hidden_size"]
    state["blip.vision_proj.weight"] = torch.randn(cfg["embed_dim"], v)
    state["blip.vision_proj.bias"] = torch.zeros(cfg["embed_dim"])
    state["blip.text_proj.weight"] = torch.randn(cfg["embed_dim"], t)
    state["blip.text_proj.bias"] = torch.zeros(cfg["embed_dim"])
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(cfg["text"]["max_position_embeddings"])[None]
    return state


def save_tiny_imagereward(root: Path, seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_imagereward_state(seed), root / "ImageReward.pt")
    write_bert_tokenizer(root / "tokenizer")
    return root / "ImageReward.pt"


def imagereward_to_released(model, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A loaded trainer.scorers.imagereward.ImageReward's weights in the released ImageReward.pt layout (the
    inverse of its loader's map); the parts the reward never runs (contrastive projections, position_ids) from `like`."""
    from trainer.scorers.imagereward import vit_key_map

    vision = model.vision.state_dict()
    out = {k: v.clone() for k, v in like.items()}
    for src, dst in vit_key_map(model.vision.config.num_hidden_layers).items():
        out[f"blip.visual_encoder.{src}"] = vision[dst].detach().clone()
    out.update({f"blip.text_encoder.{k}": v.detach().clone() for k, v in model.text.state_dict().items()})
    out.update({f"mlp.layers.{k}": v.detach().clone() for k, v in model.mlp.state_dict().items()})
    return out


def fitted_imagereward(root: Path, steps: int = 200, seed: int = 0) -> Path:
    """root/ImageReward.pt: the tiny ImageReward (tiny_imagereward_config's sizes, released layout) trained the way
    ImageReward was, on ShapesWorld: pairwise ranking loss −log σ(r_better − r_worse) over two renders of each
    TRAINING caption (independent placement, quality ~ U(0, 1)), the better one by ShapesWorld's ground-truth
    aesthetic. Starts from save_tiny_imagereward's seeded weights (kept in root/init/ with the tokenizer), loaded by
    the real loader; AdamW on 32 pairs a step. Deterministic: every draw comes from seeded generators and the model
    has no active dropout (eval mode)."""
    from trainer.scorers.imagereward import load_imagereward
    from trainer.shapes import aesthetic, render_captions, train_captions
    from trainer.spm.preprocess import clip_preprocess

    init = save_tiny_imagereward(root / "init", seed=seed)
    model = load_imagereward(init, config=tiny_imagereward_config())
    caps = train_captions()
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(2, len(caps), generator=g)
    renders = [render_captions(caps, q[i], seed=11 + i) for i in range(2)]
    better = aesthetic(renders[0]) > aesthetic(renders[1])  # Tensor[N] bool: the ground-truth label
    pixels = [clip_preprocess(x, model.preprocess) for x in renders]
    tok = model.tokenizer(caps, padding="max_length", truncation=True, max_length=model.max_length, return_tensors="pt")
    model.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.0)
    for _ in range(steps):
        i = torch.randint(len(caps), (32,), generator=g)
        ids, mask = tok.input_ids[i].repeat(2, 1), tok.attention_mask[i].repeat(2, 1)
        r0, r1 = model.reward(torch.cat([pixels[0][i], pixels[1][i]]), ids, mask).chunk(2)
        margin = torch.where(better[i], r0 - r1, r1 - r0)
        loss = -torch.nn.functional.logsigmoid(margin).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(imagereward_to_released(model, tiny_imagereward_state(seed)), root / "ImageReward.pt")
    return root / "ImageReward.pt"
