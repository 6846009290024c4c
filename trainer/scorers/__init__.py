"""Image-text scorers from their released files, offline, behind the project's one signature

    score(images Tensor[B, 3, H, W] in [−1, 1], prompts: B strings, timesteps Tensor[B] | None) -> Tensor[B]

(higher = better), each with the preprocessing its checkpoint was trained with. Released weights
are mapped onto transformers' own CLIP / BLIP classes (no open_clip, timm or torchvision):

    pickscore    PickScore_v1 CLIP folder                 clip.PickScore     100·cos (logit_scale)
    clipscore    any transformers CLIP folder             clip.CLIPScore     100·max(cos, 0)
    spm          anything trainer.spm loads               clip.SPMScore      the SPM's logit at t
    hpsv2        HPS_v2(.1)_compressed.pt (OpenCLIP H/14) hpsv2.HPSv2        cos, as hpsv2.score prints
    imagereward  ImageReward.pt (BLIP + MLP)              imagereward        z-scored reward
    aesthetic    sac+logos+ava1-l14-linearMSE.pth (MLP)   aesthetic          LAION aesthetic 1–10
    shapes-aesthetic | shapes-alignment | shapes-utility  ShapesWorld ground truth (no file)
    shapes-preference | shapes-spm                        ShapesWorld's shipped preference model / SPM

    scorer = load_scorer(ScorerSpec.parse("hpsv2=HPS_v2.1_compressed.pt"), device="cuda")
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .files import ScorerError

FILE_KINDS = ("pickscore", "clipscore", "spm", "hpsv2", "imagereward", "aesthetic")
SHAPES_KINDS = ("shapes-aesthetic", "shapes-alignment", "shapes-utility", "shapes-preference", "shapes-spm")
KINDS = FILE_KINDS + SHAPES_KINDS
# Names of the shipped ShapesWorld models usable as PATH (offline demos and tests).
SHAPES_PATHS = {"shapes-clip": "clip", "shapes-preference": "preference", "shapes-spm": "spm"}


@dataclass(frozen=True)
class ScorerSpec:
    """One --scorers entry: label (the report's column), kind (the loader), path ('' for ground truth)."""

    label: str
    kind: str
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> "ScorerSpec":
        """"kind", "kind=PATH" or "label=kind:PATH" (a custom label, e.g. hpsv21=hpsv2:HPS_v2.1_compressed.pt)."""
        text = text.strip()
        label, eq, rest = text.partition("=")
        label = label.strip()
        if not eq:
            if label not in SHAPES_KINDS:
                raise ScorerError(f"--scorers: {label!r} needs a file: {label}=PATH (known kinds: {', '.join(KINDS)})")
            return cls(label, label)
        kind, colon, path = rest.partition(":")
        if colon and kind in KINDS:
            rest = path
        else:
            kind = label
        if kind not in KINDS:
            raise ScorerError(f"--scorers: unknown scorer {kind!r} in {text!r}; known: {', '.join(KINDS)} (label=KIND:PATH for a custom label)")
        if not label or not all(c.isalnum() or c in "-_." for c in label):
            raise ScorerError(f"--scorers: label {label!r} may hold only letters, digits, '-', '_' and '.'")
        return cls(label, kind, rest.strip())

    def resolved_path(self) -> str:
        if self.kind in ("shapes-preference", "shapes-spm") and not self.path:
            return str(_shipped(SHAPES_PATHS[self.kind]))
        if self.path in SHAPES_PATHS:
            return str(_shipped(SHAPES_PATHS[self.path]))
        return self.path


def _shipped(part: str) -> Path:
    from ..shapes import REBUILD, weights_dir

    p = weights_dir(part)
    if not p.is_dir():
        raise ScorerError(f"ShapesWorld {part} model not found at {p}; rebuild it with `{REBUILD}`")
    return p


def fingerprint(spec: ScorerSpec) -> str:
    """What identifies a scorer's numbers: kind + the files' names, sizes and modification times
    (a replaced checkpoint invalidates cached scores; hashing gigabytes on every run would not pay)."""
    h = hashlib.sha256(spec.kind.encode())
    path = spec.resolved_path()
    if path:
        p = Path(path)
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def load_scorer(spec: ScorerSpec, device="cpu", dtype: torch.dtype = torch.float32, assets=None):
    """The scorer object for `spec`. assets: an object with clip_tokenizer, bert_tokenizer and
    aesthetic_clip attributes (paths or ''), for released files that come without them."""
    clip_tok = getattr(assets, "clip_tokenizer", "") or ""
    path = spec.resolved_path()
    if spec.kind in FILE_KINDS and not Path(path).expanduser().exists():
        raise ScorerError(f"--scorers {spec.label}: no such file or folder {path}")
    path = str(Path(path).expanduser()) if path else path
    if spec.kind == "shapes-aesthetic":
        from ..shapes import AestheticScore

        return AestheticScore()
    if spec.kind == "shapes-alignment":
        from ..shapes import AlignmentScore

        return AlignmentScore()
    if spec.kind == "shapes-utility":
        from ..shapes import CombinedScore

        return CombinedScore()
    if spec.kind in ("spm", "shapes-preference", "shapes-spm"):
        from .clip import SPMScore

        return SPMScore(path, device, dtype, clip_tok)
    if spec.kind == "pickscore":
        from .clip import PickScore

        return PickScore(path, device, dtype, clip_tok)
    if spec.kind == "clipscore":
        from .clip import CLIPScore

        return CLIPScore(path, device, dtype, clip_tok)
    if spec.kind == "hpsv2":
        from .hpsv2 import load_hpsv2

        return load_hpsv2(path, device, dtype, tokenizer=clip_tok)
    if spec.kind == "imagereward":
        from .imagereward import load_imagereward

        return load_imagereward(path, device, dtype, tokenizer=getattr(assets, "bert_tokenizer", "") or "")
    if spec.kind == "aesthetic":
        from .aesthetic import load_aesthetic

        return load_aesthetic(path, device, dtype, clip=getattr(assets, "aesthetic_clip", "") or "")
    raise ScorerError(f"unknown scorer kind {spec.kind!r}")


__all__ = ["KINDS", "FILE_KINDS", "SHAPES_KINDS", "ScorerError", "ScorerSpec", "fingerprint", "load_scorer"]
