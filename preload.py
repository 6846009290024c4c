"""A1111 runs `preload(parser)` of every extension before it parses the command line.

The option itself is defined once, in `webui_extension/preload.py` (also used when only that
folder is installed).
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "spo_studio_preload", os.path.join(os.path.dirname(os.path.realpath(__file__)), "webui_extension", "preload.py")
)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
preload = _module.preload
