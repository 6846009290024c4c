"""trainer.malloc: freed tensor memory is reused instead of being faulted in again."""
import json
import platform
import subprocess
import sys

import pytest

from trainer.malloc import keep_freed_memory

ON_GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Tensors of 40 MB (above glibc's largest dynamic mmap threshold, 32 MB), each written then freed;
# page faults counted over 20 of them after 10 to warm up.
CHILD = """
import json, resource, sys, torch
from trainer.malloc import keep_freed_memory
agreed = keep_freed_memory() if sys.argv[1] == "keep" else False
for _ in range(10):
    torch.empty(10_000_000).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.empty(10_000_000).fill_(1.0)
print(json.dumps({"agreed": agreed, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not ON_GLIBC, reason="glibc only")
def test_freed_tensors_are_not_faulted_in_again():
    default, kept = _faults("default"), _faults("keep")
    assert kept["agreed"] is True
    pages = 20 * 40_000_000 // 4096
    assert default["faults"] > 0.9 * pages  # every 40 MB tensor faults its pages in afresh
    assert kept["faults"] < 0.05 * pages  # the first tensor's memory is reused


@pytest.mark.skipif(ON_GLIBC, reason="non-glibc only")
def test_other_platforms_are_left_alone():
    assert keep_freed_memory() is False
