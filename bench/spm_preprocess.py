"""How much the SPM preprocessing recipe matters: the reference's ("spo": non-antialiased bicubic,
clamp after the resize, on the unclamped decoded x̂0) against CLIPImageProcessor's ("clip":
clamped picture, antialiased bicubic), on the same images.

    python bench/spm_preprocess.py

Images: smooth random pictures with fine texture and a decoder-like overshoot of ±1.15, at the
sizes SD-1.5/SDXL produce. Per size: the pixel difference between the recipes (in [0, 1] units)
and, on groups of 4 near-identical candidates (what SPO compares), how often a random-weight
step-aware SPM (CLIP-like, 224 px input, small widths) picks a different best or worst candidate.
Prints a table, writes bench/results/spm_preprocess.json.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZES = [(512, 512), (768, 768), (832, 1216), (640, 1536)]


def decoded_like(n: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """Tensor[n, 3, h, w]: low-frequency colour fields plus pixel-level texture, range about ±1.15."""
    low = F.interpolate(torch.randn(n, 3, h // 32, w // 32, generator=gen), size=(h, w), mode="bilinear", align_corners=False)
    return (0.6 * low + 0.25 * torch.randn(n, 3, h, w, generator=gen)).clamp(-1.15, 1.15)


def random_spm():
    from transformers import CLIPConfig, CLIPTokenizer

    from bench.spo_round import write_char_tokenizer
    from trainer.spm.model import StepAwarePreferenceModel

    import tempfile

    cfg = CLIPConfig(
        text_config=dict(vocab_size=200, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=77, projection_dim=64, bos_token_id=188, eos_token_id=189, pad_token_id=189),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=16, projection_dim=64),
        projection_dim=64,
    )
    torch.manual_seed(0)
    tok = CLIPTokenizer.from_pretrained(str(write_char_tokenizer(Path(tempfile.mkdtemp()) / "tok")))
    spm = StepAwarePreferenceModel(cfg, tokenizer=tok).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-identity adaLN, as a trained SPM has
        for name, p in spm.named_parameters():
            if "adaLN" in name or "t_embedder" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return spm


def main() -> int:
    from trainer.spm.preprocess import clip_preprocess

    spm = random_spm()
    spo_cfg = dataclasses.replace(spm.preprocess, method="spo")
    clip_cfg = dataclasses.replace(spm.preprocess, method="clip")
    gen = torch.Generator().manual_seed(0)
    groups, k = 40, 4
    rows = []
    for h, w in SIZES:
        base = decoded_like(groups, h, w, gen)
        cands = (base[:, None] + 0.03 * torch.randn(groups, k, 3, h, w, generator=gen)).flatten(0, 1)
        std = torch.tensor(spo_cfg.image_std).view(1, 3, 1, 1)
        px_spo, px_clip = clip_preprocess(cands, spo_cfg), clip_preprocess(cands, clip_cfg)
        pixel = ((px_spo - px_clip) * std).abs()
        with torch.no_grad():
            t = torch.full((len(cands),), 500)
            text = spm.encode_text(["a photo"])
            score = lambda px: (spm.model.logit_scale.exp() * (F.normalize(spm.image_embeds(px, t), dim=-1) * text).sum(-1)).view(groups, k)
            s_spo, s_clip = score(px_spo), score(px_clip)
        flips = ((s_spo.argmax(1) != s_clip.argmax(1)) | (s_spo.argmin(1) != s_clip.argmin(1))).float().mean()
        rows.append({
            "size": [h, w], "pixel_mean_abs_diff": round(float(pixel.mean()), 5), "pixel_max_abs_diff": round(float(pixel.max()), 4),
            "score_max_abs_diff": round(float((s_spo - s_clip).abs().max()), 4), "score_scale_std": round(float(s_spo.std()), 4),
            "best_or_worst_changed": round(float(flips), 3), "groups": groups, "k": k,
        })
    print("| size | pixel mean / max abs diff | score max abs diff (score sd) | best or worst pick changed |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['size'][0]}×{r['size'][1]} | {r['pixel_mean_abs_diff']:.4f} / {r['pixel_max_abs_diff']:.3f} "
              f"| {r['score_max_abs_diff']:.3f} ({r['score_scale_std']:.3f}) | {r['best_or_worst_changed']:.0%} of {r['groups']} |")
    out = ROOT / "bench" / "results" / "spm_preprocess.json"
    out.write_text(json.dumps({"command": "python bench/spm_preprocess.py", "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
