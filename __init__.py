"""ComfyUI loads this folder (custom_nodes/spo-studio) as a node pack through this file."""
import os
import sys

_ROOT = os.path.dirname(os.path.abspath(__file__))
if _ROOT not in sys.path:  # `trainer` and `comfy_nodes` are top-level packages of this repository
    sys.path.insert(0, _ROOT)

from comfy_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
