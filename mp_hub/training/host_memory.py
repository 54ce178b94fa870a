"""Keep freed memory in the process for reuse: with glibc's default malloc, a CPU training step page-faults its
activations in afresh, because every large freed block goes back to the kernel (the heap's top is trimmed, and
blocks above the mmap threshold are unmapped). `keep_freed_memory` raises both thresholds, as a caching allocator
such as jemalloc would behave; the process then holds its peak memory, as PyTorch's CUDA allocator does.

Why mallopt and not jemalloc or GLIBC_TUNABLES: both of those act only from process start (LD_PRELOAD, or an
environment the launcher passes), which a script run by `accelerate launch` cannot set for itself."""

from __future__ import annotations

import ctypes
import logging
import os
import platform

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX); a larger value is refused
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int: keep up to 2 GiB of free memory at the heap's top


def malloc_tuned_by_environment() -> bool:
    """Whether GLIBC_TUNABLES already sets glibc's malloc (then the user's settings stand)."""
    return "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory: True where it took both settings.

    False, changing nothing, where the C library is not glibc or GLIBC_TUNABLES sets glibc's malloc. Blocks above
    32 MiB are still mapped and unmapped by the kernel (glibc's ceiling on the mmap threshold)."""
    if platform.libc_ver()[0] != "glibc" or malloc_tuned_by_environment():
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    took = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not took:
        logger.warning("glibc's malloc refused the settings that keep freed memory; it keeps its defaults")
    return took
