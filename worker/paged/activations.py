"""The saved activations of a paged step: counted, traced, and (given a memory plan) placed in one buffer.

Every tensor autograd saves that is not a weight goes through ``SavedActivations.pack``:

- its storage's bytes count as alive while autograd holds any view of it (the step's non-model memory, which the
  step trace records at each page access);
- a recording step logs each storage's lifetime, from the first save of a view of it to the release of the last,
  numbered in the order they were first saved: the trace the scheduler's planner turns into offsets (MEMO §4.2);
- with a plan installed, the i-th storage a later step saves is copied to its planned offset in one preallocated
  buffer, and autograd keeps that copy instead of the allocator's block (nothing saved fragments the allocator).
  A storage unlike the plan's (another size, or past its count) stays where it was and counts as unplanned.

Storages are told apart by address while they live (a finalizer on the original storage forgets the address when
it is freed, so a new allocation at the same address is a new storage).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field

import torch

ALIGN = 64  # planned offsets and sizes are rounded to this many bytes


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass(eq=False)
class _Storage:
    key: int  # the original storage's address while it lives
    index: int  # order of first save in this step
    nbytes: int
    refs: int = 0
    arena_offset: int | None = None  # where its bytes were copied (a planned step)


class SavedTensor:
    """What autograd holds for a saved activation; releasing it ends the storage's lifetime once all are gone."""

    __slots__ = ("tensor", "_owner", "_entry")

    def __init__(self, tensor: torch.Tensor, owner: "SavedActivations", entry: "_Storage") -> None:
        self.tensor, self._owner, self._entry = tensor, owner, entry

    def __del__(self) -> None:
        self._owner._drop(self._entry)


@dataclass
class ActivationPlan:
    """Offsets (bytes) of the saved storages in save order, and the buffer's size."""

    offsets: list[int]
    sizes: list[int]
    peak: int


@dataclass
class SavedActivationsStats:
    bytes: int = 0
    peak_bytes: int = 0
    planned: int = 0
    unplanned: int = 0
    trace: list[tuple[int, int, int]] = field(default_factory=list)  # (lower, upper, size) of the recording step


class SavedActivations:
    """Counts, traces and places one model's saved activations."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stats = SavedActivationsStats()
        self._lock = threading.Lock()
        self._live: dict[int, _Storage] = {}  # address of a live original storage -> its entry
        self._tick = 0
        self._count = 0
        self._recording: list[list[int]] | None = None  # [lower, upper, size] per storage, in save order
        self._plan: ActivationPlan | None = None
        self._arena: torch.Tensor | None = None

    # -- a step ------------------------------------------------------------------------------------------------
    def begin_step(self, record: bool) -> None:
        self._count = 0
        self._recording = [] if record else None

    def end_step(self) -> None:
        """Close the recording: storages still held end at the last tick."""
        if self._recording is not None:
            self._tick += 1
            for entry in self._recording:
                if entry[1] < 0:
                    entry[1] = self._tick
            start = min((e[0] for e in self._recording), default=0)
            self.stats.trace = [(lo - start, hi - start, size) for lo, hi, size in self._recording]
            self._recording = None

    def install(self, plan: ActivationPlan) -> None:
        """Place later steps' saved storages at the plan's offsets in one buffer of plan.peak bytes."""
        self._plan = plan
        self._arena = torch.empty(plan.peak, dtype=torch.uint8, device=self.device)

    @property
    def planned_bytes(self) -> int:
        return 0 if self._plan is None else self._plan.peak

    # -- autograd hooks ----------------------------------------------------------------------------------------
    def pack(self, t: torch.Tensor) -> SavedTensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        with self._lock:
            entry = self._live.get(key)
            if entry is None:
                entry = self._live[key] = _Storage(key, self._count, storage.nbytes())
                self._count += 1
                self._tick += 1
                self.stats.bytes += entry.nbytes
                self.stats.peak_bytes = max(self.stats.peak_bytes, self.stats.bytes)
                if self._recording is not None:
                    self._recording.append([self._tick, -1, _aligned(entry.nbytes)])
                entry.arena_offset = self._planned_offset(entry)
                weakref.finalize(storage, self._forget, entry)
            entry.refs += 1
        if entry.arena_offset is not None:
            t = self._in_arena(t, storage, entry)
        return SavedTensor(t, self, entry)

    def _planned_offset(self, entry: _Storage) -> int | None:
        plan = self._plan
        if plan is None:
            return None
        if entry.index < len(plan.sizes) and plan.sizes[entry.index] == _aligned(entry.nbytes):
            self.stats.planned += 1
            return plan.offsets[entry.index]
        self.stats.unplanned += 1
        return None

    def _in_arena(self, t: torch.Tensor, storage: torch.UntypedStorage, entry: _Storage) -> torch.Tensor:
        """t as a view of its storage's planned copy in the buffer (the copy is made on the first save)."""
        offset = entry.arena_offset
        slot = self._arena[offset:offset + entry.nbytes]
        if entry.refs == 1:
            slot.copy_(torch.empty(0, dtype=torch.uint8, device=t.device).set_(storage))
        placed = torch.empty(0, dtype=t.dtype, device=t.device)
        placed.set_(self._arena.untyped_storage(), offset // t.element_size() + t.storage_offset(), t.size(),
                    t.stride())
        return placed

    def unpack(self, saved: SavedTensor) -> torch.Tensor:
        return saved.tensor

    def _drop(self, entry: _Storage) -> None:
        with self._lock:
            entry.refs -= 1
            if entry.refs:
                return
            self._tick += 1
            self.stats.bytes -= entry.nbytes
            if self._recording is not None and entry.index < len(self._recording):
                self._recording[entry.index][1] = self._tick
            self._forget_address(entry)

    def _forget(self, entry: _Storage) -> None:
        """The original storage was freed (a placed one, while its copy is still held): a new storage may take its
        address."""
        with self._lock:
            self._forget_address(entry)

    def _forget_address(self, entry: _Storage) -> None:
        if self._live.get(entry.key) is entry:
            del self._live[entry.key]
