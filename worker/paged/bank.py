"""A bank of equally shaped parameter sets (the routed experts of a mixture-of-experts model) in a versioned PS
table: a step pulls only the sets its inputs chose, pushes only their gradients, and tells the PS it has none for
the others of the same layer (ABSENT pushes, keys only), so each set is updated once per step from every worker's
sum as a stacked weight whose unchosen slices got zero gradient would be.

Usage::

    bank = ParameterBank(ps, "moe.experts", {"gate_proj": (F, D), "up_proj": (F, D), "down_proj": (D, F)},
                         count=L * E, optimizer=AdamW(lr=1e-3), ps_page_bytes=256 << 10, init=fill,
                         rank=rank, world_size=world, lr_scale=0.31)
    with bank.step(step, lr_scale=schedule(step)):          # inside the paged model's step
        w = bank.fetch(ids, among=range(l * E, (l + 1) * E))  # {"gate_proj": [len(ids), F, D], ...}
        ...                                                 # backward pushes each fetched set's gradient
    with bank.inference():
        w = bank.fetch(ids)

Dense parts of the model stay in the paged runtime (``runtime.py``): the bank is for parameters that a step touches
sparsely, where pulling whole pages in trace order would move what nobody uses.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from seraphim.proto.errors import InvalidArgument
from seraphim.worker.client import DenseTable, PSClient
from seraphim.worker.paged.layout import row_shape
from seraphim.worker.specs import AdamW, Zeros

InitSet = Callable[[int, str, torch.Tensor], None]  # fills set `index`'s tensor `name` in place


@dataclass
class BankStats:
    """Bytes and keys a bank moved (cumulative)."""

    pulled_bytes: int = 0
    pushed_bytes: int = 0
    absent_keys: int = 0
    sets_fetched: int = 0


class ParameterBank:
    """`count` sets of named tensors, set i in rows [i * rows_per_set, (i + 1) * rows_per_set) of one versioned
    table (see the module docstring)."""

    def __init__(self, client: PSClient, name: str, shapes: Mapping[str, Sequence[int]], count: int, *,
                 optimizer: AdamW, ps_page_bytes: int, init: InitSet, rank: int = 0, world_size: int = 1,
                 seed: int = 0, lr_scale: float = 1.0, ready_timeout_s: float = 600.0) -> None:
        if count < 1:
            raise InvalidArgument(f"parameter bank {name!r}: count must be >= 1, got {count}")
        if not (lr_scale > 0 and math.isfinite(lr_scale)):
            raise InvalidArgument(f"parameter bank {name!r}: lr_scale must be a finite number > 0, got {lr_scale}")
        self.name, self.count = name, count
        self.shapes = {k: tuple(int(d) for d in v) for k, v in shapes.items()}
        self._offsets: dict[str, tuple[int, int]] = {}
        numel = 0
        for key, shape in self.shapes.items():
            self._offsets[key] = (numel, math.prod(shape))
            numel += math.prod(shape)
        self.set_numel = numel
        padded = -(-numel // 256) * 256  # a multiple of a power of two, so rows can be wide
        self.rows = row_shape(padded, ps_page_bytes)
        self.rows_per_set = self.rows.rows_per_page
        self.set_bytes = padded * 4
        total = count * self.rows_per_set
        self.table: DenseTable = client.open_initialized(
            name, lambda: client.dense_table(name, (total, self.rows.row_dim), init=Zeros(), optimizer=optimizer,
                                             seed=seed, sum_workers=world_size,
                                             lr_scales=[(0, total, lr_scale)] if lr_scale != 1.0 else []),
            lambda table: self._write_initial(table, init), writer=rank == 0, timeout_s=ready_timeout_s)
        self.stats = BankStats()
        self._mode: str | None = None
        self._version = 0
        self._infer_version = 0
        self._lr_scale = 1.0
        self.step_grad_sq = 0.0  # |pushed gradient|^2 of the current step (the gradient noise scale's small batch)
        self._covered = np.zeros(count, dtype=bool)  # sets this step has pushed or abstained from
        self._fetched = np.zeros(count, dtype=bool)  # sets this step has fetched

    @property
    def training(self) -> bool:
        """Inside a training step (fetched sets take gradients)."""
        return self._mode == "train"

    # -- layout ------------------------------------------------------------------------------------------------
    def keys_of(self, sets: np.ndarray) -> np.ndarray:
        """PS rows of sets, set by set [len(sets) * rows_per_set]."""
        sets = np.asarray(sets, dtype=np.int64)
        return (sets[:, None] * self.rows_per_set + np.arange(self.rows_per_set)).reshape(-1)

    def _write_initial(self, table: DenseTable, init: InitSet) -> None:
        """Write the sets one at a time: at most one set is materialized."""
        for index in range(self.count):
            flat = torch.zeros(self.rows_per_set * self.rows.row_dim, dtype=torch.float32)
            for key, (start, n) in self._offsets.items():
                init(index, key, flat[start:start + n].view(self.shapes[key]))
            table.push(self.keys_of(np.array([index])), flat.numpy().reshape(self.rows_per_set, -1), mode="assign")

    # -- steps -------------------------------------------------------------------------------------------------
    @contextmanager
    def step(self, step: int, lr_scale: float = 1.0) -> Iterator[None]:
        """One training step: fetched sets push their gradients as version `step`, and on leaving every set not
        fetched (or whose gradient never came) is abstained from, so every set reaches version step + 1."""
        if self._mode is not None:
            raise RuntimeError(f"parameter bank {self.name!r} is already inside a {self._mode} context")
        self._mode, self._version, self._lr_scale = "train", step, lr_scale
        self._covered[:] = False
        self._fetched[:] = False
        self.step_grad_sq = 0.0
        try:
            yield
            self._abstain(np.flatnonzero(~self._covered))  # fetched sets the loss did not reach count as zeros too
            self._infer_version = step + 1
        finally:
            self._mode = None

    @contextmanager
    def inference(self, version: int | None = None) -> Iterator[None]:
        """Fetches without gradients, at `version` or later (default: what the last step's updates produce)."""
        if self._mode is not None:
            raise RuntimeError(f"parameter bank {self.name!r} is already inside a {self._mode} context")
        self._mode = "inference"
        if version is not None:
            self._infer_version = version
        try:
            with torch.no_grad():
                yield
        finally:
            self._mode = None

    def fetch(self, sets: Sequence[int] | np.ndarray, among: Iterable[int] = ()) -> dict[str, torch.Tensor]:
        """The tensors of `sets` (unique), each stacked [len(sets), *shape]; in a training step they require grad
        and backward pushes their gradient; the sets of `among` not fetched are abstained from at once."""
        if self._mode is None:
            raise RuntimeError(f"parameter bank {self.name!r}: fetch() runs inside bank.step() or bank.inference()")
        sets = np.asarray(sets, dtype=np.int64).reshape(-1)
        if len(sets) and (sets.min() < 0 or sets.max() >= self.count):
            bad = int(sets[(sets < 0) | (sets >= self.count)][0])
            raise InvalidArgument(f"parameter bank {self.name!r}: set {bad} is outside 0..{self.count - 1}")
        if len(np.unique(sets)) != len(sets):
            raise InvalidArgument(f"parameter bank {self.name!r}: fetch() takes unique sets, got {sets.tolist()}")
        training = self._mode == "train"
        if training and self._fetched[sets].any():
            raise RuntimeError(f"parameter bank {self.name!r}: set {int(sets[self._fetched[sets]][0])} was fetched "
                               f"twice in step {self._version}; fetch each set once per step")
        version = self._version if training else self._infer_version
        keys = self.keys_of(sets)
        values = (self.table.pull(keys, min_version=version) if len(keys)
                  else np.zeros((0, self.rows.row_dim), dtype=np.float32))
        self.stats.pulled_bytes += values.nbytes
        self.stats.sets_fetched += len(sets)
        flat = torch.from_numpy(values).view(len(sets), self.rows_per_set * self.rows.row_dim)[:, :self.set_numel]
        if training:
            self._fetched[sets] = True
            self._abstain(np.setdiff1d(np.fromiter(among, dtype=np.int64), sets))
            flat = flat.clone().requires_grad_(True)
            flat.register_post_accumulate_grad_hook(lambda leaf, ids=sets: self._grad_ready(ids, leaf))
        return {key: flat[:, start:start + n].view(len(sets), *self.shapes[key])
                for key, (start, n) in self._offsets.items()}

    def _grad_ready(self, sets: np.ndarray, leaf: torch.Tensor) -> None:
        grad = leaf.grad
        leaf.grad = None
        self._send(sets, grad.detach())

    def _send(self, sets: np.ndarray, grad: torch.Tensor) -> None:
        padded = np.zeros((len(sets), self.rows_per_set * self.rows.row_dim), dtype=np.float32)
        padded[:, :self.set_numel] = grad.numpy()
        self.table.push_async(self.keys_of(sets), padded.reshape(-1, self.rows.row_dim), version=self._version,
                              lr_scale=self._lr_scale)
        self._covered[sets] = True
        self.stats.pushed_bytes += padded.nbytes
        self.step_grad_sq += float(np.einsum("ij,ij->", padded, padded, dtype=np.float64))

    def _abstain(self, sets: np.ndarray) -> None:
        sets = sets[~self._covered[sets]]
        if len(sets):
            keys = self.keys_of(sets)
            self.table.abstain_async(keys, self._version)
            self._covered[sets] = True
            self.stats.absent_keys += len(keys)

    def read_all(self, version: int | None = None) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """Every set's tensors (float32), set by set, at `version` or later: for writing the model out."""
        need = self._infer_version if version is None else version
        for index in range(self.count):
            values = self.table.pull(self.keys_of(np.array([index])), min_version=need)
            flat = torch.from_numpy(values.reshape(-1)[:self.set_numel].copy())
            yield index, {key: flat[start:start + n].view(self.shapes[key])
                          for key, (start, n) in self._offsets.items()}
