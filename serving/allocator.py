"""Keep freed heap memory in the server process instead of handing it back to the OS.

A model call allocates and frees the same buffers every time (activations, KV caches,
candidate tables: a few MB per batch). With glibc's defaults the larger ones are ``mmap``-ed
and unmapped per call, and freed space at the top of a heap is trimmed back to the OS, so
every call faults its pages in again and the kernel zeroes them (thousands of minor faults
per call: ``python -m benchmarks.bench_malloc``). Raising glibc's mmap and trim thresholds
keeps that memory in the process for the next call; the cost is that the process keeps its
peak heap (up to ``keep_mb`` of it free) rather than shrinking between bursts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["keep_freed_memory"]

log = logging.getLogger(__name__)

# mallopt(3) parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Larger blocks are still mmap-ed: a thread's malloc arena grows in heaps of 64 MB at most.
_MMAP_THRESHOLD_BYTES = 32 << 20


def keep_freed_memory(keep_mb: int) -> bool:
    """Tell glibc malloc to keep up to ``keep_mb`` MB of freed memory and to serve blocks below
    32 MB from its heaps; process-wide, for allocations made from now on.

    Returns False (and changes nothing) when ``keep_mb`` is 0 or the C library is not glibc.
    """
    if keep_mb < 0:
        raise ValueError(f"keep_mb must be >= 0 (0: the C library's defaults), got {keep_mb}")
    if keep_mb == 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only: other C libraries take other mallopt codes
    except (OSError, AttributeError, TypeError):
        log.info("not glibc (%s): malloc thresholds left at the C library's defaults", name)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, min(keep_mb << 20, 2**31 - 1)) == 1 and ok
    if not ok:
        log.warning("mallopt refused the malloc thresholds; left at glibc's defaults")
    return ok
