"""The peer PS of the benchmarks: a parameter server on ``torch.distributed.rpc`` built as PyTorch's tutorial builds
one, sharded like ours (hash-routed keys), and its client. bench/ps_throughput.py and bench/load.py measure
Seraphim against it in the same run.

Imported as ``torch_rpc_ps`` by scripts run as ``python bench/<name>.py`` (bench/ is then on sys.path, also in the
processes they spawn, so that RPC can find these classes by name).
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
import torch
import torch.distributed.rpc as rpc

from seraphim.proto.partition import sparse_shard_of


class TorchRpcPS:
    """One shard of the tutorial-style PS: rows in a preallocated tensor that doubles when full, a direct key ->
    row tensor over the key space (vectorized, no dict), rows made on first touch, SGD by index_add_."""

    def __init__(self, num_keys: int, dim: int, lr: float, init_std: float, seed: int) -> None:
        self.row_of = torch.full((num_keys,), -1, dtype=torch.int64)
        self.weights = torch.empty((1 << 16, dim))
        self.num_rows = 0
        self.lr, self.init_std = lr, init_std
        self.gen = torch.Generator().manual_seed(seed)
        self.lock = threading.Lock()

    def _rows(self, keys: torch.Tensor) -> torch.Tensor:
        rows = self.row_of[keys]
        missing = rows < 0
        if bool(missing.any()):
            with self.lock:
                fresh = torch.unique(keys[missing])
                fresh = fresh[self.row_of[fresh] < 0]
                start, end = self.num_rows, self.num_rows + len(fresh)
                if end > len(self.weights):
                    grown = torch.empty((max(end, 2 * len(self.weights)), self.weights.shape[1]))
                    grown[:start] = self.weights[:start]
                    self.weights = grown
                self.weights[start:end].normal_(0.0, self.init_std, generator=self.gen)
                self.row_of[fresh] = torch.arange(start, end)
                self.num_rows = end
            rows = self.row_of[keys]
        return rows

    def pull(self, keys: torch.Tensor) -> torch.Tensor:
        rows = self._rows(keys)  # before reading self.weights: making rows may replace it with a larger tensor
        return self.weights[rows]

    def push(self, keys: torch.Tensor, grads: torch.Tensor) -> None:
        rows = self._rows(keys)
        self.weights.index_add_(0, rows, grads, alpha=-self.lr)


class TorchRpcClient:
    """The trainer side: hash-route keys as Seraphim does, rpc_async to both shards at once, tensors as args;
    repeated keys travel as they are (the server's index_add_ sums them)."""

    def __init__(self, shards: list[rpc.RRef], dim: int) -> None:
        self.shards, self.dim = shards, dim

    def _route(self, keys: np.ndarray) -> list[torch.Tensor]:
        shard = torch.from_numpy(sparse_shard_of(keys, len(self.shards)))
        return [shard == s for s in range(len(self.shards))]

    def pull_async(self, keys: np.ndarray) -> tuple[list[torch.Tensor], list[torch.futures.Future]]:
        masks, k = self._route(keys), torch.from_numpy(keys)
        return masks, [ps.rpc_async().pull(k[m]) for ps, m in zip(self.shards, masks)]

    def pull_wait(self, pending: tuple[list[torch.Tensor], list[torch.futures.Future]]) -> torch.Tensor:
        masks, futures = pending
        out = torch.empty((len(masks[0]), self.dim))
        for m, f in zip(masks, futures):
            out[m] = f.wait()
        return out

    def pull(self, keys: np.ndarray) -> torch.Tensor:
        return self.pull_wait(self.pull_async(keys))

    def push_async(self, keys: np.ndarray, grads: torch.Tensor) -> list[torch.futures.Future]:
        masks, k = self._route(keys), torch.from_numpy(keys)
        return [ps.rpc_async().push(k[m], grads[m]) for ps, m in zip(self.shards, masks)]

    def push(self, keys: np.ndarray, grads: torch.Tensor) -> None:
        torch.futures.wait_all(self.push_async(keys, grads))


def init_torch_rpc(name: str, rank: int, world_size: int, port: int, timeout_s: float = 120.0) -> None:
    """Join the RPC group at 127.0.0.1:port with one intra-op thread (the processes share a small host)."""
    warnings.filterwarnings("ignore", message="You are using a Backend", category=UserWarning)
    torch.set_num_threads(1)
    rpc.init_rpc(name, rank=rank, world_size=world_size, rpc_backend_options=rpc.TensorPipeRpcBackendOptions(
        init_method=f"tcp://127.0.0.1:{port}", rpc_timeout=timeout_s))


_SHARD: TorchRpcPS | None = None  # the shard a PS process holds for every client of its group (hold_shard)


def hold_shard(num_keys: int, dim: int, lr: float, init_std: float, seed: int) -> None:
    """In a PS process, before it joins the group: make the one shard that all its clients share (shard_rref)."""
    global _SHARD
    _SHARD = TorchRpcPS(num_keys, dim, lr, init_std, seed)


def shard_rref() -> rpc.RRef:
    """Run by RPC on a PS process that called hold_shard: a reference to its shard, for a client's TorchRpcClient."""
    if _SHARD is None:
        raise RuntimeError("this process holds no shard: call hold_shard before joining the RPC group")
    return rpc.RRef(_SHARD)
