"""ImageReward's forward written out by hand in plain torch from the released key layout, following
BLIP's vit.py (timm ViT, LayerNorm eps 1e-6, final norm on every token) and med.py (post-LN BERT with
a cross-attention block after each self-attention, [CLS] state read out) and ImageReward.score
(MLP, then (r − mean) / std). Used by tests/test_scorers.py to check the transformers-based loader:
the original package could not be run here (it needs timm, fairscale and torchvision)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _attention(q_in, kv_in, wq, bq, wk, bk, wv, bv, heads, mask=None):
    b, n, d = q_in.shape
    hd = wq.shape[0] // heads

    def split(x):
        return x.reshape(b, -1, heads, hd).transpose(1, 2)

    q, k, v = split(q_in @ wq.T + bq), split(kv_in @ wk.T + bk), split(kv_in @ wv.T + bv)
    att = (q @ k.transpose(-1, -2)) / hd**0.5
    if mask is not None:
        att = att + (1.0 - mask[:, None, None, :].float()) * -1e4
    return (att.softmax(-1) @ v).transpose(1, 2).reshape(b, -1, heads * hd)


def vit(state, cfg, pixels):
    s = {k.removeprefix("blip.visual_encoder."): v for k, v in state.items() if k.startswith("blip.visual_encoder.")}
    c = cfg["vision"]
    d, heads, eps = c["hidden_size"], c["num_attention_heads"], c["layer_norm_eps"]
    x = F.conv2d(pixels, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=c["patch_size"])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([s["cls_token"].expand(x.shape[0], -1, -1), x], 1) + s["pos_embed"]
    for i in range(c["num_hidden_layers"]):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (d,), s[p + "norm1.weight"], s[p + "norm1.bias"], eps)
        qkv = h @ s[p + "attn.qkv.weight"].T + s[p + "attn.qkv.bias"]
        b, n, _ = qkv.shape
        q, k, v = qkv.reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        att = ((q @ k.transpose(-1, -2)) * (d // heads) ** -0.5).softmax(-1)
        h = (att @ v).transpose(1, 2).reshape(b, n, d) @ s[p + "attn.proj.weight"].T + s[p + "attn.proj.bias"]
        x = x + h
        h = F.layer_norm(x, (d,), s[p + "norm2.weight"], s[p + "norm2.bias"], eps)
        h = F.gelu(h @ s[p + "mlp.fc1.weight"].T + s[p + "mlp.fc1.bias"]) @ s[p + "mlp.fc2.weight"].T + s[p + "mlp.fc2.bias"]
        x = x + h
    return F.layer_norm(x, (d,), s["norm.weight"], s["norm.bias"], eps)


def bert(state, cfg, ids, mask, image_embeds):
    s = {k.removeprefix("blip.text_encoder."): v for k, v in state.items() if k.startswith("blip.text_encoder.")}
    c = cfg["text"]
    d, heads, eps = c["hidden_size"], c["num_attention_heads"], c["layer_norm_eps"]

    def ln(x, p):
        return F.layer_norm(x, (d,), s[p + ".weight"], s[p + ".bias"], eps)

    def lin(x, p):
        return x @ s[p + ".weight"].T + s[p + ".bias"]

    x = s["embeddings.word_embeddings.weight"][ids] + s["embeddings.position_embeddings.weight"][: ids.shape[1]]
    x = ln(x, "embeddings.LayerNorm")
    for i in range(c["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for block, kv, m in (("attention", None, mask), ("crossattention", image_embeds, None)):
            a = p + block + ".self."
            ctx = _attention(x, x if kv is None else kv, s[a + "query.weight"], s[a + "query.bias"], s[a + "key.weight"],
                             s[a + "key.bias"], s[a + "value.weight"], s[a + "value.bias"], heads, m)
            x = ln(lin(ctx, p + block + ".output.dense") + x, p + block + ".output.LayerNorm")
        h = F.gelu(lin(x, p + "intermediate.dense"))
        x = ln(lin(h, p + "output.dense") + x, p + "output.LayerNorm")
    return x


def reward(state, cfg, pixels, ids, mask):
    x = bert(state, cfg, ids, mask, vit(state, cfg, pixels))[:, 0]
    for i in (0, 2, 4, 6, 7):
        x = x @ state[f"mlp.layers.{i}.weight"].T + state[f"mlp.layers.{i}.bias"]
    return (x.squeeze(-1) - cfg["reward_mean"]) / cfg["reward_std"]
