"""Which resident page to evict when the worker's page budget is full: small policy objects passed to the runtime.

Each ranks candidate pages; the highest rank goes first. ``FarthestNextUse`` is Belady's rule over the step trace
(PatrickStar's LatestAccessChunkEvictionPolicy); ``LeastRecentlyUsed`` needs no trace and serves the first step,
which records it, and inference.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol


class AccessHistory(Protocol):
    """What a policy may ask about a page."""

    def next_use(self, page: int) -> int:
        """Trace position of the page's next useful access (a large number: none, or its copy will be stale)."""

    def last_use(self, page: int) -> int:
        """Tick of the page's most recent access."""


class EvictionPolicy(ABC):
    @abstractmethod
    def rank(self, page: int, history: AccessHistory) -> int:
        """Eviction priority of a resident page: the highest is evicted first."""


class FarthestNextUse(EvictionPolicy):
    """Evict the page whose next use is farthest away (optimal for a known access sequence)."""

    def rank(self, page: int, history: AccessHistory) -> int:
        return history.next_use(page)


class LeastRecentlyUsed(EvictionPolicy):
    """Evict the page used longest ago."""

    def rank(self, page: int, history: AccessHistory) -> int:
        return -history.last_use(page)
