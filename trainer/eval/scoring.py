"""Scoring cached images with every scorer, each score stored once.

scores/<label>.json holds {"kind", "path", "fingerprint", "scores": {"<variant>/<image>": float}}.
A scorer whose files changed (another fingerprint) starts over; a new scorer on an old run scores
the images already on disk and nothing is regenerated.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..atomic import write_text
from ..scorers import ScorerSpec, fingerprint
from .generate import ImageKey, Variant, load_png
from .prompts import PromptSet


def _read_cache(path: Path, spec: ScorerSpec, fp: str) -> dict[str, float]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return {}  # a damaged cache is recomputed, never trusted
    if data.get("fingerprint") != fp or data.get("kind") != spec.kind:
        return {}
    return {k: float(v) for k, v in data.get("scores", {}).items()}


def score_all(
    specs: list[ScorerSpec], variants: list[Variant], keys: list[ImageKey], prompts: PromptSet, out: Path,
    load, batch_size: int = 16, progress: bool = True,
) -> dict[str, dict[str, float]]:
    """{label: {"<variant folder>/<image name>": score}} for every scorer and image.

    load(spec) -> scorer is called only for a scorer with images left to score."""
    from tqdm.auto import tqdm

    (out / "scores").mkdir(parents=True, exist_ok=True)
    results = {}
    for spec in specs:
        fp = fingerprint(spec)
        cache_path = out / "scores" / f"{spec.label}.json"
        scores = _read_cache(cache_path, spec, fp)
        todo = [(v, k) for v in variants for k in keys if f"{v.folder}/{k.name}" not in scores]
        if todo:
            scorer = load(spec)
            for start in tqdm(range(0, len(todo), batch_size), desc=f"scoring {spec.label}", unit="batch", disable=not progress):
                chunk = todo[start : start + batch_size]
                images = torch.stack([load_png(out / "images" / v.folder / k.name) for v, k in chunk])
                texts = [prompts.prompts[k.prompt_index] for _, k in chunk]
                values = scorer.score(images, texts, torch.zeros(len(chunk), dtype=torch.long))
                for (v, k), val in zip(chunk, values.float().cpu().tolist()):
                    scores[f"{v.folder}/{k.name}"] = val
                payload = {"kind": spec.kind, "path": spec.resolved_path(), "fingerprint": fp, "scores": scores}
                write_text(cache_path, json.dumps(payload))
            del scorer
        results[spec.label] = scores
    return results
