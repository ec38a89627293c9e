"""What a process reports about itself (peak resident memory, read the same way by PS shards and workers), and the
OpenMP policy and heap policy a worker process starts with."""

from __future__ import annotations

import ctypes
import os
import resource

from seraphim.proto.errors import InvalidArgument

#: OpenMP settings of a worker process where its environment has none: compute threads that finish a parallel
#: region sleep instead of spinning, so the cores go to the PS client's I/O threads and to the PS shards beside the
#: worker (lm-medium, batch 8, beside 2 PS shards on 2 cores: 3.3 -> 3.0 s per step; plain PyTorch alone, 1.69 ->
#: 1.75 s: spinning only pays when nothing else wants the cores).
WORKER_OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def apply_worker_openmp_env() -> None:
    """Set WORKER_OPENMP_ENV where the environment has no value; it must run before torch loads OpenMP."""
    for name, value in WORKER_OPENMP_ENV.items():
        os.environ.setdefault(name, value)


#: "1" makes a worker process keep the memory it frees (:func:`keep_freed_memory`); "0" or unset: glibc's defaults.
KEEP_FREED_MEMORY_ENV = "SERAPHIM_KEEP_FREED_MEMORY"
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameters (malloc.h)
_INT_MAX = 2**31 - 1


def glibc_version() -> str | None:
    """glibc's version string ("glibc 2.36"), or None under another C library; asks glibc itself (confstr)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") or None
    except (AttributeError, ValueError, OSError):  # no confstr (Windows) or no such name (other C libraries)
        return None


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory this process frees for its next allocations; True when applied.

    glibc hands blocks above 32 MiB back to the kernel when they are freed, so every training step faults in and
    zeroes its activations afresh, the largest cost after the matrix products on a VM. Here every block comes from
    one heap (one arena, no mmap) trimmed only above 2 GiB. The process then holds its peak footprint, which a memory
    limit shared with the page cache pays for, hence opt-in (figures in the README's LM section). Other C libraries
    keep their own policy (False)."""
    if glibc_version() is None:
        return False
    libc = ctypes.CDLL(None)
    return all(libc.mallopt(param, value) == 1 for param, value in (
        (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX)))


def apply_worker_heap_policy() -> str | None:
    """Apply the heap policy KEEP_FREED_MEMORY_ENV asks for; a line for the worker's log when it asks for one."""
    value = os.environ.get(KEEP_FREED_MEMORY_ENV, "0").strip()
    if value not in ("0", "1"):
        raise InvalidArgument(f"{KEEP_FREED_MEMORY_ENV}={value!r}: use 1 (keep freed memory) or 0 (glibc's defaults)")
    if value == "0":
        return None
    if keep_freed_memory():
        return (f"{KEEP_FREED_MEMORY_ENV}=1: this process keeps the memory it frees (one arena, no mmap, trim above "
                f"2 GiB)")
    return f"{KEEP_FREED_MEMORY_ENV}=1 ignored: the C library here is not glibc, whose malloc it tunes"


def peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
