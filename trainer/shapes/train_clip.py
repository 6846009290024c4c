"""Contrastive pretraining of the tiny CLIP on ShapesWorld captions and renders."""
from __future__ import annotations

import time

import torch

from .architectures import clip_config
from .optim import warmup_cosine
from .dataset import RenderedSet, clip_pixels


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids Tensor[B, tokenizer.model_max_length], padded with EOS as SD pipelines do."""
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def pretrain_clip(data: RenderedSet, tokenizer, steps: int, seed: int, batch: int = 64, lr: float = 1e-3,
                  groups: int = 4, log=print):
    """CLIPModel trained with the symmetric InfoNCE loss; each batch holds distinct captions
    (one random render each), so no two positives collide.

    Each batch is `groups` colour/background pairs × batch/groups captions of each: with random
    batches colour alone tells almost every caption apart, and CLIP never learns shape or
    position (at 200 steps their zero-shot accuracy was chance), which leaves the UNet's text
    conditioning and the preference model blind to half of the caption.
    """
    from transformers import CLIPModel

    from .world import parse_caption

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = CLIPModel(clip_config())
    ids = tokenize(tokenizer, data.captions)
    by_caption = [torch.nonzero(data.caption_ids == i)[:, 0] for i in range(len(data.captions))]
    pairs: dict[tuple[str, str], list[int]] = {}
    for i, c in enumerate(data.captions):
        scene = parse_caption(c)
        pairs.setdefault((scene.colour, scene.background), []).append(i)
    by_pair = [torch.tensor(v) for v in pairs.values()]
    per_group = batch // groups
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = warmup_cosine(opt, steps)
    start = time.time()
    for step in range(steps):
        chosen = torch.randperm(len(by_pair), generator=g)[:groups].tolist()
        caps = torch.cat([by_pair[p][torch.randperm(len(by_pair[p]), generator=g)[:per_group]] for p in chosen])
        pick = torch.stack([by_caption[c][torch.randint(len(by_caption[c]), (1,), generator=g)][0] for c in caps.tolist()])
        out = model(input_ids=ids[caps], pixel_values=clip_pixels(data.batch(pick)), return_loss=True)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"clip step {step}/{steps} loss {out.loss.item():.3f} ({time.time() - start:.0f}s)")
    return model.eval()
