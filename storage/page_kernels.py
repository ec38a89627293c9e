"""Kernels that map row slots onto page frames: residency check, row location, page key encoding.

A table's row r lives in page r // rows_per_page at byte offset (r % rows_per_page) * row_bytes; a page
lives in an arena frame given by the table's page -> frame array (-1 when not resident). Kernels walk the
slots once (O(n), no sort), which keeps the all-hits path to two passes over the request: one pins the
pages, one moves each row with memcpy between its frame and the caller's buffer.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

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


@intrinsic
def _copy_bytes(typingctx, dst, dst_at, src, src_at, size):  # pragma: no cover - compiled
    """memcpy(dst.data + dst_at, src.data + src_at, size) for C-contiguous arrays, offsets in bytes: a row moves
    as one libc memcpy (a numba loop moves bytes one at a time, 5-10x slower for rows of a few hundred bytes)."""

    def codegen(context, builder, signature, args):
        d = context.make_array(signature.args[0])(context, builder, args[0])
        s = context.make_array(signature.args[2])(context, builder, args[2])
        dst_ptr = builder.gep(builder.bitcast(d.data, cgutils.voidptr_t), [args[1]])
        src_ptr = builder.gep(builder.bitcast(s.data, cgutils.voidptr_t), [args[3]])
        cgutils.raw_memcpy(builder, dst_ptr, src_ptr, args[4], 1)
        return context.get_dummy_value()

    return types.void(dst, dst_at, src, src_at, size), codegen


@njit(cache=True, nogil=True)
def gather_rows(arena, slots, rows_per_page, row_bytes, page_frame, out):  # pragma: no cover - compiled
    """out[i] = the first out.shape[1] bytes of slot i's row (resident pages): whole rows, or only the weights of
    [weights | state] rows, copied from the frames straight into the caller's buffer (a pull's reply)."""
    width = out.shape[1]
    page_bytes = arena.shape[1]
    for i in range(slots.shape[0]):
        s = slots[i]
        p = s // rows_per_page
        _copy_bytes(out, i * width, arena, page_frame[p] * page_bytes + (s - p * rows_per_page) * row_bytes, width)


@njit(cache=True, nogil=True)
def scatter_rows(arena, slots, rows_per_page, row_bytes, page_frame, rows, dirty, frame_seq, seq):  # pragma: no cover
    """Slot i's row = rows[i] (resident pages); their frames become dirty at write sequence `seq`."""
    page_bytes = arena.shape[1]
    for i in range(slots.shape[0]):
        s = slots[i]
        p = s // rows_per_page
        f = page_frame[p]
        _copy_bytes(arena, f * page_bytes + (s - p * rows_per_page) * row_bytes, rows, i * row_bytes, row_bytes)
        dirty[f] = True
        frame_seq[f] = seq


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
