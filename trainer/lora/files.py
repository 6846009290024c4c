"""Reading and writing LoRA files: safety checks, atomic writes, one-line errors naming the file."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Mapping

import torch

from ..atomic import write_text
from .errors import LoraFileError
from .export import kohya_metadata, to_diffusers_state_dict, to_kohya_state_dict, to_peft_state_dict, with_model_hashes
from .layouts import build_state
from .state import LoraState

_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
_MAX_HEADER = 100 * 1024 * 1024


def _looks_like_pickle(head: bytes) -> bool:
    # torch.save zip archives start with "PK\x03\x04"; raw pickles with the PROTO opcode 0x80
    return head.startswith(b"PK\x03\x04") or (len(head) > 1 and head[0] == 0x80 and head[1] <= 5)


def check_safetensors(path: Path) -> dict:
    """Validate a safetensors file's framing without loading it; returns its parsed header.

    Never unpickles anything: pickle-based checkpoints are refused by their first bytes.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if _looks_like_pickle(head) or path.suffix.lower() in _PICKLE_SUFFIXES:
            raise LoraFileError(
                f"{path}: a pickle/PyTorch checkpoint, which is never unpickled here (it can run code); "
                "use the .safetensors version of this LoRA"
            )
        if len(head) < 8:
            raise LoraFileError(f"{path}: not a safetensors file ({size} bytes, too short for a header)")
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > _MAX_HEADER or 8 + n > size:
            raise LoraFileError(f"{path}: not a safetensors file (header length {n} does not fit a {size}-byte file)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LoraFileError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise LoraFileError(f"{path}: not a safetensors file (its header is not a JSON object)")
    end = 0
    for k, v in header.items():
        if k == "__metadata__":
            continue
        offsets = v.get("data_offsets") if isinstance(v, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)
                and offsets[0] <= offsets[1]):
            raise LoraFileError(f"{path}: not a valid safetensors file (tensor {k!r} has data_offsets {offsets!r}, "
                                "not two increasing integers); download it again")
        end = max(end, offsets[1])
    if 8 + n + end > size:
        raise LoraFileError(f"{path}: truncated: the header promises {8 + n + end} bytes but the file has {size}; download it again")
    return header


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    check_safetensors(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise LoraFileError(f"{path}: unreadable safetensors file ({str(e).splitlines()[0]})") from None
    metadata.pop("format", None)
    return tensors, metadata


def _peft_files(path: Path) -> tuple[Path, dict | None]:
    """(weights file, adapter_config dict or None) for a PEFT directory or a file beside one."""
    directory = path if path.is_dir() else path.parent
    config_file = directory / "adapter_config.json"
    weights = directory / "adapter_model.safetensors" if path.is_dir() else path
    if path.is_dir() and not weights.is_file():
        if (directory / "adapter_model.bin").is_file():
            raise LoraFileError(f"{path}: holds adapter_model.bin (pickle), which is never unpickled here; save it as safetensors")
        raise LoraFileError(f"{path}: a directory without adapter_model.safetensors; give a LoRA .safetensors file")
    config = None
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except json.JSONDecodeError:
            raise LoraFileError(f"{config_file}: not valid JSON") from None
    return weights, config


def read_lora(
    path: str | os.PathLike,
    family: str = "auto",
    *,
    check_shapes: bool = True,
    unet_config: Mapping | None = None,
) -> LoraState:
    """Read a LoRA in any supported layout (kohya, diffusers old/new, bare PEFT) into a LoraState.

    path: a .safetensors file, or a PEFT adapter directory (adapter_model.safetensors +
        adapter_config.json).
    family: "auto" | "sd15" | "sdxl" | "shapes" (see layouts.build_state for detection and
        `check_shapes` / `unet_config`).
    Raises LoraFileError (one line naming the file) for anything unusable.
    """
    path = Path(path)
    if not path.exists():
        raise LoraFileError(f"{path}: no such file")
    weights, peft_config = _peft_files(path)
    tensors, metadata = _load_safetensors(weights)
    is_bare_peft = any(k.startswith("base_model.model.") for k in tensors)
    try:
        return build_state(
            tensors, metadata, family=family, check_shapes=check_shapes, unet_config=unet_config,
            peft_config=peft_config if is_bare_peft else None, source=str(path),
        )
    except LoraFileError as e:
        raise LoraFileError(f"{path}: {e}") from None


def atomic_save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str]) -> None:
    """Write a safetensors file via a temporary file in the same folder and os.replace (never
    half-written, no temporary left on failure, mode from the umask: see trainer.atomic)."""
    from safetensors.torch import save_file

    from ..atomic import atomic_path

    with atomic_path(path) as tmp:
        save_file(dict(tensors), str(tmp), metadata=dict(metadata))


def save_kohya(
    state: LoraState,
    path: str | os.PathLike,
    *,
    family: str | None = None,
    output_name: str | None = None,
    base_model_name: str | None = None,
    training_comment: dict | str | None = None,
    dtype: torch.dtype = torch.float16,
    unet_config: Mapping | None = None,
) -> dict[str, str]:
    """Write `state` as a kohya/WebUI LoRA (.safetensors) loadable by A1111, ComfyUI, kohya and diffusers.

    family: naming to write ("sd15", "sdxl", "shapes" = SD-1.5 naming); default the state's.
    training_comment: stored as ss_training_comment (a dict is written as JSON), e.g. SPO settings.
    dtype: of the down/up weights (alphas are fp32 scalars). Returns the metadata written.
    """
    family = family or state.family
    path = Path(path)
    tensors = to_kohya_state_dict(state, family, dtype=dtype, unet_config=unet_config)
    metadata = kohya_metadata(state, family, output_name=output_name or path.stem,
                              base_model_name=base_model_name, training_comment=training_comment)
    metadata = with_model_hashes(tensors, metadata)
    atomic_save_safetensors(tensors, path, metadata)
    return metadata


def save_diffusers(state: LoraState, path: str | os.PathLike, *, dtype: torch.dtype | None = None) -> None:
    """Write the diffusers (lora_A/lora_B) form with per-module ranks and alphas in its metadata."""
    tensors, metadata = to_diffusers_state_dict(state, dtype=dtype)
    atomic_save_safetensors(tensors, path, {"format": "pt", **metadata})


def save_peft(state: LoraState, directory: str | os.PathLike, *, dtype: torch.dtype | None = None) -> list[Path]:
    """Write PEFT adapter folder(s): adapter_model.safetensors + adapter_config.json.

    With one component the folder is `directory`; with several, `directory/<component>/`.
    Returns the folders written.
    """
    directory = Path(directory)
    components = state.components()
    written = []
    for component in components:
        target = directory if len(components) == 1 else directory / component
        tensors, config = to_peft_state_dict(state, component, dtype=dtype)
        atomic_save_safetensors(tensors, target / "adapter_model.safetensors", {"format": "pt"})
        write_text(target / "adapter_config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
        written.append(target)
    return written
