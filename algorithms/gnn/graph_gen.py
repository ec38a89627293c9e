"""Large graphs with label signal, generated in chunks with bounded memory and deterministic per seed.

* Degree-corrected SBM (Karrer & Newman): classes are blocks, node propensities follow a power law (Pareto with
  ``degree_exponent``), an edge stays in its source's block with probability ``homophily``, and features are a
  Gaussian mixture, ``snr · μ_class + N(0, I/d)`` with unit-norm class means, so ``snr`` sets how much a node's own
  features tell. Low ``snr`` and high ``homophily`` make hops matter: averaging neighbours raises the signal.
* R-MAT (Graph500's initiator a=0.57, b=c=0.19, d=0.05) for skewed structure at scale. Its label is the top bits
  of the node id: R-MAT puts ``a + d`` of the edges inside the same top-level quadrant, so labels are homophilous
  (about 0.62 of the edges for 2 classes), and features are the same Gaussian mixture.

Every chunk of edges and of feature rows draws from its own ``(seed, kind, chunk)`` stream, so a spec (its seed
and ``chunk_edges``) always gives the same graph and the memory stays one chunk plus ``O(nodes)``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from seraphim.algorithms.gnn.graph_io import GraphData, build_csr, iter_chunks, load_graph, write_node_data

_EDGES, _FEATURES, _LABELS, _SPLIT, _DEGREES = range(5)  # one random stream per kind of draw
_FEATURE_ROWS = 1 << 16  # feature rows per chunk


class FeatureSignal(BaseModel):
    """Node features and the split shared by both generators."""

    model_config = ConfigDict(extra="forbid")
    classes: int = Field(8, ge=2, le=1024)
    feature_dim: int = Field(64, ge=1)
    snr: float = Field(0.5, ge=0, description="class-mean norm against unit noise norm")
    train_fraction: float = Field(0.1, gt=0, lt=1)
    valid_fraction: float = Field(0.1, gt=0, lt=1)
    seed: int = 0
    chunk_edges: int = Field(1 << 22, ge=1024, description="edges generated per chunk (bounds memory)")


class DCSBMSpec(FeatureSignal):
    kind: Literal["dcsbm"] = "dcsbm"
    nodes: int = Field(100_000, ge=2)
    avg_degree: float = Field(20.0, gt=0, description="average undirected degree")
    homophily: float = Field(0.8, ge=0, le=1, description="fraction of edges inside the source's class")
    degree_exponent: float = Field(2.5, gt=1.0, description="power-law exponent of the degree propensities")


class RMATSpec(FeatureSignal):
    kind: Literal["rmat"] = "rmat"
    scale: int = Field(16, ge=2, le=40, description="2^scale nodes")
    edge_factor: int = Field(16, ge=1, description="edges per node")
    a: float = 0.57
    b: float = 0.19
    c: float = 0.19


def _rng(seed: int, stream: int, chunk: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stream, chunk])


def _dcsbm_labels_and_weights(spec: DCSBMSpec) -> tuple[np.ndarray, np.ndarray]:
    labels = _rng(spec.seed, _LABELS).integers(0, spec.classes, spec.nodes)
    theta = _rng(spec.seed, _DEGREES).pareto(spec.degree_exponent - 1.0, spec.nodes) + 1.0
    return labels.astype(np.int64), np.minimum(theta, math.sqrt(spec.nodes) * 5.0)


def _dcsbm_edges(spec: DCSBMSpec, labels: np.ndarray, theta: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Chunks of (src, dst): src by propensity, dst by propensity inside the chosen block."""
    n, c = spec.nodes, spec.classes
    order = np.argsort(labels, kind="stable")
    cum_all = np.cumsum(theta / theta.sum())
    cum_block = np.cumsum(theta[order])
    starts = np.searchsorted(labels[order], np.arange(c + 1))
    base = np.concatenate([[0.0], cum_block])[starts[:-1]]
    mass = np.concatenate([[0.0], cum_block])[starts[1:]] - base
    total = int(n * spec.avg_degree / 2)
    for k, (e0, e1) in enumerate(iter_chunks(total, spec.chunk_edges)):
        rng = _rng(spec.seed, _EDGES, k)
        m = e1 - e0
        src = np.minimum(np.searchsorted(cum_all, rng.random(m) * cum_all[-1]), n - 1)
        same = rng.random(m) < spec.homophily
        block = np.where(same, labels[src], (labels[src] + rng.integers(1, c, m)) % c)
        u = base[block] + rng.random(m) * mass[block]
        pos = np.clip(np.searchsorted(cum_block, u), starts[block], starts[block + 1] - 1)
        yield src, order[pos]


def _rmat_edges(spec: RMATSpec) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    total = (1 << spec.scale) * spec.edge_factor
    ab, abc = spec.a + spec.b, spec.a + spec.b + spec.c
    for k, (e0, e1) in enumerate(iter_chunks(total, spec.chunk_edges)):
        rng = _rng(spec.seed, _EDGES, k)
        m = e1 - e0
        src = np.zeros(m, np.int64)
        dst = np.zeros(m, np.int64)
        for bit in range(spec.scale - 1, -1, -1):
            u = rng.random(m)
            src |= (u >= ab).astype(np.int64) << bit
            dst |= (((u >= spec.a) & (u < ab)) | (u >= abc)).astype(np.int64) << bit
        yield src, dst


def _write_features(out_dir: Path, spec: FeatureSignal, labels: np.ndarray) -> None:
    """The Gaussian mixture, written in row chunks straight into features.npy."""
    n, d = len(labels), spec.feature_dim
    centers = _rng(spec.seed, _FEATURES, 0).standard_normal((spec.classes, d))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    centers = (spec.snr * centers).astype(np.float32)
    out = np.lib.format.open_memmap(out_dir / "features.npy", "w+", np.float32, (n, d))
    for k, (r0, r1) in enumerate(iter_chunks(n, _FEATURE_ROWS), start=1):
        noise = _rng(spec.seed, _FEATURES, k).standard_normal((r1 - r0, d), dtype=np.float32)
        out[r0:r1] = centers[labels[r0:r1]] + noise / np.float32(math.sqrt(d))
    out.flush()


def _split(n: int, spec: FeatureSignal) -> dict[str, np.ndarray]:
    if spec.train_fraction + spec.valid_fraction >= 1:
        raise ValueError(f"train_fraction + valid_fraction must be < 1 to leave test nodes, got "
                         f"{spec.train_fraction} + {spec.valid_fraction}")
    perm = _rng(spec.seed, _SPLIT).permutation(n).astype(np.int64)
    a, b = int(n * spec.train_fraction), int(n * (spec.train_fraction + spec.valid_fraction))
    return {"train": np.sort(perm[:a]), "valid": np.sort(perm[a:b]), "test": np.sort(perm[b:])}


def generate(spec: DCSBMSpec | RMATSpec, out_dir: str | Path) -> GraphData:
    """Write the graph directory (see graph_io) for ``spec`` and open it."""
    out_dir = Path(out_dir)
    if isinstance(spec, DCSBMSpec):
        labels, theta = _dcsbm_labels_and_weights(spec)
        build_csr(_dcsbm_edges(spec, labels, theta), spec.nodes, out_dir)
    else:
        n = 1 << spec.scale
        labels = np.arange(n, dtype=np.int64) >> (spec.scale - max(1, math.ceil(math.log2(spec.classes))))
        labels %= spec.classes
        build_csr(_rmat_edges(spec), n, out_dir)
    _write_features(out_dir, spec, labels)
    write_node_data(out_dir, np.empty((0, 0), np.float32), labels, spec.classes, _split(len(labels), spec))
    return load_graph(out_dir)
