"""What a process reports about itself: peak resident memory, read the same way by PS shards and workers."""

from __future__ import annotations

import resource


def peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
