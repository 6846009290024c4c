"""ComfyUI loads this folder (custom_nodes/spo-studio) as a node pack through this file.

ComfyUI imports it by path as a package named after the folder, so the nodes are a subpackage
reached relatively: no sys.path entry, no top-level `comfy_nodes` or `trainer` module, nothing
that changes what another pack imports. The library is registered as `spo_studio`
(comfy_nodes/_library.py), whatever else is called `trainer` in this Python.
"""
if __package__:
    from .comfy_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    # Imported as a lone module, not as ComfyUI's node pack: pytest does so with this file when the
    # checkout's folder name is no identifier (a clone named spo-studio). There is no package to
    # reach the nodes from, and nothing to register.
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
