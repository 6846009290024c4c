"""Installs what spo-studio needs inside a host program (ComfyUI-Manager and A1111 run this file).

Installs only requirements that are missing or too old, one pip call each, and never
installs, upgrades or downgrades torch (the host's build is the one that works on its GPU).

Inside AUTOMATIC1111 / Forge it is stricter: the WebUI pins its own versions (A1111 1.8:
transformers 4.30.2, safetensors 0.4.2, accelerate 0.21.0, ...) and the extension runs on
them, so only requirements that are absent are installed, with every installed package held
at its version (a pip constraint), and diffusers, peft and accelerate are not installed at
all: the extension imports SPM scoring and guided sampling only, which need none of them
(installing diffusers there moved huggingface-hub, anyio, h11 and safetensors under A1111).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
NEVER = {"torch", "torchvision", "torchaudio", "xformers"}
WEBUI_UNUSED = {"diffusers", "peft", "accelerate"}  # only the training CLIs import them


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


def inside_a1111(paths: list[str] | None = None) -> bool:
    """A1111 and Forge run extension installers with the WebUI's folder on PYTHONPATH
    (`launch.py` beside `modules/launch_utils.py`). Not imported: that would parse its argv."""
    for entry in sys.path if paths is None else paths:
        if entry and os.path.isfile(os.path.join(entry, "launch.py")) and \
                os.path.isfile(os.path.join(entry, "modules", "launch_utils.py")):
            return True
    return False


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def missing(reqs: list[str], upgrade: bool = True, webui: bool = False, version_of=_installed_version) -> list[str]:
    """Requirements not installed at all, or (when upgrade) installed below their minimum;
    webui: leave out what the WebUI extension never imports."""
    todo = []
    for req in reqs:
        name, minimum = _split(req)
        if name.lower() in NEVER or (webui and name.lower() in WEBUI_UNUSED):
            continue
        have = version_of(name)
        if have is None:
            todo.append(req)
        elif upgrade and minimum and _version_tuple(have) < _version_tuple(minimum):
            todo.append(req)
    return todo


def installed_pins() -> list[str]:
    """`name==version` for every installed distribution: a pip constraint that lets pip add
    packages but never change one that is there."""
    pins = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            pins[name.lower()] = f"{name}=={dist.version}"
    return sorted(pins.values())


def main() -> int:
    webui = inside_a1111()
    # Under A1111 only add what is absent: upgrading what it pins would fight it at every launch.
    todo = missing(requirements(), upgrade=not webui, webui=webui)
    if not todo:
        print("[spo-studio] all requirements present")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        if webui:
            pins = installed_pins()
        else:  # keep exactly the host's torch build; the rest may move to meet a minimum
            pins = [f"torch=={v}" for v in [_installed_version("torch")] if v]
        constraints.write_text("".join(f"{pin}\n" for pin in pins))
        for req in todo:
            print(f"[spo-studio] installing {req}")
            if subprocess.call([sys.executable, "-m", "pip", "install", req, "-c", str(constraints)]) != 0:
                held = " without changing a package the WebUI has" if webui else ""
                print(f"[spo-studio] could not install {req}{held}; install it yourself into this Python "
                      f"({sys.executable} -m pip install \"{req}\") and restart.")
                return 0 if webui else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
