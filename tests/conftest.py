import pytest
import torch

from trainer.malloc import keep_freed_memory

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
