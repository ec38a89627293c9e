"""The slower tier MEMO swaps activations to: host memory within a byte budget, then files on disk.

``put`` hands a tensor over and returns a handle at once; a tensor past the budget is written to a spill file by a
background writer (the swap-out overlaps compute), and ``prefetch`` reads one back on a background reader ahead of
``get`` (the swap-in overlaps the backward of the layer before). On CPU the tensors kept in memory are not copied:
the tier holds them instead of autograd, and their bytes count against the tier's budget, not the compute side's.
With CUDA, ``put`` copies to pinned host memory on a copy stream and ``get`` copies back.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class TierStats:
    put_bytes: int = 0
    spilled_bytes: int = 0
    read_back_bytes: int = 0
    peak_memory_bytes: int = 0
    wait_s: float = 0.0  # time get() waited for a tensor still being written or read


@dataclass
class _Entry:
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    nbytes: int
    tensor: torch.Tensor | None = None  # in memory
    path: Path | None = None  # on disk
    writing: Future | None = None
    reading: Future | None = None


class ActivationTier:
    """Swapped activations: memory up to budget_bytes, the rest in spill files under spill_dir."""

    def __init__(self, budget_bytes: int, spill_dir: str | os.PathLike | None = None) -> None:
        if budget_bytes < 0:
            raise ValueError(f"the tier's budget must be >= 0 bytes, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self._dir = Path(spill_dir) if spill_dir else Path(tempfile.mkdtemp(prefix="seraphim-tier-"))
        self._dir.mkdir(parents=True, exist_ok=True)
        self._entries: dict[int, _Entry] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._memory_bytes = 0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tier-write")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tier-read")
        self.stats = TierStats()

    @property
    def memory_bytes(self) -> int:
        return self._memory_bytes

    def put(self, t: torch.Tensor) -> int:
        """Take a tensor; returns its handle."""
        host = t.detach()
        if host.device.type == "cuda":
            host = host.to("cpu", non_blocking=True).pin_memory()
        entry = _Entry(tuple(t.shape), t.dtype, t.device, t.numel() * t.element_size())
        handle = next(self._ids)
        with self._lock:
            self._entries[handle] = entry
            self.stats.put_bytes += entry.nbytes
            if self._memory_bytes + entry.nbytes <= self.budget_bytes:
                entry.tensor = host
                self._memory_bytes += entry.nbytes
                self.stats.peak_memory_bytes = max(self.stats.peak_memory_bytes, self._memory_bytes)
                return handle
            entry.path = self._dir / f"{handle}.bin"
            entry.writing = self._writer.submit(self._write, entry, host.contiguous())
            self.stats.spilled_bytes += entry.nbytes
        return handle

    def prefetch(self, handle: int) -> None:
        """Start reading a spilled tensor back, so get() finds it in memory."""
        with self._lock:
            entry = self._entries.get(handle)
            if entry is None or entry.tensor is not None or entry.reading is not None:
                return
            entry.reading = self._reader.submit(self._read, entry)

    def get(self, handle: int) -> torch.Tensor:
        """The tensor (on its original device); blocks while it is still written or read."""
        self.prefetch(handle)
        with self._lock:
            entry = self._entries[handle]
        started = time.perf_counter()
        value = entry.tensor if entry.reading is None else entry.reading.result()
        self.stats.wait_s += time.perf_counter() - started
        return value if entry.device.type == "cpu" else value.to(entry.device, non_blocking=True)

    def free(self, handle: int) -> None:
        with self._lock:
            entry = self._entries.pop(handle, None)
            if entry is None:
                return
            if entry.tensor is not None:
                self._memory_bytes -= entry.nbytes
        if entry.path is not None:
            if entry.writing is not None:
                entry.writing.result()
            entry.path.unlink(missing_ok=True)

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)
        for handle in list(self._entries):
            self.free(handle)

    def _write(self, entry: _Entry, host: torch.Tensor) -> None:
        host.view(-1).view(torch.uint8).numpy().tofile(entry.path)

    def _read(self, entry: _Entry) -> torch.Tensor:
        if entry.writing is not None:
            entry.writing.result()
        raw = np.fromfile(entry.path, dtype=np.uint8)
        self.stats.read_back_bytes += raw.nbytes
        return torch.from_numpy(raw).view(entry.dtype).view(entry.shape)
