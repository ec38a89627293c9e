"""Client-side merge of PS function (PSF) partial results, one partial per table partition.

The PS names the merge in each result (see ``seraphim.ps.psf``); this module only combines arrays, so the
worker needs nothing from the PS package. ``topk`` keeps the global best k by score descending, ties by key
ascending, NaN lowest: the same rule each partition used, so the merged answer does not depend on partitioning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np


def _elementwise(combine: Callable[[np.ndarray], np.ndarray]) -> Callable[[list[list[np.ndarray]], Mapping], list[np.ndarray]]:
    def merge(partials: list[list[np.ndarray]], args: Mapping) -> list[np.ndarray]:
        merged = []
        for i, parts in enumerate(zip(*partials)):
            shapes = {p.shape for p in parts}
            if len(shapes) != 1:
                raise ValueError(f"partial tensor {i} has different shapes across partitions: {sorted(shapes)}")
            merged.append(combine(np.stack(parts)))
        return merged

    return merge


def _concat(partials: list[list[np.ndarray]], args: Mapping) -> list[np.ndarray]:
    return [np.concatenate(parts, axis=0) for parts in zip(*partials)]


def _top_k(keys: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = np.where(np.isnan(scores), -np.inf, scores)
    if scores.size > k:
        threshold = np.partition(scores, scores.size - k)[scores.size - k]
        keep = scores >= threshold  # every tie at the threshold stays, so the key order decides among them
        keys, scores = keys[keep], scores[keep]
    order = np.lexsort((keys, -scores))[:k]
    return keys[order], scores[order]


def _topk(partials: list[list[np.ndarray]], args: Mapping) -> list[np.ndarray]:
    raw = args.get("k")
    try:
        k = float(raw)  # a number, or its text as args travel on the wire
    except (TypeError, ValueError):
        k = math.nan
    if isinstance(raw, bool) or not (k.is_integer() and k >= 1):
        raise ValueError(f"topk merge needs arg 'k', an integer >= 1; got {raw!r}")
    if any(len(p) != 2 for p in partials):
        raise ValueError(f"topk partials must be [keys, scores]; got lengths {[len(p) for p in partials]}")
    keys, scores = _concat(partials, args)
    return list(_top_k(keys, scores, int(k)))


_MERGES: dict[str, Callable[[list[list[np.ndarray]], Mapping], list[np.ndarray]]] = {
    "sum": _elementwise(lambda s: s.sum(axis=0)),
    "max": _elementwise(lambda s: s.max(axis=0)),
    "min": _elementwise(lambda s: s.min(axis=0)),
    "norm": _elementwise(lambda s: np.sqrt(s.sum(axis=0))),
    "topk": _topk,
    "concat": _concat,
    "none": lambda partials, args: [],
}
MERGES = tuple(_MERGES)


def merge_partials(merge: str, partials: list[list[np.ndarray]], args: Mapping) -> list[np.ndarray]:
    """Combine one result list per partition into the PSF's answer (``none``: an empty list)."""
    fn = _MERGES.get(merge)
    if fn is None:
        raise ValueError(f"unknown PSF merge {merge!r}; allowed: {list(MERGES)}")
    if merge != "none":
        if not partials:
            raise ValueError(f"merge {merge!r} needs at least one partial result; got none")
        counts = {len(p) for p in partials}
        if len(counts) != 1:
            raise ValueError(f"partials disagree on the number of tensors: {sorted(counts)}")
    return fn([[np.asarray(t) for t in p] for p in partials], args)
