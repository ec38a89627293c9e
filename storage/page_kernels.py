"""Kernels that map row slots onto page frames: residency check, row location, page key encoding.

A table's row r lives in page r // rows_per_page at byte offset (r % rows_per_page) * row_bytes; a page
lives in an arena frame given by the table's page -> frame array (-1 when not resident). Kernels walk the
slots once (O(n), no sort), which keeps the all-hits path to two passes over the request.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.lib.stride_tricks import as_strided

from seraphim.storage.arena import MAX_COUNT

PAGE_KEY = np.dtype([("tid", ">u4"), ("page", ">u8")])  # LMDB key: big-endian so a table's pages sort by number


def page_keys(tid: int, pages: np.ndarray) -> list[bytes]:
    """12-byte LMDB keys (table id, page number) for `pages`."""
    rec = np.empty(len(pages), dtype=PAGE_KEY)
    rec["tid"] = tid
    rec["page"] = pages
    raw = rec.tobytes()
    return [raw[i : i + PAGE_KEY.itemsize] for i in range(0, len(raw), PAGE_KEY.itemsize)]


def table_prefix(tid: int) -> bytes:
    """Key prefix shared by all LMDB records of one table."""
    return int(tid).to_bytes(4, "big")


@njit(cache=True)
def pin_pages(slots, rows_per_page, page_frame, stamp, op, tick, frame_tick, page_count, frame_count, inc):
    """Stamp each distinct page once per op: count the access (`inc`, saturating), refresh (and so pin)
    resident frames, list missing pages.

    Returns (missing pages in first-seen order, number of distinct resident pages). Frames touched here
    carry `tick`, the newest value, which is what keeps them out of this op's eviction choice; their
    frame_count follows their page's new count.
    """
    missing = np.empty(slots.shape[0], dtype=np.int64)
    n_missing = 0
    n_hit = 0
    for i in range(slots.shape[0]):
        p = slots[i] // rows_per_page
        if stamp[p] != op:
            stamp[p] = op
            c = min(np.int64(page_count[p]) + inc, MAX_COUNT)
            page_count[p] = c
            f = page_frame[p]
            if f >= 0:
                frame_tick[f] = tick
                frame_count[f] = c
                n_hit += 1
            else:
                missing[n_missing] = p
                n_missing += 1
    return missing[:n_missing], n_hit


@njit(cache=True)
def locate(slots, rows_per_page, page_frame):
    """(frame, row-in-page) of each slot; the byte copy itself is numpy fancy indexing on row_view, which
    moves whole rows with memcpy (about 10x faster than a numba byte loop for 768-byte rows)."""
    frames = np.empty(slots.shape[0], dtype=np.int64)
    offsets = np.empty(slots.shape[0], dtype=np.int64)
    for i in range(slots.shape[0]):
        p = slots[i] // rows_per_page
        frames[i] = page_frame[p]
        offsets[i] = slots[i] - p * rows_per_page
    return frames, offsets


def row_view(arena: np.ndarray, rows_per_page: int, row_bytes: int) -> np.ndarray:
    """The arena seen as [frame, row-in-page, byte] for one row size (a view: writes land in the arena)."""
    return as_strided(
        arena, shape=(arena.shape[0], rows_per_page, row_bytes), strides=(arena.strides[0], row_bytes, 1),
        writeable=True,
    )


@njit(cache=True)
def slots_of_pages(pages, rows_per_page, n_rows):
    """All slots < n_rows held by `pages`, page after page (used to initialize fresh dense pages)."""
    total = 0
    for p in pages:
        total += max(0, min(rows_per_page, n_rows - p * rows_per_page))
    out = np.empty(total, dtype=np.int64)
    k = 0
    for p in pages:
        for s in range(p * rows_per_page, min((p + 1) * rows_per_page, n_rows)):
            out[k] = s
            k += 1
    return out


def frame_views(arena: np.ndarray, frames: np.ndarray) -> list[memoryview]:
    """Zero-copy byte views of rows of a 2-D uint8 array (arena frames, stage rows) for LMDB reads and writes:
    one memoryview slice each, cheaper than a numpy row object."""
    flat = memoryview(arena.reshape(-1))
    size = arena.shape[1]
    return [flat[f * size : (f + 1) * size] for f in frames.tolist()]
