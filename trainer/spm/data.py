"""Preference pairs in the Pick-a-Pic v1 layout: write, read, and serve them to the trainer.

A pair is (caption, jpg_0, jpg_1, label_0, label_1) with label_0 + label_1 = 1; a tie is
0.5/0.5. On disk (this project's layout) a directory holds `metadata.jsonl`, one JSON object
per line

    {"caption": str, "jpg_0": "images/000000_0.png", "jpg_1": "...", "label_0": 1.0, "label_1": 0.0}

with image paths relative to the directory (PNG or JPEG). A Hugging Face `datasets` dataset
with the Pick-a-Pic columns (images as encoded bytes or PIL images) is read the same way
when the optional `datasets` package is installed.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from ..atomic import write_text
from .errors import SPMError

METADATA = "metadata.jsonl"
COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")


@dataclass(frozen=True)
class PreferencePair:
    """One labelled pair. label_0 + label_1 = 1; label_0 = 1 means image 0 is preferred."""

    caption: str
    image_0: Image.Image
    image_1: Image.Image
    label_0: float
    label_1: float


def _as_pil(image: Any, what: str) -> Image.Image:
    """PIL image, path, encoded bytes, HxWx3 uint8 array, or [3,H,W] tensor in [-1,1] -> RGB PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        return Image.open(image).convert("RGB")
    if isinstance(image, (bytes, bytearray)):
        return Image.open(io.BytesIO(image)).convert("RGB")
    if isinstance(image, Mapping) and "bytes" in image:  # `datasets` Image feature with decode=False
        return Image.open(io.BytesIO(image["bytes"])).convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise SPMError(f"{what}: image tensor must be [3, H, W] in [-1, 1], got shape {tuple(image.shape)}")
        array = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        return Image.fromarray(array, "RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise SPMError(f"{what}: image array must be HxWx3 uint8, got {image.dtype} {image.shape}")
        return Image.fromarray(image, "RGB")
    raise SPMError(f"{what}: unsupported image type {type(image).__name__}")


def _check_labels(label_0: float, label_1: float, what: str) -> tuple[float, float]:
    label_0, label_1 = float(label_0), float(label_1)
    if min(label_0, label_1) < 0 or abs(label_0 + label_1 - 1) > 1e-6:
        raise SPMError(f"{what}: labels must be >= 0 and sum to 1 (ties 0.5/0.5), got {label_0}, {label_1}")
    return label_0, label_1


def write_pickapic_dir(rows: Iterable[Mapping[str, Any]], out_dir: str | os.PathLike) -> Path:
    """Write preference pairs as a Pick-a-Pic-layout directory; returns the metadata.jsonl path.

    rows: mappings with keys caption, jpg_0, jpg_1, label_0, label_1; images may be PIL images,
    HxWx3 uint8 arrays, [3,H,W] tensors in [-1,1], encoded bytes or file paths. Images are
    written as PNG under `out_dir/images/`. The metadata file is written last and atomically,
    so a directory with a metadata.jsonl is always complete.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, row in enumerate(rows):
        what = f"write_pickapic_dir row {i}"
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise SPMError(f"{what}: missing keys {missing}; each row needs {list(COLUMNS)}")
        caption = str(row["caption"])
        if not caption.strip():
            raise SPMError(f"{what}: empty caption")
        label_0, label_1 = _check_labels(row["label_0"], row["label_1"], what)
        names = []
        for side in (0, 1):
            name = f"images/{i:06d}_{side}.png"
            _as_pil(row[f"jpg_{side}"], what).save(out / name)
            names.append(name)
        record = {"caption": caption, "jpg_0": names[0], "jpg_1": names[1], "label_0": label_0, "label_1": label_1}
        lines.append(json.dumps(record))
    return write_text(out / METADATA, "".join(line + "\n" for line in lines))


class PickapicDir(torch.utils.data.Dataset):
    """A Pick-a-Pic-layout directory as a Dataset of PreferencePair (images loaded lazily)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        meta = self.root / METADATA
        if not meta.is_file():
            raise SPMError(f"{self.root}: no {METADATA}; expected a Pick-a-Pic-layout directory (see trainer.spm.data)")
        self.records = []
        for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise SPMError(f"{meta}:{n}: not valid JSON ({err.msg})") from None
            missing = [c for c in COLUMNS if c not in record]
            if missing:
                raise SPMError(f"{meta}:{n}: missing keys {missing}")
            _check_labels(record["label_0"], record["label_1"], f"{meta}:{n}")
            self.records.append(record)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> PreferencePair:
        r = self.records[i]
        return PreferencePair(
            r["caption"], _as_pil(self.root / r["jpg_0"], str(self.root)), _as_pil(self.root / r["jpg_1"], str(self.root)),
            float(r["label_0"]), float(r["label_1"]),
        )


class HFPairs(torch.utils.data.Dataset):
    """A `datasets` dataset (or any indexable of mappings) with the Pick-a-Pic v1 columns."""

    def __init__(self, table: Sequence[Mapping[str, Any]]):
        missing = [c for c in COLUMNS if c not in table[0]] if len(table) else []
        if missing:
            raise SPMError(f"dataset lacks Pick-a-Pic columns {missing}; needs {list(COLUMNS)}")
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> PreferencePair:
        r = self.table[i]
        label_0, label_1 = _check_labels(r["label_0"], r["label_1"], f"dataset row {i}")
        return PreferencePair(str(r["caption"]), _as_pil(r["jpg_0"], f"row {i}"), _as_pil(r["jpg_1"], f"row {i}"), label_0, label_1)


def open_pairs(source: str | os.PathLike, split: str = "train") -> torch.utils.data.Dataset:
    """Preference pairs from a Pick-a-Pic-layout directory, or else a `datasets` name/path and split."""
    path = Path(source)
    if (path / METADATA).is_file():
        return PickapicDir(path)
    try:
        import datasets
    except ImportError:
        raise SPMError(
            f"{source}: not a directory with {METADATA}, and the `datasets` package (needed for hub or Arrow "
            "datasets) is not installed: pip install datasets"
        ) from None
    if path.is_dir() and (path / "dataset_info.json").is_file():
        table = datasets.load_from_disk(str(path))
    else:
        table = datasets.load_dataset(str(source), split=split)
    if isinstance(table, datasets.DatasetDict):
        table = table[split]
    return HFPairs(table)


def image_to_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """RGB PIL image -> Tensor[3, R, R] in [−1, 1]: shortest side resized to R (bicubic), centre crop."""
    w, h = image.size
    scale = resolution / min(w, h)
    if (w, h) != (resolution, resolution):
        image = image.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.BICUBIC)
        w, h = image.size
        left, top = (w - resolution) // 2, (h - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
    array = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
    return array.float() / 127.5 - 1


@dataclass
class PairBatch:
    """B pairs as tensors: images_* Tensor[B, 3, R, R] in [−1, 1]; labels Tensor[B] float32."""

    prompts: list[str]
    images_0: torch.Tensor
    images_1: torch.Tensor
    label_0: torch.Tensor
    label_1: torch.Tensor

    def __len__(self) -> int:
        return len(self.prompts)


class PairCollate:
    """DataLoader collate_fn: PreferencePair list -> PairBatch at one resolution (picklable for workers)."""

    def __init__(self, resolution: int):
        self.resolution = resolution

    def __call__(self, pairs: Sequence[PreferencePair]) -> PairBatch:
        return PairBatch(
            [p.caption for p in pairs],
            torch.stack([image_to_tensor(p.image_0, self.resolution) for p in pairs]),
            torch.stack([image_to_tensor(p.image_1, self.resolution) for p in pairs]),
            torch.tensor([p.label_0 for p in pairs], dtype=torch.float32),
            torch.tensor([p.label_1 for p in pairs], dtype=torch.float32),
        )
