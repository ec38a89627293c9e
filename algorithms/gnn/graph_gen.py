"""Large graphs with label signal, generated in chunks with bounded memory and deterministic per seed.

* **Degree-corrected SBM** (Karrer & Newman 2011; GraphWorld's knobs): classes are blocks of equal size, node
  propensities ``θ`` follow a power law (Pareto, ``P(θ > t) ~ t^-(γ-1)``: degrees have exponent
  ``γ = degree_exponent``), capped where the expected degree would pass ``n/10`` (about the largest hubs of
  ogbn-arxiv or Reddit; more would only merge repeats). An edge picks its source ``∝ θ``, stays in the source's
  block with probability ``homophily`` (else goes to another block ``∝`` its mass) and picks its destination
  ``∝ θ`` inside that block: the measured edge homophily is about ``homophily`` (``p_in/p_out =
  homophily·(C-1)/(1-homophily)``). O(1) per edge (Vose alias tables, one per block).
* **R-MAT** (Graph500: initiator a=0.57, b=c=0.19, d=0.05, ``2^scale`` nodes, ``edge_factor·2^scale`` edges;
  vertex ids scrambled by a seeded bijection, as Graph500 does, so hubs are not all at low ids). Two label rules:
  ``communities`` (default): a fraction ``homophily`` of the edges keeps both endpoints in one of ``2^⌈log2 C⌉``
  equal communities (the top id bits, chosen uniformly), the rest is plain Graph500 (``homophily=0`` is pure
  Graph500, where the top bits still agree for a fraction ``(a+d)^bits`` of edges); label = community mod C,
  features as for the SBM. ``smoothed``: labels are the argmax over C random prototypes of a random field
  ``z ~ N(0, I_q)`` averaged over ``label_hops`` hops of ``D̃^-1 Ã``, and features are ``snr·z`` projected to R^d
  plus noise: the label is a function of the neighbourhood's aggregate, which only propagation can see.
* **Features**: ``x = snr·μ_label + N(0, I)``, class means unit and orthonormal when ``classes <= feature_dim``.
  A node's own features give mediocre accuracy (8 classes, ``snr=1``: Bayes ≈ 0.39) while ``k``-hop averages cut
  the noise and keep most of the mean: on a DC-SBM (50k nodes, degree 12, homophily 0.7) logistic regression
  scores 0.37 on X and 0.71, 0.89, 0.92 on 1-3 hops of mean aggregation; nodes of different degree gain
  differently, which node-adaptive hop attention exploits.

Determinism: every block of ``_BLOCK`` edges (and of feature rows) draws from its own ``(seed, kind, block)``
stream, so a seed gives the same graph whatever ``chunk_edges`` is; memory is one chunk plus O(n).
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
from numba import njit
from pydantic import BaseModel, ConfigDict, Field, model_validator

from seraphim.algorithms.gnn.csr import CSRGraph
from seraphim.algorithms.gnn.graph_io import (GraphData, begin_graph_dir, build_csr, iter_chunks, open_features,
                                              write_node_data)
from seraphim.algorithms.gnn.propagation import normalization, propagate

_EDGES, _FEATURES, _LABELS, _SPLIT, _DEGREES, _SCRAMBLE, _FIELD = range(7)  # one random stream per kind of draw
_BLOCK = 1 << 14  # edges (or feature rows) per random stream: the unit that makes chunking invisible
_ONE = float(1 << 53)  # alias keep-probabilities as 53-bit integers
_FEATURE_ROWS = 1 << 16  # feature rows written at once (a multiple of _BLOCK)
_LATENT_DIM = 16  # dimension of the smoothed rule's random field


class FeatureSignal(BaseModel):
    """Node features, split and chunking shared by both generators."""

    model_config = ConfigDict(extra="forbid")
    classes: int = Field(8, ge=2, le=1024)
    feature_dim: int = Field(64, ge=1)
    snr: float = Field(1.0, ge=0, description="norm of the class means against N(0, I) noise per node")
    train_fraction: float = Field(0.1, gt=0, lt=1)
    valid_fraction: float = Field(0.1, gt=0, lt=1)
    test_fraction: float | None = Field(None, gt=0, lt=1, description="None: every node outside train and valid; "
                                        "a fraction leaves the rest unlabelled for the split, as papers100M's 1.4%")
    seed: int = Field(0, ge=0)
    chunk_edges: int = Field(1 << 22, ge=1, description="edges generated per chunk (bounds memory, not the graph)")

    @model_validator(mode="after")
    def _leaves_test_nodes(self) -> "FeatureSignal":
        if self.train_fraction + self.valid_fraction >= 1:
            raise ValueError(f"train_fraction + valid_fraction must be < 1 to leave test nodes, got "
                             f"{self.train_fraction} + {self.valid_fraction}")
        if self.test_fraction is not None and self.train_fraction + self.valid_fraction + self.test_fraction > 1:
            raise ValueError(f"train_fraction + valid_fraction + test_fraction must be <= 1, got "
                             f"{self.train_fraction} + {self.valid_fraction} + {self.test_fraction}")
        return self


class DCSBMSpec(FeatureSignal):
    kind: Literal["dcsbm"] = "dcsbm"
    nodes: int = Field(100_000, ge=3)
    avg_degree: float = Field(16.0, gt=0, description="expected undirected degree before repeats are merged")
    homophily: float = Field(0.7, ge=0, le=1, description="fraction of edges inside the source's class")
    degree_exponent: float = Field(2.5, gt=1.0, description="power-law exponent γ of the degree distribution")

    @model_validator(mode="after")
    def _fits(self) -> "DCSBMSpec":
        if self.nodes < self.classes or self.avg_degree >= self.nodes:
            raise ValueError(f"a DC-SBM needs nodes >= classes and avg_degree < nodes, got nodes={self.nodes}, "
                             f"classes={self.classes}, avg_degree={self.avg_degree}")
        return self


class RMATSpec(FeatureSignal):
    kind: Literal["rmat"] = "rmat"
    scale: int = Field(16, ge=2, le=40, description="2^scale nodes")
    edge_factor: int = Field(16, ge=1, description="edges per node")
    a: float = Field(0.57, gt=0, lt=1)
    b: float = Field(0.19, gt=0, lt=1)
    c: float = Field(0.19, gt=0, lt=1)
    homophily: float = Field(0.6, ge=0, le=1, description="fraction of edges kept inside one planted community "
                             "(0: pure Graph500)")
    label_rule: Literal["communities", "smoothed"] = "communities"
    label_hops: int = Field(2, ge=1, description="hops that smooth the random field of the 'smoothed' rule")

    @model_validator(mode="after")
    def _initiator(self) -> "RMATSpec":
        if self.a + self.b + self.c >= 1:
            raise ValueError(f"R-MAT needs a + b + c < 1 (d = 1 - a - b - c > 0), got {self.a + self.b + self.c}")
        if _community_bits(self.classes) > self.scale:
            raise ValueError(f"R-MAT needs classes <= 2^scale, got {self.classes} > {1 << self.scale}")
        return self


def _rng(seed: int, stream: int, block: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stream, block])


def _edge_chunks(seed: int, total: int, chunk: int, draws: int,
                 fill: Callable[[np.ndarray, np.ndarray, np.ndarray], None]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(src, dst) chunks of ``total`` edges; ``fill(u, src, dst)`` makes one block's edges from its uniforms
    ``u [draws, block]``, drawn from the block's own stream. Chunks are whole blocks, so they change nothing."""
    chunk = max(1, -(-chunk // _BLOCK)) * _BLOCK
    for e0, e1 in iter_chunks(total, chunk):
        src, dst = np.empty(e1 - e0, np.int64), np.empty(e1 - e0, np.int64)
        for b0, b1 in iter_chunks(e1 - e0, _BLOCK):
            u = _rng(seed, _EDGES, (e0 + b0) // _BLOCK).random((draws, b1 - b0))
            fill(u, src[b0:b1], dst[b0:b1])
        yield src, dst


# ------------------------------------------------------------------------------------------ DC-SBM
@njit(cache=True, nogil=True)
def _alias_tables(weights, starts):  # pragma: no cover - compiled
    """Vose alias tables per segment [starts[b], starts[b+1]) of ``weights``: keep position i with probability
    prob[i], else jump to alias[i] (an absolute position)."""
    n = len(weights)
    prob = np.ones(n)
    alias = np.arange(n)
    small = np.empty(n, np.int64)
    large = np.empty(n, np.int64)
    for b in range(len(starts) - 1):
        lo, hi = starts[b], starts[b + 1]
        total = weights[lo:hi].sum()
        ns = nl = 0
        for i in range(lo, hi):
            prob[i] = weights[i] * (hi - lo) / total
            if prob[i] < 1.0:
                small[ns] = i
                ns += 1
            else:
                large[nl] = i
                nl += 1
        while ns > 0 and nl > 0:
            s, l = small[ns - 1], large[nl - 1]
            ns -= 1
            alias[s] = l
            prob[l] += prob[s] - 1.0
            if prob[l] < 1.0:
                nl -= 1
                small[ns] = l
                ns += 1
        for k in range(ns):
            prob[small[k]] = 1.0
        for k in range(nl):
            prob[large[k]] = 1.0
    return prob, alias


@njit(cache=True, nogil=True)
def _block_of(cum_mass, x):  # pragma: no cover - compiled
    """The block b with cum_mass[b] <= x < cum_mass[b+1] (binary search over the few blocks)."""
    lo, hi = 0, len(cum_mass) - 2
    while lo < hi:
        mid = (lo + hi + 1) >> 1
        if cum_mass[mid] <= x:
            lo = mid
        else:
            hi = mid - 1
    return lo


@njit(cache=True, nogil=True)
def _pick(table, starts, block, t):  # pragma: no cover - compiled
    """A node of ``block`` ∝ θ from one uniform t: its slot, then keep it or take its alias (one table row)."""
    size = starts[block + 1] - starts[block]
    x = t * size
    i = min(int(x), size - 1)
    row = starts[block] + i
    return table[row, 1] if int((x - i) * _ONE) < table[row, 0] else table[row, 2]


@njit(cache=True, nogil=True)
def _sbm_edges(u, cum_mass, homophily, starts, table, src, dst):  # pragma: no cover - compiled
    """Edge e from uniforms u[:, e]: source block ∝ mass and node ∝ θ inside it (one draw), destination block
    (own with probability homophily, else another ∝ mass), destination node ∝ θ inside it."""
    c = len(cum_mass) - 1
    total = cum_mass[c]
    for e in range(u.shape[1]):
        x = u[0, e] * total
        b = _block_of(cum_mass, x)
        own = cum_mass[b + 1] - cum_mass[b]
        src[e] = _pick(table, starts, b, min((x - cum_mass[b]) / own, 1.0))
        v = u[1, e]
        db = b
        if v >= homophily:
            y = (v - homophily) / (1.0 - homophily) * (total - own)
            if y >= cum_mass[b]:
                y += own
            db = _block_of(cum_mass, y)
            if db == b:  # rounding at a boundary: take the next block
                db = (b + 1) % c
        dst[e] = _pick(table, starts, db, u[2, e])


def _dcsbm_nodes(spec: DCSBMSpec) -> tuple[np.ndarray, np.ndarray]:
    """Balanced labels in random order, and power-law propensities capped at an expected degree of n/10."""
    labels = (_rng(spec.seed, _LABELS).permutation(spec.nodes) % spec.classes).astype(np.int64)
    theta = _rng(spec.seed, _DEGREES).pareto(spec.degree_exponent - 1.0, spec.nodes) + 1.0
    cap = np.inf
    for _ in range(3):  # expected degree avg·θ/mean(θ) <= n/10; the cap moves the mean a little
        cap = np.minimum(theta, cap).mean() * spec.nodes / (10 * spec.avg_degree)
    return labels, np.minimum(theta, cap)


def _dcsbm_edges(spec: DCSBMSpec, labels: np.ndarray, theta: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(spec.classes + 1)).astype(np.int64)
    weights = theta[order]
    prob, alias = _alias_tables(weights, starts)
    table = np.stack([(prob * _ONE).astype(np.int64), order, order[alias]], axis=1)  # one cache line per pick
    cum_mass = np.concatenate([[0.0], np.cumsum(np.add.reduceat(weights, starts[:-1]))])
    total = int(round(spec.nodes * spec.avg_degree / 2))
    return _edge_chunks(spec.seed, total, spec.chunk_edges, 3, lambda u, src, dst: _sbm_edges(
        u, cum_mass, spec.homophily, starts, table, src, dst))


# ------------------------------------------------------------------------------------------ R-MAT
def _community_bits(classes: int) -> int:
    return max(1, math.ceil(math.log2(classes)))


@njit(cache=True, nogil=True)
def _rmat_edges(u, a, ab, abc, bits, homophily, src, dst):  # pragma: no cover - compiled
    """Edge e from uniforms u[:, e]: with probability homophily (coin u[-1, e]) both endpoints share the top
    ``bits`` bits, a uniform community; every other level picks a quadrant from u[level, e]: a = top-left,
    b = top-right, c = bottom-left, else d."""
    levels = u.shape[0] - 1
    for e in range(u.shape[1]):
        s = 0
        t = 0
        first = 0
        coin = u[levels, e]
        if coin < homophily:
            s = t = min(int(coin / homophily * (1 << bits)), (1 << bits) - 1)
            first = bits
        for level in range(first, levels):
            x = u[level, e]
            s = (s << 1) | (1 if x >= ab else 0)
            t = (t << 1) | (1 if (a <= x < ab) or x >= abc else 0)
        src[e] = s
        dst[e] = t


def _scramble(ids: np.ndarray, scale: int, seed: int) -> np.ndarray:
    """A seeded bijection of ``[0, 2^scale)``: odd multiplications and xor-shifts modulo ``2^scale``."""
    mask = np.uint64((1 << scale) - 1)
    shift = np.uint64(max(1, scale // 2))
    mults = _rng(seed, _SCRAMBLE).integers(0, 1 << 62, 2, dtype=np.uint64) | np.uint64(1)
    x = ids.astype(np.uint64)
    for mult in mults:
        x = (x * mult) & mask
        x ^= x >> shift
    return x.astype(np.int64)


def _rmat_chunks(spec: RMATSpec) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    total = (1 << spec.scale) * spec.edge_factor
    ab, abc = spec.a + spec.b, spec.a + spec.b + spec.c
    bits = _community_bits(spec.classes)
    chunks = _edge_chunks(spec.seed, total, spec.chunk_edges, spec.scale + 1,
                          lambda u, src, dst: _rmat_edges(u, spec.a, ab, abc, bits, spec.homophily, src, dst))
    for src, dst in chunks:
        yield _scramble(src, spec.scale, spec.seed), _scramble(dst, spec.scale, spec.seed)


def _directions(seed: int, stream: int, count: int, dim: int) -> np.ndarray:
    """``count`` unit vectors in R^dim as float32 rows, orthonormal when ``count <= dim``."""
    gauss = _rng(seed, stream).standard_normal((dim, count))
    rows = np.linalg.qr(gauss)[0].T if count <= dim else (gauss / np.linalg.norm(gauss, axis=0)).T
    return np.ascontiguousarray(rows, np.float32)


def _block_normals(seed: int, stream: int, r0: int, r1: int, dim: int) -> np.ndarray:
    """Rows [r0, r1) of a float32 N(0, I_dim) matrix, one generator per ``_BLOCK`` rows: for ranges that start on
    a block, the values do not depend on how the caller chunks the rows."""
    return np.concatenate([_rng(seed, stream, 1 + b0 // _BLOCK).standard_normal((min(b0 + _BLOCK, r1) - b0, dim),
                                                                                np.float32)
                           for b0 in range(r0, r1, _BLOCK)])


def _latent(spec: RMATSpec, r0: int, r1: int) -> np.ndarray:
    """Rows [r0, r1) of the smoothed rule's random field z ~ N(0, I_q), q = min(classes, _LATENT_DIM)."""
    return _block_normals(spec.seed, _FIELD, r0, r1, min(spec.classes, _LATENT_DIM))


def _rmat_labels(spec: RMATSpec, graph: CSRGraph, out_dir: Path) -> np.ndarray:
    n = graph.num_nodes
    if spec.label_rule == "communities":
        bits = _community_bits(spec.classes)
        labels = np.empty(n, np.int64)
        ids = np.arange(n, dtype=np.int64)
        labels[_scramble(ids, spec.scale, spec.seed)] = (ids >> (spec.scale - bits)) % spec.classes
        return labels
    q = min(spec.classes, _LATENT_DIM)
    field, spare = (np.lib.format.open_memmap(out_dir / f"field{i}.tmp.npy", "w+", np.float32, (n, q))
                    for i in range(2))
    for r0, r1 in iter_chunks(n, _FEATURE_ROWS):
        field[r0:r1] = _latent(spec, r0, r1)
    scales = normalization(graph, r=0.0)
    for _ in range(spec.label_hops):
        propagate(graph, field, out=spare, scales=scales)
        field, spare = spare, field
    prototypes = _rng(spec.seed, _FIELD).standard_normal((spec.classes, q)).astype(np.float32)
    labels = np.empty(n, np.int64)
    for r0, r1 in iter_chunks(n, _FEATURE_ROWS):
        labels[r0:r1] = (field[r0:r1] @ prototypes.T).argmax(axis=1)
    del field, spare
    for i in range(2):
        (out_dir / f"field{i}.tmp.npy").unlink()
    return labels


# ------------------------------------------------------------------------------------------ features, split
def _write_features(out_dir: Path, spec: FeatureSignal, n: int, signal: Callable[[int, int], np.ndarray]) -> None:
    """``x = signal(rows) + N(0, I)``, written row block by row block straight into features.npy."""
    out = open_features(out_dir, n, spec.feature_dim)
    for r0, r1 in iter_chunks(n, _FEATURE_ROWS):
        out[r0:r1] = signal(r0, r1) + _block_normals(spec.seed, _FEATURES, r0, r1, spec.feature_dim)
    out.flush()


def _feature_signal(spec: DCSBMSpec | RMATSpec, labels: np.ndarray) -> Callable[[int, int], np.ndarray]:
    """The noise-free part of the features: the class mean (norm snr), or for the smoothed rule the node's own
    field projected into R^d (expected norm snr)."""
    if isinstance(spec, RMATSpec) and spec.label_rule == "smoothed":
        q = min(spec.classes, _LATENT_DIM)
        project = spec.snr * _directions(spec.seed, _FEATURES, q, spec.feature_dim)
        return lambda r0, r1: _latent(spec, r0, r1) @ project
    centers = spec.snr * _directions(spec.seed, _FEATURES, spec.classes, spec.feature_dim)
    return lambda r0, r1: centers[labels[r0:r1]]


def _split(n: int, spec: FeatureSignal) -> dict[str, np.ndarray]:
    perm = _rng(spec.seed, _SPLIT).permutation(n).astype(np.int64)
    a, b = int(n * spec.train_fraction), int(n * (spec.train_fraction + spec.valid_fraction))
    c = n if spec.test_fraction is None else max(int(n * (spec.train_fraction + spec.valid_fraction
                                                          + spec.test_fraction)), max(b, 2) + 1)
    return {"train": perm[:max(a, 1)], "valid": perm[max(a, 1):max(b, 2)], "test": perm[max(b, 2):c]}


def generate(spec: DCSBMSpec | RMATSpec, out_dir: str | Path) -> GraphData:
    """Write the CSR graph directory (see graph_io) for ``spec`` into ``out_dir``, replacing what was there, and
    open it. Memory: one chunk of ``chunk_edges`` edges plus O(n). ``meta.json`` records the seconds of each phase
    (``edges_s``: drawing the edges and spilling them; ``csr_s``: building the CSR from them; ``features_s``)."""
    out_dir = begin_graph_dir(out_dir)
    shutil.rmtree(out_dir / "split", ignore_errors=True)
    timings: dict[str, float] = {}
    if isinstance(spec, DCSBMSpec):
        labels, theta = _dcsbm_nodes(spec)
        build_csr(_dcsbm_edges(spec, labels, theta), spec.nodes, out_dir, timings=timings)
        del theta
    else:
        graph = build_csr(_rmat_chunks(spec), 1 << spec.scale, out_dir, timings=timings)
        start = time.perf_counter()
        labels = _rmat_labels(spec, graph, out_dir)
        timings["labels_s"] = time.perf_counter() - start
    start = time.perf_counter()
    _write_features(out_dir, spec, len(labels), _feature_signal(spec, labels))
    timings["features_s"] = time.perf_counter() - start
    return write_node_data(out_dir, labels, spec.classes, _split(len(labels), spec),
                           {"source": {"generate": spec.model_dump()}, "timings": timings})
