"""pip installs the library folder `trainer/` under the import name `spo_studio`, and nothing else.

`trainer` is a top-level name PyPI's `trainer` (Coqui) owns; the plugins (comfy_nodes/,
webui_extension/) are loaded by their hosts from their folders and are not installed. The package
list is derived from the folder, so a new subpackage (or data folder) needs no edit here.
Everything else is in pyproject.toml; README "Import names" explains the design.
"""
from setuptools import find_namespace_packages, setup

# namespace packages too: the data folders (trainer/configs/*/unet, trainer/shapes/weights/...) have no __init__.py
SUB = find_namespace_packages("trainer", exclude=["__pycache__", "*.__pycache__", "*.__pycache__.*"])
setup(package_dir={"spo_studio": "trainer"}, packages=["spo_studio"] + [f"spo_studio.{p}" for p in SUB])
