"""Step-aware preference model (SPM) files for the WebUI: where they live, which model
family they belong to, and one cached loaded model.

No A1111 imports: the WebUI passes its folders in, tests pass temporary ones.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from spo_studio.families import REAL_FAMILIES, display

SPM_EXTENSIONS = (".safetensors", ".bin", ".pt", ".pth")
FAMILIES = REAL_FAMILIES  # the family table's (trainer/families.py)


class SPMUnavailable(Exception):
    """The chosen SPM cannot be used; the message is one line meant for the user."""


def default_spm_dir(models_path: str, override: str | None = None) -> str:
    """`--spo-models-dir` if given, else `<models_path>/spo` (A1111's models folder)."""
    return os.path.abspath(override) if override else os.path.join(models_path, "spo")


def list_spm_files(folder: str) -> list[str]:
    """SPM names in `folder`: weight files and saved-model directories, relative, sorted.

    A directory counts when it holds a `config.json` (our save_pretrained-style format).
    A missing folder gives an empty list; links that lead out of the folder are not listed.
    """
    if not os.path.isdir(folder):
        return []
    root_real = os.path.realpath(folder)
    names = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        here = os.path.realpath(root)
        if here != root_real and not _inside(root_real, here):
            dirs.clear()
            continue
        rel_root = os.path.relpath(root, folder)
        if rel_root != "." and "config.json" in files:
            names.append(rel_root.replace(os.sep, "/"))
            dirs.clear()  # a saved model's own files are not separate models
            continue
        for f in files:
            if f.lower().endswith(SPM_EXTENSIONS) and _inside(root_real, os.path.realpath(os.path.join(root, f))):
                names.append(os.path.normpath(os.path.join(rel_root, f)).replace(os.sep, "/"))
    return sorted(names, key=str.lower)


def _inside(root_real: str, path_real: str) -> bool:
    return path_real != root_real and os.path.commonpath([root_real, path_real]) == root_real


def resolve_spm(folder: str, name: str) -> str:
    """Absolute path of SPM `name` inside `folder`; raises SPMUnavailable with a one-line fix.

    `name` comes from the UI or the API: only names of files inside the SPM folder are accepted.
    Absolute paths, `..` and links leading out are refused with the same message as a missing
    file, and no message holds a server path, so a reply tells nothing about files elsewhere.
    """
    if not name:
        raise SPMUnavailable("SPO: no SPM selected; put one in the SPM folder (models/spo) and pick it.")
    shown = str(name).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1][:80]  # never echo a path
    refused = SPMUnavailable(f"SPO: SPM {shown!r} not found in the SPM folder; pick one from the list.")
    parts = str(name).replace("\\", "/").split("/")
    if "\x00" in name or os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in parts \
            or os.path.splitdrive(name)[0]:
        raise refused
    root_real = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root_real, *[p for p in parts if p]))
    if not _inside(root_real, path) or not os.path.exists(path):
        raise refused
    return path


def hide_paths(message: str, folder: str) -> str:
    """`message` with the SPM folder's location removed (names inside it stay)."""
    for prefix in sorted({os.path.realpath(folder), os.path.abspath(folder), folder}, key=len, reverse=True):
        if prefix:
            message = message.replace(prefix + os.sep, "").replace(prefix, "the SPM folder")
    return message


def spm_family(spm) -> str | None:
    """"sd15", "sdxl" or None (unknown) for a loaded SPM: `trainer.spm` records it from our
    format's config or from the released file names."""
    fam = getattr(spm, "family", None)
    return fam if fam in FAMILIES else None


def check_family(spm_fam: str | None, model_fam: str, name: str) -> None:
    """Raise SPMUnavailable when an SPM made for one model family meets another."""
    if model_fam not in FAMILIES:
        raise SPMUnavailable(f"SPO: the loaded checkpoint is {model_fam}; SPO supports SD-1.5 and SDXL models only.")
    if spm_fam is not None and spm_fam != model_fam:
        raise SPMUnavailable(
            f"SPO: SPM {name!r} is for {_pretty(spm_fam)} but the loaded checkpoint is {_pretty(model_fam)}; "
            f"pick an {_pretty(model_fam)} SPM."
        )


def _pretty(fam: str) -> str:
    return display(fam)


@dataclass
class LoadedSPM:
    path: str
    mtime: float
    model: object
    family: str | None


class SPMCache:
    """Keeps the last loaded SPM (they are ~1.3 B parameters: one at a time).

    loader(path) -> SPM object with `.score(images[-1,1], prompts, timesteps)`; the default is
    `trainer.spm.load_spm`. The model is then moved to `device` / `dtype` (None: left as loaded).
    Thread-safe: the WebUI may score from the API and the UI at once.
    """

    def __init__(self, loader=None, device=None, dtype=None):
        self.loader = loader
        self.device = device
        self.dtype = dtype
        self._lock = threading.Lock()
        self._loaded: LoadedSPM | None = None

    def get(self, path: str) -> LoadedSPM:
        mtime = os.path.getmtime(path)
        with self._lock:
            hit = self._loaded
            if hit is not None and hit.path == path and hit.mtime == mtime:
                return hit
            self._loaded = None  # free the old one before loading the next
            try:
                model = self._load(path)
            except SPMUnavailable:
                raise
            except Exception as e:  # a broken file must become a message, not a crashed WebUI
                raise SPMUnavailable(f"SPO: could not load SPM {os.path.basename(path)!r}: {_one_line(e)}") from e
            self._loaded = LoadedSPM(path, mtime, model, spm_family(model))
            return self._loaded

    def clear(self) -> None:
        with self._lock:
            self._loaded = None

    def _load(self, path: str):
        loader = self.loader
        if loader is None:
            loader = _trainer_load_spm()
        model = loader(path)
        if (self.device is not None or self.dtype is not None) and hasattr(model, "to"):
            model = model.to(device=self.device, dtype=self.dtype) or model
        if hasattr(model, "eval"):
            model.eval()
        return model


def _trainer_load_spm():
    try:
        from spo_studio.spm import load_spm
    except ImportError:
        from spo_studio.spm.weights import load_spm
    return load_spm


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")
