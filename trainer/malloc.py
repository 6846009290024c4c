"""Keep freed CPU memory in the process (glibc only; elsewhere a no-op).

PyTorch on CPU allocates and frees many tensors of a few MB every step. glibc serves each
allocation above its mmap threshold with a fresh mmap and unmaps it on free, so the next step
faults every page in again: in one epoch of the ShapesWorld default run on 2 cores, 36 of 161
CPU seconds were spent in the kernel (`bench/malloc.py`). Raising the mmap and trim
thresholds keeps freed memory in the heap for reuse — what the environment variables
MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ do, set from inside the process so that
`python -m trainer.spo` gets it without a wrapper. In that epoch, wall time fell from 91 s to 68–71 s;
the price is a heap that keeps its high-water mark (peak memory +70–110 MB of about 0.9 GB).
"""
from __future__ import annotations

import ctypes
import platform

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Ask glibc to reuse freed memory instead of returning it to the kernel; True if it agreed."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
