"""A1111 entry point when only `webui_extension/` is copied or linked into `extensions/`.

The folder may have any name there, so the package is imported from this file's location
under its own name. `trainer` must be importable: a linked folder finds it next to itself in
the repository; a copied one needs spo-studio installed in the WebUI's Python
(`pip install --no-deps <spo-studio checkout or URL>`).
"""
import importlib.util
import os
import sys

_pkg = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
_repo = os.path.dirname(_pkg)
if os.path.isdir(os.path.join(_repo, "trainer")) and _repo not in sys.path:
    sys.path.append(_repo)  # a linked folder: the repository is its parent

if "webui_extension" not in sys.modules:
    _spec = importlib.util.spec_from_file_location(
        "webui_extension", os.path.join(_pkg, "__init__.py"), submodule_search_locations=[_pkg]
    )
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["webui_extension"] = _module
    _spec.loader.exec_module(_module)


def _trainer_importable() -> bool:
    try:
        return importlib.util.find_spec("trainer.spo.guided_sampler") is not None
    except ImportError:
        return False


if not _trainer_importable():
    print(
        "spo-studio: the `trainer` package is not importable; run `<webui python> -m pip install --no-deps "
        "<spo-studio checkout or URL>` or link the folder instead of copying it. SPO is disabled."
    )
else:
    from webui_extension.script import SPOScript, register_callbacks  # noqa: F401  (SPOScript: found by A1111)

    register_callbacks()
