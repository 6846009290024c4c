"""How plugin code reaches the library: always as `spo_studio`, never as `trainer`.

The rule for every plugin file (comfy_nodes/, webui_extension/, the root entry files):
**plugins import the library as `spo_studio`** (`from spo_studio.spm.weights import load_spm`) and
their own modules relatively (`from .host import ...`). tests/test_import_names.py fails on a plugin
file that imports `trainer`.

Why: the folder is called `trainer/` (`python -m trainer.spo` from a checkout), but in a host's
Python the top-level name `trainer` may belong to PyPI's `trainer` (Coqui TTS, used by TTS node
packs): already imported by another pack, or merged into the same site-packages folder. The name
`spo_studio` is ours alone: pip installs `trainer/` under it (setup.py), and `ensure_library`
registers the checkout's `trainer/` under it when the plugin sits in a checkout. Neither edits
sys.path, so no other pack's imports change.

This file is copied verbatim as webui_extension/_library.py (that folder may be installed alone);
a test keeps the two identical.
"""
from __future__ import annotations

import importlib.util
import os
import sys

NAME = "spo_studio"


def _checkout_library() -> str | None:
    """The checkout's trainer/ folder beside this plugin's folder, if this plugin sits in a checkout."""
    repo = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    lib = os.path.join(repo, "trainer")
    # the guided sampler marks it as spo-studio's library, not some other `trainer` folder
    return lib if os.path.isfile(os.path.join(lib, "spo", "guided_sampler.py")) else None


def ensure_library() -> None:
    """Make `import spo_studio` work: the checkout's trainer/ if there is one, else the pip-installed one.

    Already imported (another of our plugins, or the tests) is kept: one copy per process. Nothing is
    imported beyond trainer/__init__.py, so the host starts fast and without diffusers.
    """
    if NAME in sys.modules:
        return
    lib = _checkout_library()
    if lib is None:
        return  # a plugin folder on its own: `pip install spo-studio` provides `spo_studio`
    spec = importlib.util.spec_from_file_location(NAME, os.path.join(lib, "__init__.py"), submodule_search_locations=[lib])
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[NAME]
        raise
