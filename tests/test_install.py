"""install.py's decisions: inside A1111/Forge it adds only what is absent, never what only the
training CLIs need, and holds every installed package at its version; elsewhere it also
upgrades what is too old. (The real A1111 run is in test_webui_integration.py.)"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _install_module():
    spec = importlib.util.spec_from_file_location("spo_install", REPO / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# what A1111 1.8.0's requirements_versions.txt pins (the rest of our requirements: absent)
A1111_18 = {"transformers": "4.30.2", "safetensors": "0.4.2", "accelerate": "0.21.0", "numpy": "1.26.2",
            "pillow": "9.5.0", "tqdm": "4.66.1", "torch": "2.1.2"}


def test_inside_a1111_is_told_by_the_webui_folder_on_the_path(tmp_path):
    inst = _install_module()
    (tmp_path / "modules").mkdir()
    (tmp_path / "launch.py").write_text("")
    assert not inst.inside_a1111([str(REPO), ""])
    assert not inst.inside_a1111([str(tmp_path)])  # launch.py alone is not A1111
    (tmp_path / "modules" / "launch_utils.py").write_text("")
    assert inst.inside_a1111([str(REPO), str(tmp_path)])


def test_under_a1111_only_absent_requirements_the_extension_imports():
    inst = _install_module()
    reqs = inst.requirements()
    assert {inst._split(r)[0] for r in reqs} >= {"diffusers", "peft", "accelerate", "transformers", "pyyaml"}
    todo = inst.missing(reqs, upgrade=False, webui=True, version_of=lambda n: A1111_18.get(n.lower()))
    assert todo == ["pyyaml>=6.0"]  # transformers 4.30.2 < 4.40 stays; diffusers/peft are never installed there


def test_elsewhere_too_old_requirements_are_upgraded_and_torch_never():
    inst = _install_module()
    todo = inst.missing(inst.requirements() + ["torch>=3.0"], upgrade=True, version_of=lambda n: A1111_18.get(n.lower()))
    names = [inst._split(r)[0] for r in todo]
    assert "transformers" in names and "diffusers" in names and "peft" in names and "torch" not in names
    assert "safetensors" not in names  # 0.4.2 meets >= 0.4


def test_the_webui_constraint_pins_every_installed_package():
    inst = _install_module()
    pins = dict(p.split("==") for p in inst.installed_pins())
    from importlib import metadata

    assert pins["torch"] == metadata.version("torch") and pins["transformers"] == metadata.version("transformers")
    assert len(pins) == len({d.metadata["Name"].lower() for d in metadata.distributions() if d.metadata["Name"]})


def test_install_in_a_webui_with_everything_present_runs_no_pip(tmp_path):
    (tmp_path / "modules").mkdir()
    (tmp_path / "launch.py").write_text("raise SystemExit('install.py must not import launch')\n")
    (tmp_path / "modules" / "launch_utils.py").write_text("")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, str(REPO / "install.py")], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[spo-studio] all requirements present"
