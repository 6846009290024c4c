import importlib
import importlib.abc
import importlib.util
import sys

import pytest
import torch

from trainer.malloc import keep_freed_memory


class _SameLibrary(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`spo_studio.X` is the module `trainer.X`, one object under two names.

    The tests import the library as `trainer` (the checkout's folder); the plugins import it as
    `spo_studio` (comfy_nodes/_library.py). Without this, the plugin code under test would run on
    a second copy of every module, with its own classes and caches.
    """

    def find_spec(self, name, path=None, target=None):
        if name == "spo_studio" or name.startswith("spo_studio."):
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return importlib.import_module("trainer" + spec.name[len("spo_studio"):])

    def exec_module(self, module):
        pass  # already executed under its `trainer` name


sys.meta_path.insert(0, _SameLibrary())
importlib.import_module("spo_studio")  # so that the plugins' ensure_library() finds it loaded

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
keep_freed_memory()  # the tests train in-process; see trainer/malloc.py


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
