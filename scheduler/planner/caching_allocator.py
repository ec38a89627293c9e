"""An emulation of PyTorch's CUDA caching allocator, to say what a trace would reserve without a plan.

    stats = replay_caching_allocator(problem)   # reserved_peak, allocated_peak, requested_peak, addresses

The rules modelled are those of c10/cuda/CUDACachingAllocator.cpp (PyTorch 2.x, native backend, default
settings: one stream, no expandable segments, max_split_size unlimited, no garbage-collection threshold):

- ``round_size``: every request is rounded up to a multiple of kMinBlockSize = 512 bytes (at least 512).
- ``get_pool``: rounded sizes <= kSmallSize = 1 MiB go to the small pool, larger ones to the large pool.
- ``get_free_block``: best fit, the free block of the request's pool with the smallest size >= the request,
  ties to the lowest address (the pool is a set ordered by (stream, size, address); ``lower_bound``).
- ``get_allocation_size``: with no fitting free block, a new segment (cudaMalloc) of kSmallBuffer = 2 MiB for the
  small pool, kLargeBuffer = 20 MiB for requests under kMinLargeAlloc = 10 MiB, else the request rounded up to
  kRoundLarge = 2 MiB.
- ``should_split``: the block is split when the remainder is >= 512 bytes (small pool) or > 1 MiB (large pool);
  otherwise the whole block is handed out (its slack counts as allocated, as in ``allocated_bytes``).
- ``free_block`` / ``try_merge_blocks``: a freed block merges with its free neighbours inside its segment.
- Cached segments are never returned to the device (``release_cached_blocks`` runs only when cudaMalloc fails;
  the emulated device has no limit), so the reserved bytes only grow.

Not modelled: several streams and ``recordStream``, CUDA graph pools, expandable segments, the
``PYTORCH_CUDA_ALLOC_CONF`` options, and OOM recovery. A zero-byte request allocates nothing (as in PyTorch).

Replay order: events in time order, frees before allocations at the same time (half-open lifetimes), ties in the
trace's row order. Segments are laid end to end in one address space, so `addresses` is itself a valid plan
whose peak is at most `reserved_peak`.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from seraphim.scheduler.planner.problem import Problem, events

MIN_BLOCK = 512
SMALL_SIZE = 1 << 20
SMALL_BUFFER = 2 << 20
LARGE_BUFFER = 20 << 20
MIN_LARGE_ALLOC = 10 << 20
ROUND_LARGE = 2 << 20


@dataclass(frozen=True)
class AllocatorStats:
    reserved_peak: int  #: peak (= final) bytes in segments
    allocated_peak: int  #: peak bytes in blocks handed out (rounded, with unsplit slack): torch's allocated_bytes
    requested_peak: int  #: peak bytes requested: the trace's load
    segments: int
    addresses: np.ndarray = field(repr=False)  #: per buffer, in the segments laid end to end


@dataclass(eq=False)
class _Block:
    address: int
    size: int
    small: bool
    allocated: bool = False
    prev: "_Block | None" = None
    next: "_Block | None" = None

    @property
    def key(self) -> tuple[int, int]:
        return (self.size, self.address)


class CachingAllocator:
    """The allocator's state: segments, and per pool the free blocks sorted by (size, address)."""

    def __init__(self) -> None:
        self.free_blocks: dict[bool, list[tuple[int, int]]] = {True: [], False: []}  # small? -> sorted keys
        self.block_at: dict[int, _Block] = {}  # address -> block, free or not
        self.reserved = self.allocated = self.allocated_peak = self.segments = 0

    @staticmethod
    def round_size(size: int) -> int:
        return max(MIN_BLOCK, -(-size // MIN_BLOCK) * MIN_BLOCK)

    @staticmethod
    def segment_size(rounded: int) -> int:
        if rounded <= SMALL_SIZE:
            return SMALL_BUFFER
        if rounded < MIN_LARGE_ALLOC:
            return LARGE_BUFFER
        return -(-rounded // ROUND_LARGE) * ROUND_LARGE

    def malloc(self, size: int) -> int:
        """The address of a new block of at least `size` bytes (size > 0)."""
        rounded = self.round_size(size)
        small = rounded <= SMALL_SIZE
        pool = self.free_blocks[small]
        k = bisect.bisect_left(pool, (rounded, -1))
        if k < len(pool):
            block = self.block_at[pool.pop(k)[1]]
        else:
            block = _Block(self.reserved, self.segment_size(rounded), small)
            self.block_at[block.address] = block
            self.reserved += block.size
            self.segments += 1
        remaining = block.size - rounded
        if remaining >= MIN_BLOCK if small else remaining > SMALL_SIZE:
            rest = _Block(block.address + rounded, remaining, small, prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = rest
            block.next, block.size = rest, rounded
            self.block_at[rest.address] = rest
            bisect.insort(pool, rest.key)
        block.allocated = True
        self.allocated += block.size
        self.allocated_peak = max(self.allocated_peak, self.allocated)
        return block.address

    def free(self, address: int) -> None:
        block = self.block_at[address]
        block.allocated = False
        self.allocated -= block.size
        pool = self.free_blocks[block.small]
        for neighbour in (block.prev, block.next):
            if neighbour is None or neighbour.allocated:
                continue
            pool.pop(bisect.bisect_left(pool, neighbour.key))
            if neighbour is block.prev:
                del self.block_at[block.address]
                block.address, block.prev = neighbour.address, neighbour.prev
                if neighbour.prev is not None:
                    neighbour.prev.next = block
                self.block_at[block.address] = block
            else:
                del self.block_at[neighbour.address]
                block.next = neighbour.next
                if neighbour.next is not None:
                    neighbour.next.prev = block
            block.size += neighbour.size
        bisect.insort(pool, block.key)


def replay_caching_allocator(problem: Problem) -> AllocatorStats:
    """Replay the trace's allocations and frees in time order through the emulated allocator."""
    allocator = CachingAllocator()
    addresses = np.zeros(len(problem), np.int64)
    requested = requested_peak = 0
    buffers, signs = events(problem.lower, problem.upper)
    for i, sign in zip(buffers.tolist(), signs.tolist()):
        size = int(problem.size[i])
        if size == 0:
            continue
        if sign > 0:
            addresses[i] = allocator.malloc(size)
            requested += size
            requested_peak = max(requested_peak, requested)
        else:
            allocator.free(int(addresses[i]))
            requested -= size
    return AllocatorStats(allocator.reserved, allocator.allocated_peak, requested_peak, allocator.segments, addresses)
