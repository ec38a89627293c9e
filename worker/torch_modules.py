"""torch integration: an embedding whose rows live in a PS sparse table, and dense parameters kept on the PS.

PSEmbedding pulls in forward and pushes its gradient from backward (asynchronously; ``client.clock()`` waits for
it). PSParameters packs a module's parameters into one dense table, range-partitioned over the shards, so a
step is one pull and one push whatever the number of tensors.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from seraphim.proto.errors import InvalidArgument
from seraphim.worker.client import DenseTable, PSClient, Table
from seraphim.worker.specs import Optimizer, Zeros


class _PullPush(torch.autograd.Function):
    """Forward: rows of keys from the PS. Backward: their gradient to the PS; nothing flows to the keys."""

    @staticmethod
    def forward(ctx, anchor: torch.Tensor, keys: torch.Tensor, table: Table) -> torch.Tensor:
        ctx.table = table
        ctx.keys = keys.detach().cpu().numpy()
        return torch.from_numpy(table.pull(ctx.keys))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.table.push_async(ctx.keys, grad.detach().cpu().numpy().astype(np.float32, copy=False))
        return None, None, None


class PSEmbedding(torch.nn.Module):
    """An embedding lookup over a PS table: forward(keys [...]) -> [..., dim]; backward pushes the gradients."""

    def __init__(self, table: Table) -> None:
        super().__init__()
        self.table = table
        self.dim = table.dim
        # autograd records a Function only when an input requires grad: this empty tensor is that input.
        self._anchor = torch.empty(0, requires_grad=True)

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        if keys.dtype not in (torch.int64, torch.int32):
            raise InvalidArgument(f"PSEmbedding({self.table.name!r}) takes integer keys, got {keys.dtype}")
        if not torch.is_grad_enabled():  # evaluation: read, never create rows for unseen keys
            return torch.from_numpy(self.table.pull(keys.detach().cpu().numpy(), create=False))
        return _PullPush.apply(self._anchor, keys, self.table)

    def extra_repr(self) -> str:
        return f"table={self.table.name!r}, dim={self.dim}"


class PSParameters:
    """A module's dense parameters kept in one PS table: pull() before forward, push() after backward.

    Worker 0 creates the table from its module's current values; the other workers wait until a marker table
    says the values are in place, so every worker starts from the same weights. A restarted worker 0 finds the
    table in place and keeps the trained values.
    """

    def __init__(self, client: PSClient, name: str, named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
                 optimizer: Optimizer, cols: int = 1024, ready_timeout_s: float = 120.0) -> None:
        self.client = client
        self.name = name
        self.params = [(n, p) for n, p in named_parameters if p.requires_grad]
        if not self.params:
            raise InvalidArgument(f"PSParameters({name!r}) got no trainable parameters")
        self.numel = sum(p.numel() for _, p in self.params)
        self.cols = min(cols, self.numel)
        self.rows = -(-self.numel // self.cols)
        if client.worker_id != 0:
            client.wait_initialized(name, ready_timeout_s)
        self.table: DenseTable = client.dense_table(name, (self.rows, self.cols), init=Zeros(), optimizer=optimizer)
        if client.worker_id == 0:
            if self.table.created or not client.initialized(name):
                self.table.push_all(self._padded(self._flat(p.detach() for _, p in self.params)), mode="assign")
            client.publish_initialized(name)

    @staticmethod
    def _flat(tensors: Iterable[torch.Tensor]) -> np.ndarray:
        return torch.cat([t.reshape(-1).to(torch.float32) for t in tensors]).numpy()

    def _padded(self, flat: np.ndarray) -> np.ndarray:
        out = np.zeros(self.rows * self.cols, dtype=np.float32)
        out[: len(flat)] = flat
        return out.reshape(self.rows, self.cols)

    @torch.no_grad()
    def pull(self) -> None:
        """Copy the PS values into the module's parameters."""
        flat = torch.from_numpy(self.table.pull_all().reshape(-1)[: self.numel])
        offset = 0
        for _, p in self.params:
            n = p.numel()
            p.copy_(flat[offset:offset + n].view_as(p))
            offset += n

    def push(self, wait: bool = False) -> None:
        """Send every parameter's .grad (zeros where None) as one gradient push; clock() waits for it."""
        grads = self._flat(p.grad if p.grad is not None else torch.zeros_like(p) for _, p in self.params)
        future = self.table.push_async(np.arange(self.rows, dtype=np.int64), self._padded(grads))
        if wait:
            future.result()


class PSOptimizer:
    """A torch-optimizer stand-in for a model kept in PSParameters: ``step()`` pushes the gradients, ends the
    worker's clock (under BSP every worker's push of this step is then applied) and pulls the updated weights, so
    data-parallel workers stay on the same weights while the optimizer itself runs on the PS. Only on a
    deterministic PS (``consistency.deterministic``) are they bitwise the same: otherwise a faster worker's push
    of the next step may land before a slower worker's pull.

    With ``module``, its floating-point buffers (batch-norm running statistics) are averaged over the workers at
    every step as well, through one PS row per worker and clock, so evaluation gives the same answer on every
    worker. The rows of consecutive clocks alternate over staleness + 2 blocks: a worker that runs ahead writes
    the next clock's block while a slower one still reads this one's. Each row ends with the clock it was written
    for, so a restarted worker takes the mean of the last completed clock back (its own buffers were lost).
    """

    def __init__(self, params: PSParameters, module: torch.nn.Module | None = None) -> None:
        self.params = params
        client = params.client
        self.buffers = [b for b in (module.buffers() if module is not None else ()) if b.is_floating_point()]
        self.buffer_table: DenseTable | None = None
        if self.buffers:
            numel = sum(b.numel() for b in self.buffers)
            self.blocks = 2 + max(0, max(h.staleness for h in client.health()))
            self.buffer_table = client.dense_table(f"{params.name}.buffers",
                                                   (self.blocks * client.num_workers, numel + 1))
            if client.clock_value > 0:
                self._restore_buffers()
        params.pull()

    def _rows(self, clock: int) -> np.ndarray:
        """The buffer rows the workers write in the step that ends at `clock` + 1."""
        workers = self.params.client.num_workers
        return (clock % self.blocks) * workers + np.arange(workers, dtype=np.int64)

    def _restore_buffers(self) -> None:
        """A restarted worker: the buffers every worker loaded after the last completed clock, when a step of this
        model wrote them (a model whose first step is still to come keeps its initial buffers)."""
        clock = self.params.client.clock_value
        rows = self.buffer_table.pull(self._rows(clock - 1))
        if (rows[:, -1] == clock).all():
            self._load_mean(rows[:, :-1].mean(axis=0))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for _, p in self.params.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def step(self) -> None:
        self.params.push()
        client = self.params.client
        if self.buffer_table is None:
            client.clock()
            self.params.pull()
            return
        rows = self._rows(client.clock_value)
        own = torch.cat([b.detach().reshape(-1).to(torch.float32) for b in self.buffers]
                        + [torch.tensor([client.clock_value + 1], dtype=torch.float32)]).numpy()
        self.buffer_table.push_async(rows[client.worker_id:client.worker_id + 1], own[None, :], mode="assign")
        client.clock()
        self.params.pull()
        self._load_mean(self.buffer_table.pull(rows)[:, :-1].mean(axis=0))

    @torch.no_grad()
    def _load_mean(self, flat: np.ndarray) -> None:
        offset = 0
        for b in self.buffers:
            b.copy_(torch.from_numpy(flat[offset:offset + b.numel()]).view_as(b))
            offset += b.numel()
