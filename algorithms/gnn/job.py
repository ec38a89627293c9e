"""GAMLP and the other scalable decoupled GNNs as a Seraphim job: hops computed on the PS, then data-parallel training.

Every worker owns a node range (balanced by edges). The job runs in clock steps, so progress and restarts follow
the PS clocks: step 1 stores ``X^(0)`` of each range, steps 2..K+1 the feature hops, then (with a label branch)
the label seed and its hops, then the training steps, whose model lives in a PS table with the optimizer on the
PS. RLU stages re-propagate the label seed with the confident pseudo labels and train a fresh model per stage.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from seraphim.algorithms.gnn import models
from seraphim.algorithms.gnn.csr import GraphError
from seraphim.algorithms.gnn.graph_io import iter_chunks
from seraphim.algorithms.gnn.graph_source import GraphData, GraphSourceSpec, open_graph, worker_ranges
from seraphim.algorithms.gnn.hop_tables import WRITE_ROWS, HopTables
from seraphim.algorithms.gnn.progress import WorkerProgress
from seraphim.algorithms.gnn.ps_propagation import HopTiming, propagate_partition
from seraphim.algorithms.gnn.source_tiles import SourceTiles, source_tiles
from seraphim.algorithms.gnn.train import CachedHops, HopSource, RLUConfig, Share, Split, TrainConfig, fit
from seraphim.algorithms.registry import Job, JobContext, register
from seraphim.proto.resources import peak_rss_bytes
from seraphim.worker.client import PSClient
from seraphim.worker.specs import Adam
from seraphim.worker.torch_modules import PSOptimizer, PSParameters

#: columns per row of the model's PS table: with Adam's two moments a row is 3 KiB, so 4 KiB pages (the right size
#: for hop rows read at random) hold it
MODEL_ROW_COLS = 256
MODEL_BUILDERS = {"sgc": models.sgc, "sign": models.sign, "s2gc": models.s2gc, "gbp": models.gbp,
                  "gamlp": models.gamlp}


class PropagationSpec(BaseModel):
    """The graph operator whose powers are precomputed: ``Â = D̃^(r-1) Ã D̃^(-r)`` hops, or PPR iterates."""

    model_config = ConfigDict(extra="forbid")
    operator: Literal["laplacian", "ppr"] = "laplacian"
    hops: int = Field(4, description="K, the number of hops (>= 1)")
    r: float = Field(0.5, ge=0.0, le=1.0)
    alpha: float = Field(0.15, gt=0.0, lt=1.0, description="PPR teleport probability")
    label_hops: int = Field(0, ge=0, description="hops of label propagation for the label branch (0: none)")
    label_folds: int = Field(1, ge=1, description="1: one label propagation per stage, as GAMLP publishes it (a "
                             "training node's own label returns to its input through Â^K); F > 1: F propagations, "
                             "each seed reads only the other folds' labels")
    tile_rows: int = Field(1 << 19, ge=1, lt=2**31, description="sources per tile (ps_propagation): a worker pulls at "
                           "most this many rows of the previous hop at once, so with its accumulator they bound its "
                           "memory")

    @model_validator(mode="after")
    def _hops(self) -> "PropagationSpec":
        if self.hops < 1:
            raise ValueError(f"hops must be >= 1 (the number of propagation steps), got {self.hops}")
        return self


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["sgc", "sign", "s2gc", "gbp", "gamlp"] = "gamlp"
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the model's builder")


class TrainingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(2048, ge=1, description="nodes per step on each worker")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(20, ge=1)
    eval_every: int = Field(1, ge=1)
    seed: int = 0
    select: Literal["best_valid", "last"] = Field(
        "best_valid", description="best_valid: early stopping, the best validation epoch's weights (GAMLP, SIGN); "
                                  "last: every epoch, the final weights (SGC's protocol)")
    hop_cache_mb: float = Field(1024.0, ge=0, description="a worker keeps the hop rows of the split's nodes (train, "
                                "valid, test) in RAM, copied as each level is computed, when they fit in this many "
                                "MiB; otherwise (and with 0) every batch and evaluation reads them from the PS")


class RLUSpec(BaseModel):
    """GAMLP's reliable label utilization; ``stages: 1`` trains once, without it."""

    model_config = ConfigDict(extra="forbid")
    stages: int = Field(1, ge=1)
    threshold: float = Field(0.85, ge=0.0, lt=1.0)
    temperature: float = Field(1.0, gt=0)
    gamma: float = Field(1.0, ge=0)


class GNNSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    graph: GraphSourceSpec
    propagation: PropagationSpec = Field(default_factory=PropagationSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    rlu: RLUSpec = Field(default_factory=RLUSpec)

    @model_validator(mode="after")
    def _consistent(self) -> "GNNSpec":
        if self.rlu.stages > 1 and self.propagation.label_hops == 0:
            raise ValueError("rlu.stages > 1 re-propagates pseudo labels: set propagation.label_hops >= 1")
        return self


class PSHops:
    """A training :class:`HopSource` over PS hop tables: every level's rows of a batch pulled at once."""

    def __init__(self, tables: HopTables, levels: range) -> None:
        self.tables, self.levels = tables, levels

    @property
    def row_bytes(self) -> int:
        """float32 bytes of one node's rows over the levels read."""
        return len(self.levels) * self.tables.dim * 4

    def fetch(self, node_ids: np.ndarray) -> list[np.ndarray]:
        return self.tables.read_levels(np.asarray(node_ids, dtype=np.int64), self.levels)


def model_table(stage: int) -> str:
    """The PS table of stage `stage`'s model."""
    return f"gnn_model_s{stage}"


class _Run:
    """One worker's pass through the job's clock steps (skipping those a restarted worker finds done)."""

    def __init__(self, spec: GNNSpec, ctx: JobContext, data: GraphData) -> None:
        self.spec, self.ctx, self.data = spec, ctx, data
        self.ps: PSClient = ctx.ps
        start = time.perf_counter()
        self.lo, self.hi = worker_ranges(spec.graph, ctx.run_dir / "graph", data, ctx.world_size)[ctx.rank]
        self.tiles: SourceTiles = source_tiles(data.graph, self.lo, self.hi, spec.propagation.tile_rows,
                                               spec.propagation.r)
        self.partition_s = time.perf_counter() - start
        self.resume_step = ctx.start_step  # the clock the PS shards held for this worker when it started
        self._step = 0  # clock steps taken, trained or (a restarted worker) replayed
        self.progress = WorkerProgress(ctx.run_dir / "progress" / f"worker-{ctx.rank}.pt", self)
        self.hops_total = spec.propagation.hops + spec.propagation.label_hops
        self.propagation_s = 0.0
        self.hop_timings: dict[str, list[dict[str, float]]] = {}
        self.eval_times: list[float] = []
        self.label_round = 0
        self.hop_bytes = 0
        self.split_ids = np.unique(np.concatenate([np.asarray(data.train_idx), np.asarray(data.valid_idx),
                                                   np.asarray(data.test_idx)]))
        self.cache_budget = int(spec.training.hop_cache_mb * 2**20)
        self.feature_cache_bytes = 0

    @property
    def step(self) -> int:
        return self._step

    @step.setter
    def step(self, value: int) -> None:
        """A restarted worker's catch-up (restored progress, recomputed levels, replayed steps) ends when the count
        reaches the clock it resumed at: its rewrites numbered pushes, so the redo of that clock numbers afresh."""
        if value == self.resume_step > 0 and self._step != value:
            self.ps.renumber_pushes()
        self._step = value

    def barrier(self) -> None:
        """End a propagation step; a restarted worker recomputing a level that is complete does not tick."""
        self.step += 1
        if self.step > self.resume_step:
            self.ps.clock()

    def _propagate(self, tables: HopTables, seed_rows: np.ndarray, hop_offset: int, read: range) -> HopSource:
        """Store this range's seed as level 0, then every hop, each one clock step; returns the training source over
        the levels ``read``: the split's rows of each, copied into RAM as soon as the level is complete on every
        worker (while its pages are fresh on the PS) when they fit what is left of ``training.hop_cache_mb``, else
        the PS tables themselves."""
        p = self.spec.propagation
        start = time.perf_counter()
        self.hop_bytes += tables.nbytes
        source = PSHops(tables, read)
        keep = self._cache_plan(source)
        tables.write(0, self.lo, seed_rows)        # a memory map of the features: read piece by piece
        self.barrier()
        timings = self.hop_timings.setdefault(tables.name, [])

        def copy_split_rows(level: int) -> None:
            if keep is not None and level in read:
                for c0, c1 in iter_chunks(len(self.split_ids), WRITE_ROWS):
                    keep[c0:c1, level - read.start] = tables.read(level, self.split_ids[c0:c1])

        def done(timing: HopTiming) -> None:
            copy_split_rows(timing.level)
            timings.append(asdict(timing))
            self.ctx.report(self.step - 1, {"hop": hop_offset + timing.level, "hops_total": self.hops_total,
                                            "hop_seconds": timing.seconds})

        copy_split_rows(0)
        teleport = p.alpha if p.operator == "ppr" and hop_offset == 0 else 0.0
        propagate_partition(self.data.graph, tables, self.lo, self.hi, p.r, self.barrier, teleport,
                            on_level=done, tiles=self.tiles)
        self.propagation_s += time.perf_counter() - start
        return source if keep is None else CachedHops(source, self.split_ids, keep)

    def _cache_plan(self, source: PSHops) -> np.ndarray | None:
        """RAM for the split's rows of ``source`` when they fit what is left of the budget (features first)."""
        need = len(self.split_ids) * source.row_bytes
        budget = self.cache_budget - self.feature_cache_bytes
        what = (f"{source.tables.name} ({len(self.split_ids)} split nodes x {source.row_bytes} B = "
                f"{need / 2**20:.1f} MiB)")
        if need > budget:
            self.ctx.log.info("rank %d reads %s from the PS at every batch: over the %.1f MiB left of "
                              "training.hop_cache_mb", self.ctx.rank, what, budget / 2**20)
            return None
        self.ctx.log.info("rank %d holds %s in RAM, copied as each level completes", self.ctx.rank, what)
        return np.empty((len(self.split_ids), len(source.levels), source.tables.dim), np.float32)

    def features(self) -> HopSource:
        d = self.data
        tables = HopTables(self.ps, "gnn_x", d.graph.num_nodes, d.features.shape[1], self.spec.propagation.hops + 1)
        hops = self._propagate(tables, d.features[self.lo:self.hi], 0, range(tables.levels))
        if isinstance(hops, CachedHops):
            self.feature_cache_bytes = hops.stacked.nbytes
        return hops

    def label_propagator(self, seed_ids: np.ndarray, seed_rows: np.ndarray) -> HopSource:
        """The distributed LabelPropagator: each worker seeds its range, all propagate; reads ``Ŷ^(K)``."""
        d, p = self.data, self.spec.propagation
        tables = HopTables(self.ps, f"gnn_y{self.label_round}", d.graph.num_nodes, d.num_classes, p.label_hops + 1)
        self.label_round += 1
        mine = (seed_ids >= self.lo) & (seed_ids < self.hi)
        seed = np.zeros((self.hi - self.lo, d.num_classes), np.float32)
        seed[seed_ids[mine] - self.lo] = seed_rows[mine]
        return self._propagate(tables, seed, p.hops, range(p.label_hops, p.label_hops + 1))

    def make_optimizer(self, model: torch.nn.Module, stage: int) -> PSOptimizer:
        t = self.spec.training
        params = PSParameters(self.ps, model_table(stage), model.named_parameters(),
                              Adam(lr=t.lr, weight_decay=t.weight_decay), cols=MODEL_ROW_COLS)
        return PSOptimizer(params, model)

    def on_step(self, loss: float) -> None:
        self.step += 1
        if self.step % 10 == 0:
            self.ctx.report(self.step, {"train_loss": loss})

    def on_eval(self, epoch: int, valid_acc: float) -> None:
        self.eval_times.append(time.perf_counter())
        self.ctx.report(self.step, {"val_acc": valid_acc, "epoch": epoch})


def build_model(spec: GNNSpec, in_dim: int, num_classes: int) -> torch.nn.Module:
    """The network a job spec describes; the job and ``bench/gnn_accuracy.py`` both build it here."""
    p, m = spec.propagation, spec.model
    options = dict(m.options)
    if p.label_hops and m.kind == "gamlp":
        options.setdefault("label_layers", 2)
    try:
        return MODEL_BUILDERS[m.kind](in_dim, num_classes, p.hops, **options)
    except TypeError as exc:
        raise GraphError(f"model.options for {m.kind}: {exc}") from None


def run_gnn(spec: GNNSpec, ctx: JobContext) -> dict[str, Any]:
    """Propagate on the PS, train data-parallel, and return the accuracies, timings and peak memory."""
    health = ctx.ps.health()
    if any(h.staleness != 0 for h in health):
        raise GraphError("GNN jobs need consistency.staleness: 0 (each hop is a barrier over all workers)")
    start = time.perf_counter()
    data = open_graph(spec.graph, ctx.run_dir / "graph", ctx.rank, ctx.world_size)
    open_graph_s = time.perf_counter() - start
    run = _Run(spec, ctx, data)
    ctx.log.info("rank %d owns nodes [%d, %d) of %d; %d edges; %d source tiles (%.0f MiB) built in %.1fs",
                 ctx.rank, run.lo, run.hi, data.graph.num_nodes, data.graph.num_edges, run.tiles.count,
                 run.tiles.nbytes / 2**20, run.partition_s)
    features = run.features()
    t = spec.training
    config = TrainConfig(**t.model_dump(exclude={"hop_cache_mb"}))
    rlu = None
    if spec.rlu.stages > 1:
        rlu = RLUConfig(stage_epochs=(t.epochs,) * spec.rlu.stages, threshold=spec.rlu.threshold,
                        temperature=spec.rlu.temperature, gamma=spec.rlu.gamma)
    split = Split(data.train_idx, data.valid_idx, data.test_idx)
    start = time.perf_counter()
    results = fit(lambda stage: build_model(spec, data.features.shape[1], data.num_classes), features,
                  np.asarray(data.labels), split, data.num_classes, config, rlu,
                  run.label_propagator if spec.propagation.label_hops else None, ctx.log.info,
                  Share(ctx.rank, ctx.world_size), run.make_optimizer, run.on_step, run.on_eval,
                  label_folds=spec.propagation.label_folds, progress=run.progress)
    train_s = time.perf_counter() - start
    train_start = [start] + run.eval_times[:-1]
    final = results[-1]
    ctx.report(run.step, {"val_acc": final.valid_acc, "test_acc": final.test_acc})
    out: dict[str, Any] = {
        "valid_acc": final.valid_acc, "test_acc": final.test_acc,
        "stages": [{"stage": r.stage, "valid_acc": r.valid_acc, "test_acc": r.test_acc, "best_epoch": r.best_epoch,
                    "confident": 0 if r.teacher is None else int(len(r.teacher.ids))} for r in results],
        "nodes": data.graph.num_nodes, "edges": data.graph.num_edges,
        "open_graph_s": open_graph_s, "graph_timings": data.meta.get("timings", {}), "partition_s": run.partition_s,
        "propagation_s": run.propagation_s, "hop_s": run.hop_timings, "train_s": train_s,
        "epoch_s": [b - a for a, b in zip(train_start, run.eval_times)],
        "hop_cache_bytes": run.feature_cache_bytes, "worker_peak_rss_bytes": peak_rss_bytes(),
        "worker_cpu_s": time.process_time(), "model_digest": ctx.ps.digest([model_table(r.stage) for r in results]),
    }
    if ctx.rank == 0:
        stats = ctx.ps.stats()
        out["ps_peak_rss_bytes"] = [s.peak_rss_bytes for s in stats]
        out["ps_ram_budget_bytes"] = [s.ram_budget for s in stats]
        out["ps_lmdb_bytes"] = [s.lmdb_bytes for s in stats]
        out["hop_bytes"] = run.hop_bytes
        graph_dir = Path(spec.graph.path) if spec.graph.path else ctx.run_dir / "graph"
        out["graph_disk_bytes"] = sum(f.stat().st_size for f in graph_dir.rglob("*") if f.is_file())
    return out


@register("gnn.gamlp")
class GNNJob(Job):
    """GAMLP (or SGC, SIGN, S²GC, GBP) with hop features on the PS."""

    Spec = GNNSpec

    def total_steps(self) -> int:
        """Propagation clocks plus an estimate of the training steps (early stopping may end sooner)."""
        s: GNNSpec = self.spec
        p = s.propagation
        hops = p.hops + 1 + (p.label_hops + 1) * p.label_folds * s.rlu.stages * (p.label_hops > 0)
        train = s.graph.expected_train_nodes()
        per_epoch = max(1, math.ceil(train / s.training.batch_size))
        return hops + s.training.epochs * s.rlu.stages * per_epoch

    def run(self, ctx: JobContext) -> dict[str, Any]:
        return run_gnn(self.spec, ctx)
