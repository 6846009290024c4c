"""Reading released scorer checkpoints strictly: tensors only, every expected key, no stray ones."""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Iterable, Mapping

import torch


class ScorerError(ValueError):
    """A scorer file or setting that cannot be used; the message is one line naming the file."""


def read_weights(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """Tensors of a .pt/.pth/.bin (weights-only unpickling: nothing but tensors and plain values) or
    .safetensors file, on the CPU. A {"state_dict": ...} wrapper (HPSv2's files) is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise ScorerError(f"{path}: no such {what} file")
    if path.suffix.lower() in (".safetensors", ".sft"):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises several error types for a damaged header
            raise ScorerError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:160]})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        raise ScorerError(f"{path}: refused, it holds objects other than tensors ({str(e).strip().splitlines()[0][:120]})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise ScorerError(f"{path}: not a readable torch checkpoint, truncated or damaged ({str(e).splitlines()[0][:160]})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj:
        raise ScorerError(f"{path}: expected a state dict (name -> tensor) for the {what}, found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ScorerError(f"{path}: entry {bad[0]!r} is not a tensor; a {what} checkpoint holds only tensors")
    return dict(obj)


def check_keys(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    path: str | os.PathLike,
    what: str,
    ignorable: Iterable[str] = (),
) -> None:
    """Strict match: every expected key with its shape; unexpected keys only from `ignorable`
    (exact names, or prefixes ending in '.'), which are parts the scorer never runs."""
    ignorable = tuple(ignorable)

    def ignored(k: str) -> bool:
        return any(k == i or (i.endswith(".") and k.startswith(i)) for i in ignorable)

    mismatch = key_mismatch(expected, [k for k in state if not ignored(k)])
    if mismatch:
        raise ScorerError(f"{path}: not a {what} checkpoint in the released layout: {mismatch}")
    for k, shape in expected.items():
        if tuple(state[k].shape) != tuple(shape):
            raise ScorerError(f"{path}: {k} has shape {tuple(state[k].shape)}, expected {tuple(shape)} (another model size?)")


def key_mismatch(expected: Iterable[str], found: Iterable[str]) -> str:
    """'' when the two key sets agree, else e.g. '2 missing (e.g. a.b); 1 unexpected (e.g. c)'."""
    expected, found = list(expected), list(found)
    wanted, have = set(expected), set(found)
    missing = [k for k in expected if k not in have]
    unexpected = [k for k in found if k not in wanted]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    return "; ".join(parts)


def find_tokenizer(start: Path, given: str, files: tuple[str, ...], what: str, flag: str) -> str:
    """A tokenizer folder: `given` (a --assets flag), else start/tokenizer, else start when it holds `files`."""
    if given:
        if not Path(given).is_dir():
            raise ScorerError(f"--assets.{flag}: no such folder {given}")
        return given
    for cand in (start / "tokenizer", start):
        if all((cand / f).is_file() for f in files):
            return str(cand)
    raise ScorerError(
        f"{start}: no {what} tokenizer ({', '.join(files)}) found beside the checkpoint; put it in {start}/tokenizer "
        f"or pass --assets.{flag} DIR"
    )
