"""Installs what spo-studio needs inside a host program (ComfyUI-Manager and A1111 run this file).

Installs only requirements that are missing or too old, one pip call each, and never
installs, upgrades or downgrades torch (the host's build is the one that works on its GPU).
"""
from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
NEVER = {"torch", "torchvision", "torchaudio", "xformers"}


def requirements(path: Path = HERE / "requirements.txt") -> list[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


def _split(req: str) -> tuple[str, str]:
    for op in (">=", "==", "~=", "<=", ">", "<"):
        if op in req:
            name, _, version = req.partition(op)
            return name.strip(), version.strip() if op in (">=", "==", "~=") else ""
    return req.strip(), ""


def _version_tuple(v: str) -> tuple:
    out = []
    for part in v.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def inside_a1111() -> bool:
    """A1111 re-pins its own transformers/accelerate/numpy before running extension installers."""
    try:
        import launch  # noqa: F401  (A1111's launcher module)
    except ImportError:
        return False
    return True


def missing(reqs: list[str], upgrade: bool = True) -> list[str]:
    """Requirements not installed at all, or (when upgrade) installed below their minimum."""
    todo = []
    for req in reqs:
        name, minimum = _split(req)
        if name.lower() in NEVER:
            continue
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            todo.append(req)
            continue
        if upgrade and minimum and _version_tuple(have) < _version_tuple(minimum):
            todo.append(req)
    return todo


def main() -> int:
    # Under A1111 only add what is absent: upgrading what it pins would fight it at every launch.
    todo = missing(requirements(), upgrade=not inside_a1111())
    for req in todo:
        print(f"[spo-studio] installing {req}")
        # --no-deps would be safer for torch but breaks real needs; a constraint pins torch instead.
        cmd = [sys.executable, "-m", "pip", "install", req]
        try:
            import torch  # noqa: F401  (already there: keep exactly this version)

            cmd += ["torch==" + metadata.version("torch")]
        except ImportError:
            pass
        subprocess.check_call(cmd)
    if not todo:
        print("[spo-studio] all requirements present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
