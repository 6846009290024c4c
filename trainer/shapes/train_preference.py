"""PickScore-style training of the tiny CLIP on generic preference pairs.

score(image, caption) = logit_scale · cos(text, image); per pair the two scores are logits of
a two-way softmax, trained with cross-entropy against the (possibly tied) labels.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .dataset import clip_pixels
from .optim import warmup_cosine
from .preference_data import Pairs
from .train_clip import tokenize


def _features(out) -> torch.Tensor:
    # transformers ≥ 5 returns an output object whose pooler_output is the projection; older, a tensor.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def clip_scores(model, tokenizer, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """PickScore-style scores Tensor[B] of images Tensor[B, 3, 64, 64] in [−1, 1]."""
    text = F.normalize(_features(model.get_text_features(input_ids=tokenize(tokenizer, captions))), dim=-1)
    image = F.normalize(_features(model.get_image_features(pixel_values=clip_pixels(images))), dim=-1)
    return model.logit_scale.exp() * (text * image).sum(-1)


def train_preference(model, tokenizer, pairs: Pairs, steps: int, seed: int, batch: int = 64, lr: float = 2e-4,
                     log=print):
    """Fine-tune a CLIPModel in place on pairs; returns it in eval mode."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = warmup_cosine(opt, steps)
    start = time.time()
    for step in range(steps):
        idx = torch.randint(len(pairs.captions), (batch,), generator=g)
        caps = [pairs.captions[i] for i in idx.tolist()]
        s0 = clip_scores(model, tokenizer, pairs.images_0[idx], caps)
        s1 = clip_scores(model, tokenizer, pairs.images_1[idx], caps)
        target = torch.stack([pairs.label_0[idx], 1 - pairs.label_0[idx]], 1)
        loss = -(target * torch.log_softmax(torch.stack([s0, s1], 1), 1)).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"preference step {step}/{steps} loss {loss.item():.4f} ({time.time() - start:.0f}s)")
    return model.eval()


@torch.no_grad()
def pair_accuracy(model, tokenizer, pairs: Pairs, chunk: int = 256) -> dict:
    """Accuracy on decided pairs against the noisy labels and against the noise-free utilities."""
    s0, s1 = [], []
    for a in range(0, len(pairs.captions), chunk):
        caps = pairs.captions[a:a + chunk]
        s0.append(clip_scores(model, tokenizer, pairs.images_0[a:a + chunk], caps))
        s1.append(clip_scores(model, tokenizer, pairs.images_1[a:a + chunk], caps))
    s0, s1 = torch.cat(s0), torch.cat(s1)
    decided = pairs.label_0 != 0.5
    vs_label = ((s0 > s1).float() == pairs.label_0)[decided].float().mean()
    vs_truth = ((s0 > s1) == (pairs.utility_0 > pairs.utility_1)).float().mean()
    return {"pairs": len(pairs.captions), "decided": int(decided.sum()), "accuracy_vs_labels": float(vs_label),
            "accuracy_vs_true_utility": float(vs_truth)}
