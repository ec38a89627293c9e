"""PS functions (Angel's PSF): each PS computes a partial result over its partition of a table, the client merges.

A worker learns a norm, a dot product or a top-k without pulling the table, and updates such as axpy or
fill run where the rows live. The server side is here; the merge is :mod:`seraphim.worker.psf_merge`
(named by the result's ``merge``), since workers do not import the PS.

Conventions of the built-ins:

- Reductions (``sum``, ``max``, ``min``, ``norm``, ``nnz``, ``dot``) return two tensors: the whole-table value
  (shape ``()``) and the per-column value (shape ``[dim]``). Sums and norms accumulate in float64, counts are
  int64. An empty partition contributes the identity (0, -inf for max, +inf for min).
- ``topk`` returns ``[keys int64 [<=k], scores float64 [<=k]]`` ordered by score descending, ties by key
  ascending; NaN scores rank lowest.
- A PSF naming ``other`` reads that table's rows for the same keys through :meth:`PartitionView.read`; a
  sparse row absent from ``other`` counts as zero. Update PSFs act on the rows this partition holds (they
  create no sparse rows).
- PSFs compute on float tables only; ``int64`` and ``bytes`` tables hold ids and ciphertexts.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from seraphim.ps.row_layout import FLOAT_DTYPES

MERGES = ("sum", "max", "min", "norm", "topk", "concat", "none")

Args = dict[str, float | int | str]
PsfFn = Callable[["PartitionView", Args, list[np.ndarray]], list[np.ndarray]]


class PartitionView(Protocol):
    """What a PSF sees of one table partition on one PS (the lead implements it over paged storage)."""

    name: str
    dim: int
    dtype: str
    kind: str  # "dense" | "sparse"

    def scan(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (keys int64 [n], weights float32 [n, dim]) chunk by chunk (the table may exceed RAM)."""

    def update_all(self, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
        """Replace each chunk's weights by fn(keys, weights) (float32 [n, dim])."""

    def read(self, keys: np.ndarray) -> np.ndarray:
        """Weights float32 [n, dim] of ``keys`` held by this partition; absent sparse rows read as zeros (not created)."""

    def other(self, table: str) -> "PartitionView":
        """Another table on the same PS with the same partitioning; KeyError if there is none."""


@dataclass
class PsfResult:
    tensors: list[np.ndarray]
    merge: str


@dataclass(frozen=True)
class _Registered:
    fn: PsfFn
    merge: str
    params: tuple[str, ...] | None


_REGISTRY: dict[str, _Registered] = {}


def register_psf(name: str, merge: str, params: tuple[str, ...] | None = None) -> Callable[[PsfFn], PsfFn]:
    """Register ``fn(view, args, tensors) -> list[np.ndarray]`` under ``name``.

    ``merge`` says how the client combines the partitions' results (one of :data:`MERGES`); ``params`` lists
    the argument names the PSF accepts (None: any), so a misspelt argument fails before any row is read.
    """
    if merge not in MERGES:
        raise ValueError(f"PSF {name!r}: unknown merge {merge!r}; allowed: {list(MERGES)}")
    if name in _REGISTRY:
        raise ValueError(f"PSF {name!r} is already registered; registered: {registered_psfs()}")

    def decorate(fn: PsfFn) -> PsfFn:
        _REGISTRY[name] = _Registered(fn, merge, params)
        return fn

    return decorate


def registered_psfs() -> list[str]:
    return sorted(_REGISTRY)


def run_psf(name: str, view: PartitionView, args: Args, tensors: list[np.ndarray]) -> PsfResult:
    """Run PSF ``name`` on one partition; errors name the PSF, the argument and what is allowed."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise KeyError(f"unknown PSF {name!r}; registered: {registered_psfs()}")
    if entry.params is not None:
        unknown = sorted(set(args) - set(entry.params))
        if unknown:
            raise ValueError(f"PSF {name!r}: unknown arg(s) {unknown}; allowed: {list(entry.params)}")
    if view.dtype not in FLOAT_DTYPES:
        raise ValueError(f"PSF {name!r} needs a float table {list(FLOAT_DTYPES)}; table {view.name!r} is {view.dtype}")
    try:
        out = entry.fn(view, args, tensors)
    except ValueError as e:
        raise ValueError(f"PSF {name!r}: {e}") from e
    if not isinstance(out, list) or not all(isinstance(t, np.ndarray) for t in out):
        raise TypeError(f"PSF {name!r} must return a list of numpy arrays; got {type(out).__name__}")
    return PsfResult(out, entry.merge)


def _as_number(value: object) -> float | None:
    """A finite number from a number or its text (args travel as strings on the wire); None if it is not one."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(value) if math.isfinite(value) else None


def arg_float(args: Args, name: str) -> float:
    """A required finite number (or its text)."""
    value = _as_number(args.get(name))
    if value is None:
        raise ValueError(f"arg {name!r} must be a finite number; got {args.get(name)!r}")
    return value


def arg_int(args: Args, name: str, minimum: int) -> int:
    """A required integer >= ``minimum`` (integral floats and text such as "5" are accepted)."""
    value = _as_number(args.get(name))
    if value is None or not value.is_integer() or value < minimum:
        raise ValueError(f"arg {name!r} must be an integer >= {minimum}; got {args.get(name)!r}")
    return int(value)


def arg_other(view: PartitionView, args: Args) -> PartitionView:
    """The table named by arg ``other``, checked to have this table's dim."""
    table = args.get("other")
    if not isinstance(table, str) or not table:
        raise ValueError(f"arg 'other' must name a table on this PS; got {table!r}")
    other = view.other(table)
    if other.dim != view.dim:
        raise ValueError(f"table {view.name!r} has dim {view.dim} but other table {table!r} has dim {other.dim}")
    return other


def _reduce(view: PartitionView, partial: Callable[[np.ndarray, np.ndarray], np.ndarray],
            combine: np.ufunc, identity: np.generic) -> list[np.ndarray]:
    """Fold per-chunk per-column partials ``partial(keys, weights) -> [dim]``; return [whole-table, per-column]."""
    acc = np.full(view.dim, identity)
    for keys, weights in view.scan():
        acc = combine(acc, partial(keys, weights))
    return [np.asarray(combine.reduce(acc)), acc]


@register_psf("sum", "sum", params=())
def _sum(view: PartitionView, args: Args, tensors: list[np.ndarray]) -> list[np.ndarray]:
    return _reduce(view, lambda k, w: w.sum(axis=0, dtype=np.float64), np.add, np.float64(0.0))


@register_psf("max", "max", params=())
def _max(view: PartitionView, args: Args, tensors: list[np.ndarray]) -> list[np.ndarray]:
    return _reduce(view, lambda k, w: w.max(axis=0, initial=-np.inf).astype(np.float64), np.maximum, np.float64(-np.inf))


@register_psf("min", "min", params=())
def _min(view: PartitionView, args: Args, tensors: list[np.ndarray]) -> list[np.ndarray]:
    return _reduce(view, lambda k, w: w.min(axis=0, initial=np.inf).astype(np.float64), np.minimum, np.float64(np.inf))


@register_psf("norm", "norm", params=())
def _norm(view: PartitionView, args: Args, tensors: list[np.ndarray]) -> list[np.ndarray]:
    """Partial: sums of squares; the "norm" merge takes the square root of their sum."""
    return _reduce(view, lambda k, w: np.einsum("ij,ij->j", w, w, dtype=np.float64), np.add, np.float64(0.0))


@register_psf("nnz", "sum", params=())
def _nnz(view: PartitionView, args: Args, tensors: list[np.ndarray]) -> list[np.ndarray]:
    return _reduce(view, lambda k, w: np.count_nonzero(w, axis=0).astype(np.int64), np.add, np.int64(0))


@register_psf("dot", "sum", params=("other",))
def _dot(view: PartitionView, args: Args, tensors: list[np.ndarray]) -> list[np.ndarray]:
    other = arg_other(view, args)
    return _reduce(view, lambda k, w: np.einsum("ij,ij->j", w, other.read(k), dtype=np.float64), np.add, np.float64(0.0))


def _top_k(keys: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (keys, scores): score descending, ties by key ascending, NaN lowest (deterministic)."""
    scores = np.where(np.isnan(scores), -np.inf, scores)
    if scores.size > k:
        threshold = np.partition(scores, scores.size - k)[scores.size - k]
        keep = scores >= threshold  # keeps every tie at the threshold, so the key order decides among them
        keys, scores = keys[keep], scores[keep]
    order = np.lexsort((keys, -scores))[:k]
    return keys[order], scores[order]


def _topk_scorer(view: PartitionView, by: object) -> Callable[[np.ndarray], np.ndarray]:
    if by == "norm":
        return lambda w: np.sqrt(np.einsum("ij,ij->i", w, w, dtype=np.float64))
    if isinstance(by, str) and by.startswith("col:") and by[4:].isdigit() and int(by[4:]) < view.dim:
        col = int(by[4:])
        return lambda w: w[:, col].astype(np.float64)
    raise ValueError(f"arg 'by' must be 'norm' or 'col:<j>' with 0 <= j < {view.dim}; got {by!r}")


@register_psf("topk", "topk", params=("k", "by"))
def _topk(view: PartitionView, args: Args, tensors: list[np.ndarray]) -> list[np.ndarray]:
    k = arg_int(args, "k", 1)
    score = _topk_scorer(view, args.get("by", "norm"))
    best_keys, best_scores = np.empty(0, np.int64), np.empty(0, np.float64)
    for keys, weights in view.scan():
        best_keys, best_scores = _top_k(np.concatenate([best_keys, keys.astype(np.int64)]),
                                       np.concatenate([best_scores, score(weights)]), k)
    return [best_keys, best_scores]


@register_psf("digest", "concat", params=())
def _digest(view: PartitionView, args: Args, tensors: list[np.ndarray]) -> list[np.ndarray]:
    """SHA-256 of the partition's (key, weights) rows in key order: uint8 [32]. Two runs hold bitwise the same
    model exactly when every partition's digest agrees, whatever order their rows were created in."""
    chunks = list(view.scan())
    keys = np.concatenate([k.astype("<i8") for k, _ in chunks]) if chunks else np.empty(0, "<i8")
    weights = np.concatenate([w for _, w in chunks]) if chunks else np.empty((0, view.dim), np.float32)
    order = np.argsort(keys, kind="stable")
    digest = hashlib.sha256(keys[order].tobytes())
    digest.update(np.ascontiguousarray(weights[order], dtype="<f4").tobytes())
    return [np.frombuffer(digest.digest(), dtype=np.uint8)]


@register_psf("axpy", "none", params=("a", "other"))
def _axpy(view: PartitionView, args: Args, tensors: list[np.ndarray]) -> list[np.ndarray]:
    """w += a * w_other."""
    a = np.float32(arg_float(args, "a"))
    other = arg_other(view, args)
    view.update_all(lambda k, w: w + a * other.read(k))
    return []


@register_psf("fill", "none", params=("value",))
def _fill(view: PartitionView, args: Args, tensors: list[np.ndarray]) -> list[np.ndarray]:
    value = np.float32(arg_float(args, "value"))
    view.update_all(lambda k, w: np.full_like(w, value))
    return []


@register_psf("scale", "none", params=("a",))
def _scale(view: PartitionView, args: Args, tensors: list[np.ndarray]) -> list[np.ndarray]:
    a = np.float32(arg_float(args, "a"))
    view.update_all(lambda k, w: w * a)
    return []


@register_psf("copy", "none", params=("other",))
def _copy(view: PartitionView, args: Args, tensors: list[np.ndarray]) -> list[np.ndarray]:
    """w = w_other (rows absent from a sparse ``other`` become zeros)."""
    other = arg_other(view, args)
    view.update_all(lambda k, w: other.read(k))
    return []
