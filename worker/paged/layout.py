"""Where each tensor of a model lives in its pages: tensors packed in first-use order into fixed-size pages.

A page holds ``page_numel`` values. Packing walks the tensors in the order the model first uses them; a tensor
that fits in a page never straddles two (it starts on the next page when the current one lacks room, so it can be
used in place, as a view of its page), and a bigger one starts where the cursor is and spans as many pages as it
needs (it is gathered into one tensor when used). Frozen tensors (no gradient) never share a page with trainable
ones, so their pages send no gradient bytes and the PS can hold them at a learning rate of 0, out of weight decay's
reach. A page is stored on the PS as ``rows_per_page`` rows of a dense table, so the PS's own storage pages need
not be as large as a model page (see ``row_shape``).

No torch here: shapes in, placements (and PS row keys) out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Collection, Iterable, Sequence

import numpy as np

#: bytes the PS stores per value of a model page row: fp32 weight, Adam's two fp32 moments
PS_BYTES_PER_VALUE = 12
#: bytes the PS stores per row besides its values: Adam's step count (the row's version)
PS_BYTES_PER_ROW = 4


@dataclass(frozen=True)
class Segment:
    """One piece of a tensor: ``numel`` values at ``page_offset`` in ``page``, from ``tensor_offset`` of the tensor."""

    page: int
    page_offset: int
    tensor_offset: int
    numel: int


@dataclass(frozen=True)
class TensorPlacement:
    name: str
    shape: tuple[int, ...]
    segments: tuple[Segment, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def pages(self) -> tuple[int, ...]:
        return tuple(s.page for s in self.segments)

    @property
    def in_one_page(self) -> bool:
        return len(self.segments) == 1


@dataclass(frozen=True)
class PageLayout:
    """Every tensor's segments over ``n_pages`` pages of ``page_numel`` values."""

    page_numel: int
    tensors: tuple[TensorPlacement, ...]
    n_pages: int

    @classmethod
    def pack(cls, tensors: Iterable[tuple[str, Sequence[int]]], page_numel: int,
             frozen: Collection[str] = ()) -> "PageLayout":
        """Pack (name, shape) pairs, in the order given, into pages of page_numel values; a page holds either
        tensors named in `frozen` or others, never both."""
        if page_numel < 1:
            raise ValueError(f"page_numel must be >= 1, got {page_numel}")
        placed, cursor, seen, page_frozen = [], 0, set(), None
        for name, shape in tensors:
            if name in seen:
                raise ValueError(f"tensor {name!r} is listed twice; pack each tensor once")
            seen.add(name)
            numel = math.prod(shape)
            next_page = -(-cursor // page_numel) * page_numel
            if (name in frozen) != page_frozen:
                cursor, page_frozen = next_page, name in frozen
            elif numel <= page_numel and cursor % page_numel + numel > page_numel:
                cursor = next_page  # a small tensor never straddles two pages
            segments, done = [], 0
            while done < numel:
                page, offset = divmod(cursor, page_numel)
                n = min(numel - done, page_numel - offset)
                segments.append(Segment(page, offset, done, n))
                cursor += n
                done += n
            placed.append(TensorPlacement(name, tuple(int(s) for s in shape), tuple(segments)))
        return cls(page_numel, tuple(placed), -(-cursor // page_numel))

    def placement(self, name: str) -> TensorPlacement:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(f"tensor {name!r} is not in this layout")

    def pages_of(self, names: Iterable[str]) -> tuple[int, ...]:
        """Sorted pages that hold any part of the named tensors."""
        index = {t.name: t for t in self.tensors}
        return tuple(sorted({p for n in names for p in index[n].pages}))

    @property
    def numel(self) -> int:
        return sum(t.numel for t in self.tensors)


@dataclass(frozen=True)
class RowShape:
    """How a model page is stored on the PS: ``rows_per_page`` rows of ``row_dim`` values."""

    rows_per_page: int
    row_dim: int

    def row_bytes(self) -> int:
        return PS_BYTES_PER_VALUE * self.row_dim + PS_BYTES_PER_ROW


def page_keys(page: int, rows_per_page: int) -> np.ndarray:
    """The PS table's keys of a model page: its rows_per_page consecutive rows."""
    return np.arange(page * rows_per_page, (page + 1) * rows_per_page, dtype=np.int64)


def row_shape(page_numel: int, ps_page_bytes: int, slack: float = 0.02) -> RowShape:
    """The widest row (a power of two dividing page_numel) whose PS rows fill the PS's storage pages within `slack`
    of the best fill any width reaches.

    A PS row stores a row's fp32 weights, its two Adam moments and its step count; the PS packs whole rows into its
    storage pages, so the width decides how much of each storage page is used, and narrow rows fill pages best but
    cost a key each on every pull and push.
    """
    fills: dict[int, float] = {}
    dim = 1
    while dim <= page_numel:
        row = RowShape(page_numel // dim, dim).row_bytes()
        if page_numel % dim == 0 and row <= ps_page_bytes:
            fills[dim] = (ps_page_bytes // row) * row / ps_page_bytes
        dim *= 2
    if not fills:
        raise ValueError(f"a PS storage page of {ps_page_bytes} bytes cannot hold one row of a model page of "
                         f"{page_numel} values ({RowShape(page_numel, 1).row_bytes()} bytes at the narrowest); "
                         f"raise storage.page_kb")
    best = max(fills.values())
    widest = max(d for d, fill in fills.items() if fill >= best - slack)
    return RowShape(page_numel // widest, widest)
