"""A1111 entry point when the whole spo-studio repository is the extension ("Install from URL").

A1111 runs every `scripts/*.py` of an extension and registers the Script classes it finds in the
module. This file runs webui_extension/scripts/spo_studio.py (the one entry point, which loads the
extension as `spo_studio_webui` and the library as `spo_studio`, without touching sys.path) and
takes its script class.
"""
import importlib.util
import os

_entry = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "webui_extension", "scripts",
                      "spo_studio.py")
_spec = importlib.util.spec_from_file_location("spo_studio_webui_entry", _entry)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
if hasattr(_module, "SPOScript"):
    SPOScript = _module.SPOScript  # found by A1111
