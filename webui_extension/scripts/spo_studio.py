"""A1111 entry point when only `webui_extension/` is copied or linked into `extensions/`.

The folder may have any name there, so the package is loaded from this file's location under
the name `spo_studio_webui` (ours alone: no generic top-level module, no sys.path entry). Its
__init__ registers the library as `spo_studio` (_library.py): a linked folder finds the checkout's
trainer/ beside itself; a copied one needs spo-studio installed in the WebUI's Python
(`pip install --no-deps <spo-studio checkout or URL>`).
"""
import importlib.util
import os
import sys

PACKAGE = "spo_studio_webui"  # the repository's scripts/spo_studio.py loads this file and uses the same name

if PACKAGE not in sys.modules:
    _pkg = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    _spec = importlib.util.spec_from_file_location(PACKAGE, os.path.join(_pkg, "__init__.py"), submodule_search_locations=[_pkg])
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[PACKAGE] = _module
    try:
        _spec.loader.exec_module(_module)
    except BaseException:
        del sys.modules[PACKAGE]
        raise


def _library_importable() -> bool:
    try:
        return importlib.util.find_spec("spo_studio.spo.guided_sampler") is not None
    except ImportError:
        return False


if not _library_importable():
    print(
        "spo-studio: the spo-studio library (`spo_studio`) is not importable; run `<webui python> -m pip install "
        "--no-deps <spo-studio checkout or URL>` or link the folder instead of copying it. SPO is disabled."
    )
else:
    from spo_studio_webui.script import SPOScript, register_callbacks  # noqa: F401  (SPOScript: found by A1111)

    register_callbacks()
