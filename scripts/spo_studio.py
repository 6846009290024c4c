"""A1111 entry point when the whole spo-studio repository is the extension ("Install from URL").

A1111 runs every `scripts/*.py` of an extension and registers the Script classes it finds in
the module, so this file only makes the repository importable and imports the real script.
"""
import os
import sys

_repo = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
if _repo not in sys.path:
    # A1111 adds it only while this file loads; appended, so the WebUI's own modules keep precedence
    sys.path.append(_repo)

from webui_extension.script import SPOScript, register_callbacks  # noqa: E402,F401  (SPOScript: found by A1111)

register_callbacks()
