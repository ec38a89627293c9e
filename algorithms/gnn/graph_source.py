"""Where a GNN job's graph comes from: a CSR directory, OGB-style arrays to convert, or a generator.

Worker 0 converts or generates into the job's run directory while the others wait for the directory's
``meta.json`` (written last), so every worker opens the same files; a restarted job finds them in place.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from seraphim.algorithms.gnn.graph_gen import DCSBMSpec, RMATSpec, generate
from seraphim.algorithms.gnn.graph_io import GraphData, convert_ogb, load_graph
from seraphim.algorithms.gnn.partition import load_bounds, metis_partition, range_partition, relabel_graph

__all__ = ["GraphSourceSpec", "GraphData", "open_graph", "worker_ranges"]


class GraphSourceSpec(BaseModel):
    """Exactly one of ``path`` (a CSR graph directory), ``ogb`` (OGB-style arrays) or ``generate``."""

    model_config = ConfigDict(extra="forbid")
    path: str | None = None
    ogb: str | None = None
    generate: Union[DCSBMSpec, RMATSpec, None] = Field(None, discriminator="kind")
    partition: Literal["range", "metis"] = Field(
        "range", description="range: contiguous ids balanced by edges; metis: METIS parts (through DGL), the graph "
                             "relabeled once so each part is a contiguous range")

    @model_validator(mode="after")
    def _one(self) -> "GraphSourceSpec":
        given = [k for k in ("path", "ogb", "generate") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of graph.path, graph.ogb, graph.generate; got {given or 'none'}")
        return self

    def expected_train_nodes(self) -> int:
        """Training nodes, for progress estimates (read from the split when the graph is on disk)."""
        if self.generate is not None:
            g = self.generate
            nodes = g.nodes if isinstance(g, DCSBMSpec) else 1 << g.scale
            return int(nodes * g.train_fraction)
        path = Path(self.path) / "split" / "train.npy" if self.path else None
        if path is not None and path.exists():
            import numpy as np

            return len(np.load(path, mmap_mode="r"))
        return 1


def _wait_for(directory: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not (directory / "meta.json").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f}s for worker 0 to write the graph into {directory}")
        time.sleep(0.2)


def open_graph(spec: GraphSourceSpec, work_dir: Path, rank: int, world: int = 1,
               timeout_s: float = 3600.0) -> GraphData:
    """The job's graph; generated or converted into ``work_dir`` by rank 0 the first time, and relabeled into
    ``work_dir/metis-<world>`` when the spec asks for METIS parts."""
    if spec.path is not None:
        data = load_graph(spec.path)
    elif (work_dir / "meta.json").exists() or rank != 0:
        _wait_for(work_dir, timeout_s)
        data = load_graph(work_dir)
    else:
        data = generate(spec.generate, work_dir) if spec.generate is not None else convert_ogb(spec.ogb, work_dir)
    if spec.partition == "range" or world == 1:
        return data
    parted = work_dir / f"metis-{world}"
    if not (parted / "meta.json").exists():
        if rank != 0:
            _wait_for(parted, timeout_s)
            return load_graph(parted)
        return relabel_graph(data, metis_partition(data.graph, world), parted)
    return load_graph(parted)


def worker_ranges(spec: GraphSourceSpec, work_dir: Path, data: GraphData, world: int) -> list[tuple[int, int]]:
    """Each worker's contiguous node range: METIS parts after relabeling, else ranges balanced by edges."""
    if spec.partition == "metis" and world > 1:
        return load_bounds(work_dir / f"metis-{world}")
    return range_partition(data.graph, world).ranges()
