"""spo-studio lives beside PyPI's `trainer` (Coqui TTS) in one Python, and changes no one's imports.

The rule (comfy_nodes/_library.py): plugin code imports the library as `spo_studio`, never as
`trainer`; the library imports itself relatively, so it runs as `trainer` (a checkout) and as
`spo_studio` (pip, or registered by a plugin). The fast tests fabricate a conflicting `trainer`
package; the pip tests use the real one from PyPI and run only where SPO_PIP_TEST_PYTHON names
the python of a throwaway venv that has torch (README "Import names" gives the commands).
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STANDIN_WEBUI = REPO / "tests" / "webui_standin"
PLUGIN_FILES = sorted(
    [p for d in ("comfy_nodes", "webui_extension") for p in (REPO / d).rglob("*.py")]
    + [REPO / "__init__.py", REPO / "preload.py", REPO / "install.py"] + list((REPO / "scripts").glob("*.py"))
)


def _imports(path: Path) -> list[tuple[int, str, int]]:
    """(line, absolute-or-relative module, level) of every import statement, dynamic ones with a literal name too."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, 0) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.lineno, node.module or "", node.level))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value, 0))
    return out


def _bare(module: str, level: int) -> bool:
    return level == 0 and (module == "trainer" or module.startswith("trainer."))


def test_no_plugin_file_imports_the_bare_trainer_name():
    found = [f"{p.relative_to(REPO)}:{line} imports {m}" for p in PLUGIN_FILES for line, m, lvl in _imports(p) if _bare(m, lvl)]
    assert not found, "plugins import the library as `spo_studio` (comfy_nodes/_library.py):\n" + "\n".join(found)


def test_the_library_imports_itself_relatively():
    """Absolute `trainer.` imports inside trainer/ would load PyPI's `trainer` when installed as spo_studio."""
    files = sorted((REPO / "trainer").rglob("*.py"))
    found = [f"{p.relative_to(REPO)}:{line} imports {m}" for p in files for line, m, lvl in _imports(p) if _bare(m, lvl)]
    assert not found, "\n".join(found)


def test_the_two_plugin_loaders_are_the_same_file():
    assert (REPO / "comfy_nodes" / "_library.py").read_text() == (REPO / "webui_extension" / "_library.py").read_text()


def test_the_checker_sees_a_bare_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\ndef f():\n    from trainer.spm import load_spm\n    import trainer\n"
                   "    importlib.import_module('trainer.lora')\nfrom .trainer import x\n")
    assert [(line, m) for line, m, lvl in _imports(bad) if _bare(m, lvl)] == [(3, "trainer.spm"), (4, "trainer"), (5, "trainer.lora")]


# ---------------------------------------------------------------- a foreign `trainer`, in a fresh process

FOREIGN = '''"""Stands in for PyPI's trainer: a top-level `trainer` without our subpackages."""
class Trainer:
    pass
'''


def _plugin_names() -> dict[str, list[str]]:
    """Every `spo_studio` module the plugin files import, with the names they take from it."""
    want: dict[str, list[str]] = {}
    for p in PLUGIN_FILES:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").partition(".")[0] == "spo_studio":
                want.setdefault(node.module, []).extend(a.name for a in node.names)
    return want


def _run(code: str, *paths: Path | None, python: str = sys.executable, cwd: Path) -> dict:
    """Run `code` in a fresh interpreter (no conftest alias); None in `paths`: no foreign site folder."""
    args = json.dumps([str(p) if p else "" for p in paths])
    out = subprocess.run([python, "-c", textwrap.dedent(code), args, json.dumps(_plugin_names())],
                         cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


COMFY_STYLE = """
    import importlib, importlib.util, json, os, sys
    paths, want = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    site, pack = paths[0], paths[1]
    if site:
        sys.path.insert(0, site)
    import trainer                      # another node pack got there first
    from trainer import Trainer
    before_path, before_trainer = list(sys.path), sys.modules["trainer"]
    name = os.path.basename(pack)       # ComfyUI: custom_nodes/<folder>/__init__.py, imported by path
    spec = importlib.util.spec_from_file_location(name, os.path.join(pack, "__init__.py"))
    module = importlib.util.module_from_spec(spec); sys.modules[name] = module; spec.loader.exec_module(module)
    resolved = {}
    for mod, names in want.items():     # every library import the plugins make, as they make it
        m = importlib.import_module(mod)
        assert all(hasattr(m, n) for n in names), (mod, names)
        resolved[mod] = m.__file__
    # a node's first use, through its own import line
    import torch
    node = module.NODE_CLASS_MAPPINGS["SPOStepAwareScore"]()
    class ToySPM:
        model = type("M", (), {"logit_scale": torch.zeros(())})()
        def score(self, images, prompts, t):
            return images.mean(dim=(1, 2, 3))
    images = torch.stack([torch.full((8, 8, 3), v) for v in (0.2, 0.9, 0.5)])
    order = node.score(images, ToySPM(), "a red square")["result"][1]
    print(json.dumps({"trainer_kept": sys.modules["trainer"] is before_trainer and trainer.Trainer is Trainer,
                      "trainer_file": trainer.__file__, "sys_path_kept": sys.path == before_path,
                      "resolved": resolved, "scores": order, "library": sys.modules["spo_studio"].__file__,
                      "generic": sorted(n for n in ("comfy_nodes", "webui_extension") if n in sys.modules)}))
"""

A1111_STYLE = """
    import importlib, json, os, sys
    paths, want = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    site, standin, extensions = paths
    if site:
        sys.path.insert(0, site)
    sys.path.insert(0, standin)
    import trainer
    from trainer import Trainer
    before_path, before_trainer = list(sys.path), sys.modules["trainer"]
    from modules import scripts         # A1111's loader: scripts/*.py by path, the folder on sys.path meanwhile
    scripts.load_scripts(extensions)
    resolved = {mod: importlib.import_module(mod).__file__ for mod in want}
    print(json.dumps({"trainer_kept": sys.modules["trainer"] is before_trainer and trainer.Trainer is Trainer,
                      "sys_path_kept": sys.path == before_path,
                      "scripts": sorted(s.script_class.__name__ for s in scripts.scripts_data),
                      "resolved": resolved, "library": sys.modules["spo_studio"].__file__,
                      "generic": sorted(n for n in ("comfy_nodes", "webui_extension") if n in sys.modules)}))
"""


def _foreign_trainer(tmp: Path) -> Path:
    site = tmp / "site"
    (site / "trainer").mkdir(parents=True)
    (site / "trainer" / "__init__.py").write_text(FOREIGN)
    return site


def _extensions(tmp: Path, how: str) -> Path:
    ext = tmp / "extensions"
    ext.mkdir()
    if how == "repo":
        (ext / "spo-studio").symlink_to(REPO, target_is_directory=True)
    else:
        (ext / "spo-link").symlink_to(REPO / "webui_extension", target_is_directory=True)
    return ext


def _assert_ours(result: dict, library_root: Path) -> None:
    assert result["trainer_kept"] and result["sys_path_kept"] and result["generic"] == []
    assert Path(result["library"]).resolve() == (library_root / "__init__.py").resolve()
    assert result["resolved"] and all(Path(f).resolve().is_relative_to(library_root.resolve()) for f in result["resolved"].values())


def test_comfyui_style_load_beside_a_foreign_trainer_imported_first(tmp_path):
    site = _foreign_trainer(tmp_path)
    (tmp_path / "custom_nodes").mkdir()
    pack = tmp_path / "custom_nodes" / "spo-studio"
    pack.symlink_to(REPO, target_is_directory=True)
    result = _run(COMFY_STYLE, site, pack, cwd=tmp_path)
    _assert_ours(result, REPO / "trainer")
    assert result["trainer_file"] == str(site / "trainer" / "__init__.py")
    # the toy SPM scores the mean of the [-1, 1] image, 2v - 1; best first, ranked by the library
    assert result["scores"] == pytest.approx([0.8, 0.0, -0.6], abs=1e-6)


@pytest.mark.parametrize("how", ["repo", "link", "copy"])
def test_a1111_style_load_beside_a_foreign_trainer_imported_first(tmp_path, how):
    site = _foreign_trainer(tmp_path)
    if how == "copy":  # only webui_extension/, copied; the library "installed" in site-packages as pip lays it out
        import shutil

        (site / "spo_studio").symlink_to(REPO / "trainer", target_is_directory=True)
        ext = tmp_path / "extensions"
        shutil.copytree(REPO / "webui_extension", ext / "spo-copy", ignore=shutil.ignore_patterns("__pycache__"))
    else:
        ext = _extensions(tmp_path, how)
    result = _run(A1111_STYLE, site, STANDIN_WEBUI, ext, cwd=tmp_path)
    _assert_ours(result, REPO / "trainer")
    assert result["scripts"] == ["SPOScript"]


# ---------------------------------------------------------------- the real PyPI `trainer`, pip-installed beside ours

PIP_PYTHON = os.environ.get("SPO_PIP_TEST_PYTHON")
needs_pip = pytest.mark.skipif(not PIP_PYTHON, reason="set SPO_PIP_TEST_PYTHON to a throwaway venv's python with torch")


@pytest.fixture(scope="module")
def pip_env(tmp_path_factory) -> dict:
    """PyPI's trainer and spo-studio (from a clean copy of this checkout) pip-installed into one venv."""
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        if (REPO / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            (src / f).write_bytes((REPO / f).read_bytes())
    for cmd in (["trainer"], [str(src)]):  # theirs first, then ours: the order that merged the two folders before
        done = subprocess.run([PIP_PYTHON, "-m", "pip", "install", "-q", *cmd], capture_output=True, text=True, timeout=3000)
        assert done.returncode == 0, done.stderr[-3000:]
    probe = subprocess.run([PIP_PYTHON, "-c", "import json, sysconfig; print(json.dumps(sysconfig.get_paths()))"],
                           capture_output=True, text=True, check=True)
    paths = json.loads(probe.stdout)
    return {"purelib": Path(paths["purelib"]), "scripts": Path(paths["scripts"])}


@needs_pip
def test_pip_installs_only_spo_studio_beside_the_real_trainer(pip_env):
    lib = pip_env["purelib"]
    ours = json.loads(subprocess.run(
        [PIP_PYTHON, "-c", "import importlib.metadata as m, json; "
                           "print(json.dumps([str(f) for f in m.files('spo-studio')]))"],
        capture_output=True, text=True, check=True).stdout)
    tops = {Path(f).parts[0] for f in ours if not Path(f).parts[0].endswith((".dist-info", ".."))}
    assert tops == {"spo_studio"}, tops  # nothing in trainer/, no comfy_nodes, no webui_extension
    assert (lib / "spo_studio" / "shapes" / "weights" / "spm" / "config.json").is_file()  # data files installed
    code = ("import trainer, spo_studio.spo.guided_sampler, spo_studio.lora, spo_studio.spm.weights; "
            "from trainer import Trainer, TrainerArgs; print(trainer.__file__, spo_studio.__file__)")
    out = subprocess.run([PIP_PYTHON, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr[-3000:]
    theirs, ours_file = out.stdout.split()
    assert Path(theirs).parent.name == "trainer" and Path(ours_file).parent.name == "spo_studio"


@needs_pip
@pytest.mark.parametrize("command,needle", [("spo-train", "--train.lr"), ("spo-lora", "usage:"), ("spo-spm", "usage:"), ("spo-eval", "--scorers")])
def test_console_commands_run_from_the_installed_package(pip_env, command, needle):
    out = subprocess.run([str(pip_env["scripts"] / command), "--help"], capture_output=True, text=True, cwd="/", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert needle in out.stdout


@needs_pip
def test_comfyui_style_load_with_the_real_trainer_imported_first(pip_env, tmp_path):
    (tmp_path / "custom_nodes").mkdir()
    pack = tmp_path / "custom_nodes" / "spo-studio"
    pack.symlink_to(REPO, target_is_directory=True)
    result = _run(COMFY_STYLE, None, pack, python=PIP_PYTHON, cwd=tmp_path)
    _assert_ours(result, REPO / "trainer")  # the checkout's library, not the installed copy nor theirs
    assert Path(result["trainer_file"]).parent.parent == pip_env["purelib"]


@needs_pip
@pytest.mark.parametrize("how", ["repo", "copy"])
def test_a1111_style_load_with_the_real_trainer_imported_first(pip_env, tmp_path, how):
    if how == "repo":
        ext = _extensions(tmp_path, "repo")
        library = REPO / "trainer"
    else:  # only webui_extension/, copied: the pip-installed spo_studio serves it
        import shutil

        ext = tmp_path / "extensions"
        shutil.copytree(REPO / "webui_extension", ext / "spo-copy", ignore=shutil.ignore_patterns("__pycache__"))
        library = pip_env["purelib"] / "spo_studio"
    result = _run(A1111_STYLE, None, STANDIN_WEBUI, ext, python=PIP_PYTHON, cwd=tmp_path)
    _assert_ours(result, library)
    assert result["scripts"] == ["SPOScript"]


# ---------------------------------------------------------------- a plain clone without `pip install -r`

MISSING = """
    import importlib.util, json, os, sys
    paths, _ = json.loads(sys.argv[1]), sys.argv[2]
    pack, blocked = paths[0], paths[1]
    sys.modules[blocked] = None          # as if never installed: importing it raises ModuleNotFoundError
    name = os.path.basename(pack)
    spec = importlib.util.spec_from_file_location(name, os.path.join(pack, "__init__.py"))
    module = importlib.util.module_from_spec(spec); sys.modules[name] = module; spec.loader.exec_module(module)
    try:
        module.NODE_CLASS_MAPPINGS["SPOLoraLoader"]().load_lora(None, None, "x.safetensors")
    except Exception as e:
        print(json.dumps({"type": type(e).__name__, "message": str(e)}))
"""


@pytest.mark.parametrize("blocked", ["safetensors", "spo_studio"])
def test_a_missing_dependency_is_one_line_naming_what_to_install(tmp_path, blocked):
    (tmp_path / "custom_nodes").mkdir()
    pack = tmp_path / "custom_nodes" / "spo-studio"
    pack.symlink_to(REPO, target_is_directory=True)
    result = _run(MISSING, pack, Path(blocked), cwd=tmp_path)
    message = result["message"]
    assert result["type"] == "NodeInputError" and "\n" not in message, message
    pip_name = {"spo_studio": "spo-studio"}.get(blocked, blocked)
    assert message.startswith(f"SPO LoRA Loader: the Python package '{pip_name}' is missing"), message
    assert f"python -m pip install -r {pack.resolve() / 'requirements.txt'}" in message
