"""Compiled depth-first search for "do these buffers fit under capacity C?" over canonical solutions.

The ideas are MiniMalloc's (Moffitt, ASPLOS 2023, google/minimalloc); this is our own numba code:

- Canonical solutions. Every plan can be pushed down until each buffer rests on a conflicting one (or on 0), so
  it suffices to place buffers in non-decreasing (offset, preorder rank) order, each at its lowest feasible offset
  `min_offset` (the top of its placed conflicting buffers). A candidate below the last placement, or at the same
  offset but earlier in the preorder, is skipped: that order is searched in another branch.
- Dominance. If an unplaced buffer could rest at min_offset with its top at h, placing anything at or above h
  first would leave a hole under it that it could drop into, so only candidates with offset < h are tried.
- Section inference. Time is cut into sections; a section's unplaced buffers must stack above its floor (its
  highest placed top, at least the lowest min_offset among them, at least the last placement's offset), so
  floor + their total size > C prunes the node.
- Hatless pruning. A placement that raises no unplaced buffer's min_offset touched nothing the rest depends on:
  if the rest fails after it, it fails after any other choice too.
- Dynamic decomposition. When no unplaced buffer crosses a section boundary any more, the two sides are solved
  one after the other, each from a fresh canonical start; a failure on one side then never re-searches the
  other.

Times and sizes are int64 (sizes divided by their gcd by the caller). `SearchData` is read-only, `SearchState`
is mutated and restored through two undo trails: along one path each (placed, unplaced) conflicting pair raises a
min_offset at most once and each placed buffer sets its own sections' floors once, so trails of len(adj) and
sum(spans) rows never overflow. Status codes: FOUND, NOT_FOUND (exhausted: a proof of infeasibility), ABORTED
(the node budget is spent).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

FOUND, NOT_FOUND, ABORTED = 0, 1, 2
NODES, MIN_TRAIL, FLOOR_TRAIL, STAMP = 0, 1, 2, 3  # indices into SearchState.counters
WIDTH, AREA, TOTAL = 0, 1, 2  # preorder keys, all descending
_INF = np.int64(1) << 62


class SearchData(NamedTuple):
    """The instance: sizes, lifetime lengths, section spans [first, end), the conflict graph (CSR), each
    section's buffers, and the buffers by first section."""

    size: np.ndarray
    width: np.ndarray
    first: np.ndarray
    end: np.ndarray
    adj_ptr: np.ndarray
    adj: np.ndarray
    sec_ptr: np.ndarray
    sec_members: np.ndarray
    first_ptr: np.ndarray  # buffers whose first section is s: by_first[first_ptr[s]:first_ptr[s + 1]]
    by_first: np.ndarray


class SearchState(NamedTuple):
    offset: np.ndarray  # -1 while unplaced
    min_offset: np.ndarray
    floor: np.ndarray  # per section
    total: np.ndarray  # per section: sizes of its unplaced buffers
    cut: np.ndarray  # per boundary s|s+1: unplaced buffers alive on both sides
    solution: np.ndarray
    min_trail: np.ndarray  # (buffer, old min_offset) rows
    floor_trail: np.ndarray  # (section, old floor) rows
    affected: np.ndarray  # scratch: sections whose floor may rise
    affected_stamp: np.ndarray
    counters: np.ndarray


_PIECES, _NODE = 0, 1  # frame kinds
_ENTER, _TRY = 0, 1  # node stages
_NONE = -1  # no child result pending
(_KIND, _STAGE, _LO, _HI, _PART, _PART_LEN, _LAST_OFFSET, _LAST_RANK, _CAND, _CAND_LEN, _CAND_POS, _BUFFER,
 _MIN_MARK, _FLOOR_MARK, _HATLESS, _NEXT, _PART_TOP, _CAND_TOP) = range(18)


@njit(cache=True)
def decide(data, state, capacity, heuristic):
    """Does everything fit under `capacity`? FOUND leaves the offsets in state.solution.

    An explicit stack of frames: a node frame owns the canonical candidates of one search node and the buffer it
    placed last; a pieces frame walks [lo, hi) piece by piece (split at boundaries no unplaced buffer crosses) and
    starts a node frame on each piece's buffers, preordered. Parts and candidate lists live in two pools that
    grow and shrink with the stack. An ABORTED return leaves the state inconsistent: start again from a fresh one.
    """
    n = len(data.size)
    frames = np.zeros((2 * n + 4, 18), np.int64)
    parts = np.empty(2 * n + 16, np.int64)
    cand_rank = np.empty(2 * n + 16, np.int64)
    cand_offset = np.empty(2 * n + 16, np.int64)
    part_top = cand_top = 0
    frames[0, _KIND], frames[0, _LO], frames[0, _HI], frames[0, _NEXT] = _PIECES, 0, len(state.floor), 0
    depth, result = 1, _NONE
    while depth > 0:
        f = frames[depth - 1]
        if f[_KIND] == _PIECES:
            if result != _NONE:
                if result != FOUND:
                    depth -= 1
                    continue
                result = _NONE
            start, hi = f[_NEXT], f[_HI]
            if start >= hi:
                depth, result = depth - 1, FOUND
                continue
            s = start
            while s + 1 < hi and state.cut[s] != 0:
                s += 1
            f[_NEXT] = s + 1
            count = 0
            for p in range(data.first_ptr[start], data.first_ptr[s + 1]):
                count += state.offset[data.by_first[p]] < 0
            if count == 0:
                continue
            if part_top + count > len(parts):
                parts = _grown(parts, part_top + count)
            count = 0
            for p in range(data.first_ptr[start], data.first_ptr[s + 1]):
                if state.offset[data.by_first[p]] < 0:
                    parts[part_top + count] = data.by_first[p]
                    count += 1
            parts[part_top:part_top + count] = preorder(data, state, parts[part_top:part_top + count], heuristic)
            child = frames[depth]
            child[_KIND], child[_STAGE], child[_LO], child[_HI] = _NODE, _ENTER, start, s + 1
            child[_PART], child[_PART_LEN], child[_LAST_OFFSET], child[_LAST_RANK] = part_top, count, -1, -1
            child[_PART_TOP], child[_CAND_TOP] = part_top, cand_top
            part_top += count
            depth += 1
            continue
        part = parts[f[_PART]:f[_PART] + f[_PART_LEN]]
        if f[_STAGE] == _ENTER:
            if state.counters[NODES] <= 0:
                return ABORTED
            state.counters[NODES] -= 1
            min_top = _INF
            for b in part:
                if state.offset[b] < 0 and state.min_offset[b] + data.size[b] < min_top:
                    min_top = state.min_offset[b] + data.size[b]
            if min_top == _INF:
                depth, result = depth - 1, FOUND
                part_top, cand_top = f[_PART_TOP], f[_CAND_TOP]
                continue
            if cand_top + len(part) > len(cand_rank):
                cand_rank = _grown(cand_rank, cand_top + len(part))
                cand_offset = _grown(cand_offset, cand_top + len(part))
            count = 0
            for rank in range(len(part)):
                b = part[rank]
                o = state.min_offset[b]
                if state.offset[b] >= 0 or o >= min_top or o < f[_LAST_OFFSET] or (
                        o == f[_LAST_OFFSET] and rank < f[_LAST_RANK]):
                    continue
                k = cand_top + count  # insertion sort by offset; ranks arrive in order, so ties keep rank order
                while k > cand_top and cand_offset[k - 1] > o:
                    cand_offset[k], cand_rank[k] = cand_offset[k - 1], cand_rank[k - 1]
                    k -= 1
                cand_offset[k], cand_rank[k] = o, rank
                count += 1
            f[_CAND], f[_CAND_LEN], f[_CAND_POS], f[_STAGE], f[_BUFFER] = cand_top, count, 0, _TRY, -1
            cand_top += count
        elif result != _NONE:  # the child of the last placement answered
            _unplace(data, state, f[_BUFFER], f[_MIN_MARK], f[_FLOOR_MARK], True)
            if result != NOT_FOUND or f[_HATLESS]:
                depth -= 1
                part_top, cand_top = f[_PART_TOP], f[_CAND_TOP]
                continue
            result = _NONE
        pushed = False
        while f[_CAND_POS] < f[_CAND_LEN]:
            q = f[_CAND] + f[_CAND_POS]
            f[_CAND_POS] += 1
            rank, o = cand_rank[q], cand_offset[q]
            if not _fits_above(state, f[_LO], f[_HI], o, capacity):
                break
            b = part[rank]
            f[_BUFFER], f[_MIN_MARK], f[_FLOOR_MARK] = b, state.counters[MIN_TRAIL], state.counters[FLOOR_TRAIL]
            f[_HATLESS], affected = _place(data, state, b, o)
            if not _fits_affected(data, state, affected, capacity):  # never after a hatless placement
                _unplace(data, state, b, f[_MIN_MARK], f[_FLOOR_MARK], False)
                continue
            split = False
            for s in range(data.first[b], data.end[b] - 1):
                state.cut[s] -= 1
                split |= state.cut[s] == 0
            child = frames[depth]
            child[_LO], child[_HI], child[_PART_TOP], child[_CAND_TOP] = f[_LO], f[_HI], part_top, cand_top
            if split:
                child[_KIND], child[_NEXT] = _PIECES, f[_LO]
            else:
                child[_KIND], child[_STAGE], child[_PART], child[_PART_LEN] = _NODE, _ENTER, f[_PART], f[_PART_LEN]
                child[_LAST_OFFSET], child[_LAST_RANK] = o, rank
            depth += 1
            pushed = True
            break
        if not pushed:
            depth, result = depth - 1, NOT_FOUND
            part_top, cand_top = f[_PART_TOP], f[_CAND_TOP]
    return result


@njit(cache=True)
def _grown(array, needed):
    bigger = np.empty(max(2 * len(array), needed), array.dtype)
    bigger[:len(array)] = array
    return bigger


@njit(cache=True)
def preorder(data, state, members, heuristic):
    """`members` sorted by the heuristic's keys, each descending, ties by buffer index. TOTAL is the largest
    unplaced total over the buffer's sections, as it stands now. A hand-written bottom-up merge sort: numba's
    own sorts with keys cost seconds to compile."""
    count = len(members)
    keys = np.empty((count, len(heuristic) + 1), np.int64)  # descending keys, then -index (ties: lower index first)
    for k in range(count):
        b = members[k]
        for j in range(len(heuristic)):
            if heuristic[j] == WIDTH:
                keys[k, j] = data.width[b]
            elif heuristic[j] == AREA:
                keys[k, j] = data.width[b] * data.size[b]
            else:
                keys[k, j] = state.total[data.first[b]:data.end[b]].max()
        keys[k, len(heuristic)] = -b
    order, spare = np.arange(count), np.empty(count, np.int64)
    width = 1
    while width < count:
        for lo in range(0, count, 2 * width):
            mid, hi = min(lo + width, count), min(lo + 2 * width, count)
            i, j = lo, mid
            for k in range(lo, hi):
                if j >= hi or (i < mid and not _before(keys[order[j]], keys[order[i]])):
                    spare[k], i = order[i], i + 1
                else:
                    spare[k], j = order[j], j + 1
        order, spare = spare, order
        width *= 2
    return members[order]


@njit(cache=True)
def _before(a, b):
    """Whether key row a sorts strictly before b (all keys descending)."""
    for j in range(len(a)):
        if a[j] != b[j]:
            return a[j] > b[j]
    return False


@njit(cache=True)
def _place(data, state, b, o):
    """Put b at o: raise its unplaced neighbours' min_offset (listing their sections in state.affected), set its
    sections' floors, take it out of their totals. Returns (hatless, number of affected sections); hatless means
    no unplaced buffer conflicts with b."""
    top = o + data.size[b]
    state.offset[b] = o
    state.solution[b] = o
    state.counters[STAMP] += 1
    stamp = state.counters[STAMP]
    affected = 0
    hatless = True
    for e in range(data.adj_ptr[b], data.adj_ptr[b + 1]):
        nb = data.adj[e]
        if state.offset[nb] >= 0:
            continue
        hatless = False
        if state.min_offset[nb] >= top:
            continue
        t = state.counters[MIN_TRAIL]
        state.min_trail[t, 0], state.min_trail[t, 1] = nb, state.min_offset[nb]
        state.counters[MIN_TRAIL] = t + 1
        state.min_offset[nb] = top
        for s in range(data.first[nb], data.end[nb]):
            if state.affected_stamp[s] != stamp:
                state.affected_stamp[s] = stamp
                state.affected[affected] = s
                affected += 1
    for s in range(data.first[b], data.end[b]):
        t = state.counters[FLOOR_TRAIL]
        state.floor_trail[t, 0], state.floor_trail[t, 1] = s, state.floor[s]
        state.counters[FLOOR_TRAIL] = t + 1
        state.floor[s] = top
        state.total[s] -= data.size[b]
    return hatless, affected


@njit(cache=True)
def _unplace(data, state, b, min_mark, floor_mark, cut_taken):
    if cut_taken:
        for s in range(data.first[b], data.end[b] - 1):
            state.cut[s] += 1
    for t in range(state.counters[FLOOR_TRAIL] - 1, floor_mark - 1, -1):
        state.floor[state.floor_trail[t, 0]] = state.floor_trail[t, 1]
    state.counters[FLOOR_TRAIL] = floor_mark
    for s in range(data.first[b], data.end[b]):
        state.total[s] += data.size[b]
    for t in range(state.counters[MIN_TRAIL] - 1, min_mark - 1, -1):
        state.min_offset[state.min_trail[t, 0]] = state.min_trail[t, 1]
    state.counters[MIN_TRAIL] = min_mark
    state.offset[b] = -1


@njit(cache=True)
def _fits_above(state, lo, hi, o, capacity):
    """Every section's unplaced buffers stack above max(floor, o) within the capacity. Checked before placing a
    candidate at o; it only gets harder as o grows, so the first failure ends the node's candidate list."""
    for s in range(lo, hi):
        floor = state.floor[s] if state.floor[s] > o else o
        if floor + state.total[s] > capacity:
            return False
    return True


@njit(cache=True)
def _fits_affected(data, state, affected, capacity):
    """Section inference after a placement, on the sections whose buffers it raised: their unplaced buffers
    stack above the lowest min_offset among them. Nothing is stored: the bound can only tighten when some
    min_offset rises, which marks the section affected again (placing a section's lowest buffer raises all the
    others, which share its time)."""
    for a in range(affected):
        s = state.affected[a]
        threshold = capacity - state.total[s]
        if state.total[s] == 0:
            continue
        fits = False
        for p in range(data.sec_ptr[s], data.sec_ptr[s + 1]):
            x = data.sec_members[p]
            if state.offset[x] < 0 and state.min_offset[x] <= threshold:
                fits = True
                break
        if not fits:
            return False
    return True
