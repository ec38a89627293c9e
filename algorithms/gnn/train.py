"""Mini-batch training of decoupled GNNs from precomputed hop rows, with early stopping and GAMLP's RLU.

The trainer never sees the graph: it asks a :class:`HopSource` for the hop rows of a batch of node ids (in RAM
here, from PS tables in the distributed job), so the same loop trains on a laptop graph or on papers100M-sized hops.

RLU (reliable label utilization, GAMLP §3.3) runs stages: stage 0 trains as usual (the label branch reads the
propagated training labels); stage m > 0 takes the previous stage's best-model predictions on the valid and test
nodes, ``P = softmax(logits / T)``, keeps the *confident* nodes (``max P > ε``), adds their ``P`` to the label
seed that is re-propagated for the label branch, and adds the distillation term on them:
``loss = CE(train) · b1/(b1+b2) + γ · mean_i α_i KL(P_i ‖ softmax(out_i)) · b2/(b1+b2)``, ``α_i = max P_i``, where
``b1``, ``b2`` are the train and confident parts of a batch (batches hold both in proportion).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, replace
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seraphim.algorithms.gnn.csr import CSRGraph, GraphError
from seraphim.algorithms.gnn.graph_io import iter_chunks
from seraphim.algorithms.gnn.operators import GraphOp, softmax
from seraphim.algorithms.gnn.propagation import train_one_hot

__all__ = [
    "HopSource", "InMemoryHops", "CachedHops", "LabelPropagator", "graph_label_propagator", "FoldedLabels",
    "folded_label_input", "Split", "TrainConfig", "RLUConfig",
    "SELECTIONS", "Teacher", "StageResult", "StageState", "Progress", "Share", "Stepper", "MakeOptimizer", "predict",
    "accuracy", "train_stage", "fit",
]


class HopSource(Protocol):
    """Rows of precomputed hop matrices by node id."""

    def fetch(self, node_ids: np.ndarray) -> list[np.ndarray]:
        """float32 ``[len(node_ids), d]`` per level, in level order, for int64 ``node_ids`` (any order)."""
        ...


class InMemoryHops:
    """A :class:`HopSource` over numpy hop matrices, stored node-major (``[n, L, d]``) so a batch is one gather."""

    def __init__(self, levels: Sequence[np.ndarray]) -> None:
        if len(levels) == 0:
            raise GraphError("InMemoryHops needs at least one level")
        shapes = {lvl.shape for lvl in levels}
        if len(shapes) != 1 or levels[0].ndim != 2:
            raise GraphError(f"every level must be the same 2-D [n, d] shape, got {sorted(shapes)}")
        self.stacked = np.ascontiguousarray(np.stack(levels, axis=1), dtype=np.float32)

    def fetch(self, node_ids: np.ndarray) -> list[np.ndarray]:
        rows = self.stacked[node_ids]
        return [rows[:, l] for l in range(rows.shape[1])]


class CachedHops:
    """A :class:`HopSource` that holds the rows of ``ids`` (sorted, unique) in RAM, ``stacked`` ``[len(ids), L, d]``
    in level order, and asks ``source`` only for other ids: training reads the same nodes (the split) every epoch,
    and a remote source (PS tables) would send them every time. :meth:`pull` reads the rows from the source once;
    the distributed job instead copies each level's rows while the level is fresh on the PS."""

    def __init__(self, source: HopSource, ids: np.ndarray, stacked: np.ndarray) -> None:
        if ids.ndim != 1 or len(ids) == 0 or np.any(ids[1:] <= ids[:-1]):
            raise GraphError("CachedHops needs a non-empty, ascending, repeat-free int64 id vector")
        if stacked.ndim != 3 or stacked.shape[0] != len(ids):
            raise GraphError(f"CachedHops rows must be [len(ids)={len(ids)}, levels, dim], got {stacked.shape}")
        self.source, self.ids, self.stacked = source, ids.astype(np.int64, copy=False), stacked

    @classmethod
    def pull(cls, source: HopSource, ids: np.ndarray, rows_per_fetch: int = 65536) -> "CachedHops":
        """The rows of ``ids`` (any order, repeats allowed) read from ``source``, ``rows_per_fetch`` at a time."""
        if rows_per_fetch < 1:
            raise GraphError(f"rows_per_fetch must be >= 1, got {rows_per_fetch}")
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if len(ids) == 0:
            raise GraphError("CachedHops needs at least one node id to cache")
        stacked: np.ndarray | None = None
        for lo, hi in iter_chunks(len(ids), rows_per_fetch):
            levels = source.fetch(ids[lo:hi])
            if stacked is None:
                stacked = np.empty((len(ids), len(levels), levels[0].shape[1]), np.float32)
            for l, rows in enumerate(levels):
                stacked[lo:hi, l] = rows
        return cls(source, ids, stacked)

    @property
    def nbytes(self) -> int:
        return self.stacked.nbytes

    def fetch(self, node_ids: np.ndarray) -> list[np.ndarray]:
        node_ids = np.asarray(node_ids, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.ids, node_ids), len(self.ids) - 1)
        hit = self.ids[pos] == node_ids
        rows = self.stacked[pos]
        if not hit.all():
            missed = np.flatnonzero(~hit)
            for l, level in enumerate(self.source.fetch(node_ids[missed])):
                rows[missed, l] = level
        return [rows[:, l] for l in range(rows.shape[1])]


#: ``(seed_ids int64 [m], seed_rows float32 [m, C]) -> HopSource`` whose last level is the label input ``Ŷ^(K)``:
#: the seed ``Ŷ^(0)`` is ``seed_rows`` at ``seed_ids`` and zero elsewhere (one-hot training labels, plus the
#: teacher's soft labels of the confident nodes under RLU).
LabelPropagator = Callable[[np.ndarray, np.ndarray], HopSource]


def graph_label_propagator(graph: CSRGraph, op: GraphOp) -> LabelPropagator:
    """An in-memory :data:`LabelPropagator`: seeds propagated by ``op`` over ``graph``; keeps only ``Ŷ^(K)``."""

    def propagate(seed_ids: np.ndarray, seed_rows: np.ndarray) -> HopSource:
        seed = np.zeros((graph.num_nodes, seed_rows.shape[1]), np.float32)
        seed[seed_ids] = seed_rows
        return InMemoryHops([op(graph, seed)[-1]])

    return propagate


class FoldedLabels:
    """Leak-free label input: seed node ``i`` in fold ``f`` reads ``Ŷ`` propagated from every seed *outside* fold
    ``f``, so its own label never reaches its input through the return paths of ``Â^K`` (which a model would learn
    to copy, on training nodes only); any other node reads the mean over folds, which by linearity is
    ``(F-1)/F`` of the full propagation: the same seed density the seeds themselves see."""

    def __init__(self, folds: Sequence[HopSource], fold_of: np.ndarray) -> None:
        self.folds, self.fold_of = list(folds), fold_of

    def fetch(self, node_ids: np.ndarray) -> list[np.ndarray]:
        per_fold = np.stack([src.fetch(node_ids)[-1] for src in self.folds])     # [F, B, C]
        out = per_fold.mean(0)
        fold = self.fold_of[node_ids]
        seeded = fold >= 0
        out[seeded] = per_fold[fold[seeded], np.nonzero(seeded)[0]]
        return [out]


def folded_label_input(propagate: LabelPropagator, seed_ids: np.ndarray, seed_rows: np.ndarray, num_nodes: int,
                       folds: int, rng: np.random.Generator) -> HopSource:
    """The label input for the seeds: one propagation (``folds=1``, GAMLP as published, own labels leak into
    their input) or :class:`FoldedLabels` over ``folds`` random folds of the seeds (``folds`` propagations)."""
    if folds == 1:
        return propagate(seed_ids, seed_rows)
    fold = rng.permutation(len(seed_ids)) % folds
    fold_of = np.full(num_nodes, -1, np.int64)
    fold_of[seed_ids] = fold
    return FoldedLabels([propagate(seed_ids[fold != f], seed_rows[fold != f]) for f in range(folds)], fold_of)


@dataclass(frozen=True)
class Split:
    """Disjoint int64 node-id arrays: ``train`` (labels used), ``valid`` (early stopping), ``test``."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray

    def __post_init__(self) -> None:
        parts = {"train": self.train, "valid": self.valid, "test": self.test}
        for name, ids in parts.items():
            if ids.ndim != 1 or ids.dtype != np.int64 or len(ids) == 0:
                raise GraphError(f"split.{name} must be a non-empty 1-D int64 array, got {ids.dtype} {ids.shape}")
        union = np.concatenate(list(parts.values()))
        if len(np.unique(union)) != len(union):
            raise GraphError("split.train, split.valid and split.test must be disjoint")

    @property
    def evaluated(self) -> np.ndarray:
        """``valid`` then ``test``: the nodes whose predictions RLU may trust."""
        return np.concatenate([self.valid, self.test])


SELECTIONS = ("best_valid", "last")  #: which weights a stage keeps (see TrainConfig)


@dataclass(frozen=True)
class TrainConfig:
    """One stage's optimisation: Adam, mini-batches, and which weights to keep: ``select="best_valid"`` early-stops
    on validation accuracy and keeps the best epoch's weights (GAMLP's and SIGN's protocol); ``"last"`` trains every
    epoch and keeps the final weights (SGC's protocol: a fixed budget, the validation set only reported)."""

    epochs: int = 100
    batch_size: int = 2048
    eval_batch_size: int = 16384
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 20          #: stop after this many epochs without a better validation accuracy
    eval_every: int = 1
    seed: int = 0
    select: str = "best_valid"

    def __post_init__(self) -> None:
        if min(self.epochs, self.batch_size, self.eval_batch_size, self.patience, self.eval_every) < 1:
            raise ValueError(f"epochs, batch sizes, patience and eval_every must all be >= 1, got {self}")
        if self.select not in SELECTIONS:
            raise ValueError(f"select must be one of {SELECTIONS}, got {self.select!r}")


@dataclass(frozen=True)
class RLUConfig:
    """GAMLP's reliable label utilization: epochs per stage (stage 0 first), confidence threshold ``ε``,
    temperature ``T`` (``P = softmax(logits/T)``) and distillation weight ``γ``."""

    stage_epochs: tuple[int, ...] = (100, 100, 100)
    threshold: float = 0.85
    temperature: float = 1.0
    gamma: float = 1.0

    def __post_init__(self) -> None:
        if len(self.stage_epochs) < 1 or min(self.stage_epochs) < 1:
            raise ValueError(f"stage_epochs must hold at least one positive count, got {self.stage_epochs}")
        if not 0.0 <= self.threshold < 1.0 or self.temperature <= 0 or self.gamma < 0:
            raise ValueError(f"need 0 <= threshold < 1, temperature > 0, gamma >= 0; got threshold="
                             f"{self.threshold}, temperature={self.temperature}, gamma={self.gamma}")


@dataclass(frozen=True)
class Teacher:
    """The previous stage's soft labels ``probs`` ``[m, C]`` of its confident nodes ``ids`` ``[m]``."""

    ids: np.ndarray
    probs: np.ndarray


@dataclass
class StageResult:
    """What one stage produced; ``eval_logits`` are the best model's logits on ``split.evaluated``."""

    stage: int
    best_epoch: int
    epochs_run: int
    valid_acc: float
    test_acc: float
    seconds: float
    eval_logits: np.ndarray
    teacher: Teacher | None = None
    pseudo_acc: float = math.nan       #: accuracy of the teacher's labels on its confident nodes (report only)

    def line(self) -> str:
        extra = "" if self.teacher is None else (f" confident={len(self.teacher.ids)}"
                                                  f" pseudo_acc={self.pseudo_acc:.4f}")
        return (f"stage {self.stage}: valid={self.valid_acc:.4f} test={self.test_acc:.4f} best_epoch="
                f"{self.best_epoch}/{self.epochs_run}{extra} ({self.seconds:.1f}s)")


def _tensors(rows: list[np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(r)) for r in rows]


def _label_rows(label_input: HopSource | None, ids: np.ndarray) -> torch.Tensor | None:
    return None if label_input is None else torch.from_numpy(np.ascontiguousarray(label_input.fetch(ids)[-1]))


@torch.no_grad()
def predict(model: nn.Module, features: HopSource, node_ids: np.ndarray, label_input: HopSource | None = None,
            batch_size: int = 16384) -> np.ndarray:
    """Logits ``[len(node_ids), C]`` in eval mode, batch by batch."""
    was_training = model.training
    model.eval()
    try:
        out = [model(_tensors(features.fetch(ids)), _label_rows(label_input, ids)).numpy()
               for ids in np.array_split(node_ids, max(1, math.ceil(len(node_ids) / batch_size)))]
    finally:
        model.train(was_training)
    return np.concatenate(out)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean()) if len(labels) else math.nan


def _batches(rng: np.random.Generator, n_train: int, n_extra: int, batch_size: int, share: Share
             ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled positions into train and teacher sets, cut into the same number of proportional batches; a worker
    of several keeps every ``world``-th position, and all cut their shares into the same number of batches."""
    steps = max(1, math.ceil(math.ceil((n_train + n_extra) / share.world) / batch_size))
    train_parts = np.array_split(rng.permutation(n_train)[share.rank::share.world], steps)
    extra_parts = np.array_split(rng.permutation(n_extra)[share.rank::share.world], steps)
    return list(zip(train_parts, extra_parts))


@dataclass(frozen=True)
class Share:
    """Data parallelism: this worker's ``rank`` of ``world``. Every worker draws the same permutation per epoch
    (same seed) and trains on its slice; the model is kept in step by the optimizer (one on the PS, say)."""

    rank: int = 0
    world: int = 1


@dataclass
class StageState:
    """A stage's training at an evaluation, saved there so that a restarted worker carries on from it: the
    early-stopping record, the batch generator's and torch's random states after ``epoch``."""

    stage: int
    epoch: int
    best_val: float
    best_epoch: int
    stale: int
    best_state: dict[str, torch.Tensor]
    batch_rng: dict
    torch_rng: torch.Tensor


class Progress(Protocol):
    """Where a data-parallel worker keeps its training progress (the job keeps it in its run directory)."""

    def finished(self, stage: int) -> StageResult | None:
        """The result of `stage` when this worker had finished it before a restart."""

    def saved(self, stage: int) -> StageState | None:
        """The last state of `stage` this worker saved before a restart."""

    def save(self, record: StageState | StageResult) -> None: ...

    def trained(self) -> bool:
        """Whether the next step was trained before a restart (its update is on the PS already): it is then only
        replayed for its random draws."""


class Stepper(Protocol):
    """What training needs of an optimizer: a torch optimizer, or a PS-backed one shared by the workers."""

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def step(self) -> None: ...


#: ``(model, stage) -> Stepper``; the default is Adam on this process.
MakeOptimizer = Callable[[nn.Module, int], Stepper]


def train_stage(model: nn.Module, features: HopSource, labels: np.ndarray, split: Split, config: TrainConfig,
                label_input: HopSource | None = None, teacher: Teacher | None = None, gamma: float = 0.0,
                stage: int = 0, log: Callable[[str], None] | None = None, share: Share = Share(),
                make_optimizer: MakeOptimizer | None = None,
                on_step: Callable[[float], None] | None = None,
                on_eval: Callable[[int, float], None] | None = None,
                progress: Progress | None = None) -> StageResult:
    """Train ``model`` (``model(hops, label_rows) -> logits``) on ``split.train`` until early stopping; reload the
    best-validation weights and return their accuracies and logits. ``teacher`` adds the RLU distillation term.

    Several workers (``share``) each evaluate the same validation set with the same synchronized weights, so they
    take the same early-stopping decisions without talking; ``on_step(loss)`` and ``on_eval(epoch, valid_acc)``
    report progress. ``progress`` saves the stage's state at each evaluation and restores it after a restart."""
    rng = np.random.default_rng(config.seed * 1_000_003 + stage)
    optimizer = (make_optimizer(model, stage) if make_optimizer is not None else
                 torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay))
    y_train = torch.from_numpy(labels[split.train].astype(np.int64))
    n_extra = 0 if teacher is None else len(teacher.ids)
    teacher_probs = None if teacher is None else torch.from_numpy(teacher.probs.astype(np.float32))
    best_val, best_epoch, best_state, stale, epoch = -1.0, 0, copy.deepcopy(model.state_dict()), 0, 0
    saved = progress.saved(stage) if progress is not None else None
    if saved is not None:
        rng.bit_generator.state = saved.batch_rng
        torch.set_rng_state(saved.torch_rng)
        best_val, best_epoch, best_state, stale, epoch = (saved.best_val, saved.best_epoch, saved.best_state,
                                                          saved.stale, saved.epoch)
    start = time.perf_counter()
    stopped = config.select != "last" and stale >= config.patience  # restored after its early stop
    for epoch in range(epoch + 1, (epoch if stopped else config.epochs) + 1):
        model.train()
        for tr_pos, ex_pos in _batches(rng, len(split.train), n_extra, config.batch_size, share):
            ids = split.train[tr_pos] if teacher is None else np.concatenate([split.train[tr_pos], teacher.ids[ex_pos]])
            if progress is not None and progress.trained():
                _replay(model, _tensors(features.fetch(ids)), _label_rows(label_input, ids))
                continue
            out = model(_tensors(features.fetch(ids)), _label_rows(label_input, ids))
            b1, b2 = len(tr_pos), len(ex_pos)
            loss = F.cross_entropy(out[:b1], y_train[tr_pos]) * (b1 / (b1 + b2)) if b1 else out.sum() * 0.0
            if b2:
                p = teacher_probs[ex_pos]
                kl = (p * (torch.log(p.clamp_min(1e-8)) - F.log_softmax(out[b1:], dim=1))).sum(1)
                loss = loss + gamma * (p.max(1).values * kl).mean() * (b2 / (b1 + b2))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if on_step is not None:
                on_step(loss.item())
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            val = accuracy(predict(model, features, split.valid, label_input, config.eval_batch_size),
                           labels[split.valid])
            if on_eval is not None:
                on_eval(epoch, val)
            if config.select != "last":
                if val > best_val:
                    best_val, best_epoch, stale = val, epoch, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    stale += config.eval_every
            if progress is not None:
                progress.save(StageState(stage, epoch, best_val, best_epoch, stale, best_state,
                                         rng.bit_generator.state, torch.get_rng_state()))
            if config.select != "last" and stale >= config.patience:
                break
    if config.select == "last":
        best_epoch = epoch
    else:
        model.load_state_dict(best_state)
    logits = predict(model, features, split.evaluated, label_input, config.eval_batch_size)
    n_val = len(split.valid)
    result = StageResult(stage, best_epoch, epoch, accuracy(logits[:n_val], labels[split.valid]),
                         accuracy(logits[n_val:], labels[split.test]), time.perf_counter() - start, logits, teacher)
    if teacher is not None:
        result.pseudo_acc = accuracy(teacher.probs, labels[teacher.ids])
    if log is not None:
        log(result.line())
    return result


def _replay(model: nn.Module, hops: list[torch.Tensor], label_rows: torch.Tensor | None) -> None:
    """A step trained before a restart: its forward draws dropout's random numbers as it did, so the steps after
    it match; its buffers are left as they were (the optimizer restored the workers' batch-norm statistics)."""
    buffers = [b.clone() for b in model.buffers()]
    with torch.no_grad():
        model(hops, label_rows)
        for b, kept in zip(model.buffers(), buffers):
            b.copy_(kept)


def _teacher(previous: StageResult, split: Split, rlu: RLUConfig) -> Teacher:
    probs = softmax(previous.eval_logits / rlu.temperature)
    confident = probs.max(1) > rlu.threshold
    return Teacher(split.evaluated[confident], probs[confident])


def fit(build_model: Callable[[int], nn.Module], features: HopSource, labels: np.ndarray, split: Split,
        num_classes: int, config: TrainConfig, rlu: RLUConfig | None = None,
        label_propagator: LabelPropagator | None = None,
        log: Callable[[str], None] | None = None, share: Share = Share(),
        make_optimizer: MakeOptimizer | None = None, on_step: Callable[[float], None] | None = None,
        on_eval: Callable[[int, float], None] | None = None, label_folds: int = 1,
        progress: Progress | None = None) -> list[StageResult]:
    """The trainer's entry point: one stage (``rlu=None``, ``config.epochs``) or the RLU stages.

    ``build_model(stage)`` makes a fresh model per stage, after torch's RNG is seeded from ``config.seed`` and the
    stage, so a run is reproducible. With ``label_propagator`` the label branch reads ``Ŷ^(K)`` of the seed:
    training labels one-hot, plus (stage > 0) the teacher's soft labels of the confident valid/test nodes.
    ``share``, ``make_optimizer``, ``on_step`` and ``on_eval`` go to :func:`train_stage` (data-parallel workers).
    ``label_folds`` > 1 keeps every seed's own label out of its own input (:class:`FoldedLabels`). ``progress``
    keeps each finished stage's result and each evaluation's state, so a restarted worker carries on.
    """
    if label_folds < 1:
        raise ValueError(f"label_folds must be >= 1 (1 = one propagation of all seeds), got {label_folds}")
    num_nodes = len(labels)
    stage_epochs = (config.epochs,) if rlu is None else rlu.stage_epochs
    seed_ids = split.train
    seed_rows = train_one_hot(labels, split.train, num_classes)
    results: list[StageResult] = []
    for stage, epochs in enumerate(stage_epochs):
        finished = progress.finished(stage) if progress is not None else None
        if finished is not None:
            results.append(finished)
            continue
        teacher = None if stage == 0 else _teacher(results[-1], split, rlu)
        ids, rows = seed_ids, seed_rows
        if teacher is not None:
            ids, rows = np.concatenate([seed_ids, teacher.ids]), np.concatenate([seed_rows, teacher.probs])
        label_input = None if label_propagator is None else folded_label_input(
            label_propagator, ids, rows, num_nodes, label_folds, np.random.default_rng([config.seed, stage, 17]))
        torch.manual_seed(config.seed * 1_000_003 + stage)
        model = build_model(stage)
        result = train_stage(model, features, labels, split, replace(config, epochs=epochs), label_input, teacher,
                             0.0 if rlu is None else rlu.gamma, stage, log, share, make_optimizer, on_step, on_eval,
                             progress)
        if progress is not None:
            progress.save(result)
        results.append(result)
    return results
