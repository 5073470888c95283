"""serving.allocator: freed memory stays mapped for the next call (glibc only)."""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys

import pytest

from serving.allocator import keep_freed_memory

# A child process (the thresholds are process-wide and cannot be put back): rounds of four
# 12 MB blocks, every page written, then all freed, as a model call's buffers are. glibc's
# dynamic thresholds serve them from the heap after the first round but trim the 48 MB freed
# top (over twice the 12 MB block) back to the OS, so each round faults every page in again.
CHILD = """
import ctypes, json, resource, sys
from serving.allocator import keep_freed_memory
kept = keep_freed_memory(int(sys.argv[1]))
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 12 << 20
def one_round():
    blocks = [libc.malloc(size) for _ in range(4)]
    for block in blocks:
        ctypes.memset(block, 1, size)
    for block in blocks:
        libc.free(block)
one_round()
one_round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    one_round()
print(json.dumps({"kept": kept, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5}))
"""

glibc_only = pytest.mark.skipif(
    not (ctypes.util.find_library("c") or "").startswith("libc.so"), reason="glibc malloc thresholds"
)


def _faults_per_round(keep_mb: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(keep_mb)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_kept_memory_is_not_faulted_in_again() -> None:
    default = _faults_per_round(0)
    kept = _faults_per_round(1024)
    assert default["kept"] is False and kept["kept"] is True
    pages = 4 * (12 << 20) // 4096  # 12,288 pages written per round
    # Defaults: the freed blocks go back to the OS, so most pages fault again every round.
    assert default["faults"] > pages / 2
    # Kept: the same pages are reused; only a handful of faults remain (the interpreter's own).
    assert kept["faults"] < pages / 50


def test_settings_are_checked() -> None:
    assert keep_freed_memory(0) is False  # 0: the C library's defaults, nothing to do
    with pytest.raises(ValueError, match="keep_mb must be >= 0.*-1"):
        keep_freed_memory(-1)
