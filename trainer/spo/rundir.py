"""The output folder of an SPO run: one run per folder, a lock, checkpoints that fall back, a clean log.

Nothing here trains: these are the checks and file moves around training, so that a run never
mixes its files with another run's, a crash never leaves a folder locked, and `--resume` continues
the run it finds (and only if the model it would continue is the one configured).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from .. import typed_config
from ..atomic import atomic_path, remove_stale_temporaries, write_text
from ..typed_config import ConfigError
from .config import MODEL_KEYS, SPOConfig, to_dict

CHECKPOINTS = "checkpoints"
LOCK = ".spo.lock"
LOG = "log.jsonl"
# What a run writes into its folder (besides <name>.safetensors and validation-epoch-*.png): their
# presence means the folder holds a run; --overwrite removes exactly these.
RUN_FILES = (CHECKPOINTS, LOG, "logs", "config.yaml", "ranks.json", "diffusers", "validation.png",
             "report.md", "report.json", "before_after.png")


def export_name(cfg: SPOConfig) -> str:
    return Path(cfg.output_dir).name or "spo"


def run_files(out: Path, cfg: SPOConfig) -> list[Path]:
    found = [out / n for n in RUN_FILES if (out / n).exists()]
    found += sorted(out.glob("validation-epoch-*.png"))
    kohya = out / f"{export_name(cfg)}.safetensors"
    return found + ([kohya] if kohya.exists() else [])


class RunLock:
    """An exclusive flock on <out>/.spo.lock, held while the process lives: the kernel drops it when
    the process ends, so a crashed or killed run never leaves the folder locked."""

    def __init__(self, out: Path):
        import fcntl

        self.path = out / LOCK
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise ConfigError(f"--output_dir {out}: another run (pid {holder}) is writing there; wait for it to end "
                              "or choose another --output_dir") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays (removing it would race a waiter)
            self.fd = None


def is_main_rank() -> bool:
    """Rank 0 (or a single process), known before accelerate starts: it alone owns the folder."""
    return int(os.environ.get("RANK", "0")) == 0


def prepare_output_dir(cfg: SPOConfig) -> RunLock | None:
    """Refuse what would mix two runs; lock the folder; remove a killed run's temporaries.

    Returns the lock (rank 0) or None (other ranks, which only read the folder).
    """
    out = Path(cfg.output_dir)
    if cfg.resume and cfg.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; give one")
    check_writable(out)
    kohya = out / f"{export_name(cfg)}.safetensors"
    if kohya.is_dir() or (out / "diffusers").is_file() or (out / "config.yaml").is_dir():
        # found now, not after the last epoch: a bad export target never costs a finished run
        raise ConfigError(f"--output_dir {out}: {kohya.name}, diffusers/ or config.yaml is in the way of the export "
                          "(a folder where a file goes, or the reverse); move it or choose another --output_dir")
    if not is_main_rank():
        return None
    lock = RunLock(out)
    try:
        existing = run_files(out, cfg)
        if existing and not (cfg.resume or cfg.overwrite):
            shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in existing[:3])
            raise ConfigError(f"--output_dir {out} already holds a run ({shown}); add --resume to continue it, "
                              "--overwrite to replace it, or choose another --output_dir")
        remove_stale_temporaries(out)
        remove_stale_temporaries(out / CHECKPOINTS)
        if cfg.resume:
            check_resume_config(out, cfg)
    except BaseException:
        lock.release()
        raise
    return lock


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test.{os.getpid()}.tmp"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--output_dir: cannot write to {out} ({e.strerror}); choose a writable directory") from None


def clear_run(out: Path, cfg: SPOConfig) -> None:
    """--overwrite: remove the earlier run's files (only those a run writes), once the new run's inputs all loaded."""
    for p in run_files(out, cfg):
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


# -- checkpoints -----------------------------------------------------------------------------------------
def checkpoints(out: Path) -> list[Path]:
    """Finished checkpoints, newest first."""
    root = out / CHECKPOINTS
    return sorted((p for p in root.glob("epoch-*") if p.is_dir()), reverse=True) if root.is_dir() else []


def _state(path: Path) -> dict:
    state = json.loads((path / "state.json").read_text())
    if not isinstance(state, dict) or not isinstance(state.get("epoch"), int) or not isinstance(state.get("config"), dict):
        raise ValueError("state.json lacks epoch/config")
    return state


def check_resume_config(out: Path, cfg: SPOConfig, state: dict | None = None) -> list[str]:
    """Refuse continuing a checkpoint made under another model/LoRA setting; return the other changed keys."""
    if state is None:
        for path in checkpoints(out):
            try:
                state = _state(path)
                break
            except (OSError, ValueError):
                continue
        else:
            raise ConfigError(f"--resume: no checkpoint in {out / CHECKPOINTS}; run without --resume to start")
    old, new = state["config"], to_dict(cfg)
    changed = typed_config.changed_keys(old, new)
    for key in MODEL_KEYS:
        if key in changed:
            a, b = _get(old, key), _get(new, key)
            raise ConfigError(f"--resume: --{key} is {b!r} but the checkpoint was trained with {a!r}; resuming would "
                              f"continue another model. Use --{key} {_shown(a)}, or a new --output_dir")
    return [k for k in changed if k not in ("resume", "overwrite", "output_dir")]


def _get(d: dict, key: str):
    for part in key.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def _shown(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, list) else str(v)


def save_checkpoint(out: Path, epoch: int, lora: dict, optimizer, cfg: SPOConfig, keep: int = 2) -> Path:
    """Write checkpoints/epoch-NNNN through a temporary folder renamed into place; keep the newest `keep`.

    lora: the adapter's state dict. state.json is written last, and a kill or a full disk leaves
    no temporary folder (removed here on failure, or at the next start after a kill).
    """
    from safetensors.torch import save_file

    root = out / CHECKPOINTS
    final = root / f"epoch-{epoch:04d}"
    with atomic_path(final, directory=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in lora.items()}, str(tmp / "lora.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"epoch": epoch, "config": to_dict(cfg)}, indent=1))
    for old in checkpoints(out)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: Path) -> dict:
    """Everything of a checkpoint, read and checked before anything is applied (ValueError/OSError if damaged)."""
    from safetensors.torch import load_file

    from ..lora.files import check_safetensors

    state = _state(path)
    check_safetensors(path / "lora.safetensors")
    return {
        "state": state,
        "lora": load_file(str(path / "lora.safetensors")),
        "optimizer": torch.load(path / "optimizer.pt", weights_only=True),
        "rng": torch.load(path / "rng.pt", weights_only=True)["torch"],
    }


def load_newest_intact(out: Path, cfg: SPOConfig, say=print) -> tuple[Path, dict]:
    """The newest checkpoint that reads back whole; says which damaged ones it passed over."""
    damaged = []
    for path in checkpoints(out):
        try:
            ckpt = read_checkpoint(path)
        except Exception as e:  # truncated zip, bad JSON, short safetensors: all mean "damaged"
            damaged.append(path.name)
            say(f"checkpoint {path.name} is damaged ({_first_line(e)}); trying the previous one")
            continue
        changed = check_resume_config(out, cfg, ckpt["state"])
        if damaged:
            say(f"resuming from {path.name} instead of the damaged {', '.join(damaged)}")
        if changed:
            say("resuming with changed settings: " + ", ".join(changed))
        return path, ckpt
    where = out / CHECKPOINTS
    if damaged:
        raise ConfigError(f"--resume: every checkpoint in {where} is damaged ({', '.join(damaged)}); "
                          "use --overwrite to start again")
    raise ConfigError(f"--resume: no checkpoint in {where}; run without --resume to start")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def trim_log(out: Path, before_epoch: int) -> None:
    """Keep only log.jsonl records of epochs < before_epoch (and no half-written line): a resumed
    run appends epochs from there, so no epoch is logged twice."""
    path = out / LOG
    if not path.exists():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("epoch"), int) and rec["epoch"] < before_epoch:
            kept.append(line)
    write_text(path, "".join(k + "\n" for k in kept))


def append_log(out: Path, record: dict) -> None:
    """One epoch's line; a line for an epoch already logged replaces it (never the same epoch twice)."""
    path = out / LOG
    if path.exists():
        trim_log(out, record["epoch"])
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
