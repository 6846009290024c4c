"""Writes that never leave a half-written file, a stray temporary or an unreadable mode behind.

Every helper writes beside its target under a dot-name ending in `.tmp`, gives the result the mode
the user's umask asks for (temporary files are created 0600, and os.replace keeps that mode, so a
ComfyUI or A1111 running as another user could not read a LoRA), renames it into place, and removes
the temporary on any failure, a full disk included.
"""
from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def umask() -> int:
    """The process's umask (read by setting and restoring it: there is no other portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: str | os.PathLike) -> None:
    """chmod `path` (file or folder tree) to what a plain open()/mkdir() would have given it."""
    mask = umask()
    path = Path(path)
    if path.is_dir():
        for p in [path, *path.rglob("*")]:
            if not p.is_symlink():
                os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def temp_name(path: Path) -> Path:
    """`.name.<pid>.tmp` beside `path`: hidden, recognisable as ours, one per process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


@contextmanager
def atomic_path(path: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path (a created folder with directory=True) to write; on success it
    replaces `path` with the umask's mode; on any exception it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    _remove(tmp)
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        honour_umask(tmp)
        if directory and path.exists():
            old = path.with_name(f".{path.name}.{os.getpid()}.old.tmp")
            os.replace(path, old)  # a folder cannot be os.replace'd over a non-empty one
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        _remove(tmp)
        full = disk_full_error(e, tmp)
        if full is not None:
            raise full from e
        raise


def disk_full_error(e: BaseException, where: Path) -> OSError | None:
    """An OSError(ENOSPC) for a write that failed because the disk is full, also when the writer
    reports it its own way (safetensors raises SafetensorError "... os error 28", torch.save a
    RuntimeError "file write failed" without an errno); None for other failures or a plain OSError."""
    if isinstance(e, OSError) or not isinstance(e, Exception):
        return None
    text = str(e)
    said = "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text
    if not said and "write failed" in text:
        try:
            st = os.statvfs(where.parent)
            said = st.f_bavail * st.f_frsize < 1 << 20  # under 1 MiB left: the write failed for space
        except OSError:
            pass
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where)) if said else None


@contextmanager
def publish(folder: str | os.PathLike, names: list[str]) -> Iterator[Path]:
    """Yield a temporary folder inside `folder` to write the files/folders `names` into; then move
    them all into `folder` together. If writing or moving fails, the earlier versions are put back
    and nothing new or temporary is left: the set appears whole or not at all."""
    folder = Path(folder)
    stage = temp_name(folder / "publish")
    _remove(stage)
    stage.mkdir(parents=True)
    try:
        yield stage
        missing = [n for n in names if not (stage / n).exists()]
        if missing:
            raise FileNotFoundError(f"publish: {missing[0]} was not written")
        honour_umask(stage)
        moved: list[tuple[Path, Path | None]] = []
        try:
            for n in names:
                target, old = folder / n, None
                if target.exists() or target.is_symlink():
                    old = stage / f".{n}.previous"
                    os.replace(target, old)
                moved.append((target, old))
                os.replace(stage / n, target)
        except BaseException:
            for target, old in reversed(moved):  # undo: the earlier set comes back
                _remove(target)
                if old is not None:
                    os.replace(old, target)
            raise
    except BaseException as e:
        full = disk_full_error(e, stage / "x")
        if full is not None:
            raise full from e
        raise
    finally:
        _remove(stage)  # with the earlier versions, once the new ones are in place


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to a temporary beside `path`, then rename it over `path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove `.*.tmp` files/folders a killed process left in `folder` (not recursive). Returns them."""
    folder = Path(folder)
    stale = [p for p in folder.glob(".*tmp*") if p.name.endswith(".tmp") or p.name.startswith(".tmp-")] \
        if folder.is_dir() else []
    for p in stale:
        parts = p.name.split(".")  # ".NAME.PID.old.tmp": a folder atomic_path was replacing when killed
        original = folder / ".".join(parts[1:-3]) if p.name.endswith(".old.tmp") and len(parts) > 4 else None
        if original is not None and not original.exists():
            os.replace(p, original)  # the new one never arrived: put the old one back
        else:
            _remove(p)
    return stale


def describe_os_error(e: OSError, where: str | os.PathLike | None = None) -> str:
    """One line for the user: what went wrong, on which file or disk, and what to do."""
    target = _without_temporaries(str(e.filename or where or ""))
    place = f" ({target})" if target else ""
    if e.errno == errno.ENOSPC:
        disk = _mount_point(target) if target else None
        on = f" on the disk holding {disk}" if disk else ""
        return f"disk full: no space left{on}{place}; free space there or choose another output folder"
    if e.errno == errno.EDQUOT:
        return f"disk quota exceeded{place}; free space or choose another output folder"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write{place}: {e.strerror or 'permission denied'}; choose a writable folder"
    return f"{target + ': ' if target else ''}{e.strerror or e}"


def _without_temporaries(path: str) -> str:
    """The path the user asked for: `.name.<pid>.tmp` parts read as `name`, publish stages dropped."""
    import re

    path = re.sub(r"/\.publish\.\d+\.tmp(?=/|$)", "", path)
    return re.sub(r"(^|/)\.([^/]+?)\.\d+(?:\.old)?\.tmp(?=/|$)", r"\1\2", path)


def _mount_point(target) -> str | None:
    try:
        p = Path(target).absolute()
        while not p.exists() and p != p.parent:
            p = p.parent
        while not os.path.ismount(p) and p != p.parent:
            p = p.parent
        return str(p)
    except (OSError, ValueError):
        return None
