"""The worker's working set of model pages: a byte budget of resident pages, fetches in flight, eviction by policy.

A page is fetched from the PS table's rows at a minimum version (the PS answers once its rows hold it) and kept
in the compute precision. Prefetches run on a pool of this cache's own, at most ``max_in_flight`` at once: a
prefetch of the next step's version may wait on the PS for other workers' gradients, and must never hold a thread
that the pushes of our own gradients need (they use the PS client's pool). A page needed now that is not resident
is fetched on demand, on the caller's thread, whatever is in flight. The table's pages never straddle two PS
shards (the paged model pads the table so), so a fetch is one request to one shard. Resident pages plus fetches in flight
stay within the budget: to make room, the unpinned page the policy ranks highest is dropped (pages are read-only
here, so eviction writes nothing back). A dropped page's memory is freed once no tensor views it any longer: a
fetch always lands in a fresh tensor, so a view handed out earlier never sees another page's bytes.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from seraphim.worker.client import DenseTable
from seraphim.worker.paged.layout import page_keys
from seraphim.worker.paged.policy import AccessHistory, EvictionPolicy
from seraphim.worker.paged.transfer import PageTransfer


@dataclass
class _Resident:
    data: torch.Tensor
    version: int
    ready: Any
    pins: int = 0
    last_use: int = 0


@dataclass
class _Fetch:
    future: Future
    min_version: int


@dataclass
class PageStats:
    """What the working set did: bytes and pages moved, time spent waiting, fetches that were ahead of need."""

    pulled_pages: int = 0
    pulled_bytes: int = 0
    demand_fetches: int = 0
    prefetch_hits: int = 0
    stall_s: float = 0.0
    evictions: int = 0
    max_resident_bytes: int = 0
    in_flight_samples: list[int] = field(default_factory=list)

    @property
    def mean_in_flight(self) -> float:
        return float(np.mean(self.in_flight_samples)) if self.in_flight_samples else 0.0


class PageCache:
    """Resident pages of one paged model on one worker."""

    def __init__(self, table: DenseTable, rows_per_page: int, page_numel: int, transfer: PageTransfer,
                 budget_bytes: int, max_in_flight: int, policy: EvictionPolicy, history: AccessHistory,
                 wait_s: float) -> None:
        self.table = table
        self.rows_per_page = rows_per_page
        self.page_numel = page_numel
        self.transfer = transfer
        self.page_bytes = page_numel * torch.empty(0, dtype=transfer.dtype).element_size()
        self.budget_bytes = budget_bytes
        self.max_in_flight = max_in_flight
        self.policy = policy
        self.history = history
        self.wait_s = wait_s
        self.stats = PageStats()
        self._resident: dict[int, _Resident] = {}
        self._fetching: dict[int, _Fetch] = {}
        self._lock = threading.RLock()
        self._tick = 0
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="page-prefetch")
        self._by_storage: dict[int, int] = {}  # storage pointer of a resident page's tensor -> page

    # -- questions ---------------------------------------------------------------------------------------------
    def resident_version(self, page: int) -> int | None:
        with self._lock:
            entry = self._resident.get(page)
            return None if entry is None else entry.version

    def fetching_version(self, page: int) -> int | None:
        with self._lock:
            fetch = self._fetching.get(page)
            return None if fetch is None else fetch.min_version

    def page_of(self, t: torch.Tensor) -> int | None:
        """The resident page whose tensor `t` views, if any (how saved weights are told from activations)."""
        with self._lock:
            return self._by_storage.get(t.untyped_storage().data_ptr())

    def last_use(self, page: int) -> int:
        with self._lock:
            entry = self._resident.get(page)
            return -1 if entry is None else entry.last_use

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._fetching)

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return (len(self._resident) + len(self._fetching)) * self.page_bytes

    def resident_pages(self) -> list[int]:
        with self._lock:
            return sorted(self._resident)

    # -- pages ---------------------------------------------------------------------------------------------------
    def get(self, page: int, min_version: int, pin: bool = False) -> tuple[torch.Tensor, int]:
        """The page at min_version or later (and its version), waiting for it; pinned pages are never evicted."""
        with self._lock:
            self.stats.in_flight_samples.append(len(self._fetching))
            entry = self._resident.get(page)
            fetch = self._fetching.get(page)
            if entry is not None and entry.version >= min_version:
                self.stats.prefetch_hits += 1
                return self._use(page, entry, pin)
            demand = fetch is None or fetch.min_version < min_version
            if demand:
                self.stats.demand_fetches += 1
                self._make_room(1, before=None)
                fetch = _Fetch(Future(), min_version)
                self._fetching[page] = fetch
                self._note_usage()
            else:
                self.stats.prefetch_hits += 1
        started = time.perf_counter()
        try:
            if demand:
                try:
                    fetch.future.set_result(self._pull(page, min_version))
                except BaseException as exc:
                    fetch.future.set_exception(exc)
                    with self._lock:
                        self._fetching.pop(page, None)
                    raise
            fetch.future.result()
        finally:
            self.stats.stall_s += time.perf_counter() - started
        with self._lock:
            self._land(page, fetch)
            return self._use(page, self._resident[page], pin)

    def prefetch(self, page: int, min_version: int, use_position: int | None) -> bool:
        """Start fetching a page needed at trace position use_position, if a fetch slot is free and room can be made
        by evicting only pages needed later than that (None: any page the policy ranks first). False: it was not
        started."""
        with self._lock:
            if len(self._fetching) >= self.max_in_flight or not self._make_room(1, before=use_position):
                return False
            self._start(page, min_version)
            return True

    def unpin(self, page: int) -> None:
        with self._lock:
            self._resident[page].pins -= 1

    def unpin_all(self) -> None:
        with self._lock:
            for entry in self._resident.values():
                entry.pins = 0

    def close(self) -> None:
        """Forget every resident page and stop the prefetch pool (a fetch still waiting on the PS ends with the
        client's channels)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._fetching.clear()
            self._resident.clear()
            self._by_storage.clear()

    # -- internals -----------------------------------------------------------------------------------------------
    def _use(self, page: int, entry: _Resident, pin: bool) -> tuple[torch.Tensor, int]:
        self._tick += 1
        entry.last_use = self._tick
        if pin:
            entry.pins += 1
        self.transfer.ready(entry.ready)
        return entry.data, entry.version

    def _pull(self, page: int, min_version: int) -> tuple[np.ndarray, np.ndarray]:
        return self.table.pull_versioned(page_keys(page, self.rows_per_page), min_version=min_version,
                                         wait_s=self.wait_s)

    def _start(self, page: int, min_version: int) -> _Fetch:
        future = self._pool.submit(self._pull, page, min_version)
        fetch = self._fetching[page] = _Fetch(future, min_version)
        future.add_done_callback(lambda f: self._landed_callback(page, fetch))
        self._note_usage()
        return fetch

    def _landed_callback(self, page: int, fetch: _Fetch) -> None:
        if fetch.future.exception() is None:
            with self._lock:
                self._land(page, fetch)

    def _land(self, page: int, fetch: _Fetch) -> None:
        """Move a finished fetch into the resident set (once; the waiter and the callback may both call this)."""
        if self._fetching.get(page) is not fetch:
            return
        rows, versions = fetch.future.result()
        del self._fetching[page]
        version = int(versions.min())
        if version != int(versions.max()):
            raise RuntimeError(f"page {page} of {self.table.name!r} came back with rows at versions "
                               f"{int(versions.min())}..{int(versions.max())}; a page's rows are updated together")
        data, ready = self.transfer.to_device(rows)
        old = self._resident.get(page)
        if old is not None:
            self._by_storage.pop(old.data.untyped_storage().data_ptr(), None)
        self._resident[page] = _Resident(data, version, ready, pins=old.pins if old else 0,
                                         last_use=old.last_use if old else 0)
        self._by_storage[data.untyped_storage().data_ptr()] = page
        self.stats.pulled_pages += 1
        self.stats.pulled_bytes += rows.nbytes
        self._note_usage()

    def _make_room(self, pages: int, before: int | None) -> bool:
        """Evict unpinned pages, highest rank first, until `pages` more fit; with `before`, only pages whose next
        use comes after that position (a prefetch must not push out what is needed sooner)."""
        need = (len(self._resident) + len(self._fetching) + pages) * self.page_bytes - self.budget_bytes
        if need <= 0:
            return True
        candidates = [p for p, e in self._resident.items() if e.pins == 0 and p not in self._fetching]
        ranked = sorted(candidates, key=lambda p: self.policy.rank(p, self.history), reverse=True)
        victims = []
        for page in ranked:
            if need <= 0:
                break
            if before is not None and self.history.next_use(page) <= before:
                break
            victims.append(page)
            need -= self.page_bytes
        if need > 0 and before is not None:
            return False
        for page in victims:
            entry = self._resident.pop(page)
            self._by_storage.pop(entry.data.untyped_storage().data_ptr(), None)
            self.stats.evictions += 1
        return True

    def _note_usage(self) -> None:
        self.stats.max_resident_bytes = max(self.stats.max_resident_bytes,
                                            (len(self._resident) + len(self._fetching)) * self.page_bytes)
