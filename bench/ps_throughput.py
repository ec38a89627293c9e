"""Sparse pull/push throughput of Seraphim's PS against two peers measured in the same run on the same keys.

Workload: batches of 8192 int64 keys drawn Zipf(1.1) over 10M keys (CTR traffic), dim 64 float32, 2 PS shards on
loopback. Rows/s counts the rows the caller asked for (repeats included); MB/s is those rows times dim x 4 bytes.

Peers:

(a) ``grpc_echo``, the raw gRPC ceiling: an echo service in 2 processes moving the batch's bytes as a plain PS
    protocol would, for the same keys. Pull: every requested key (8192 a batch, routed by shard, repeats included)
    up, a row of dim x 4 bytes per key back (8192 x 256 B a batch); push: the keys and all 8192 gradient rows up,
    8 bytes back. It does no routing, merging, lookup or codec work (payloads are precomputed), so merging the
    duplicate keys of a batch is one of the ways a PS can beat it, as the issue intends. ``grpc_echo_dedup``, shown
    apart and not a target, moves only the bytes our client puts on the wire (unique keys up, their rows down;
    unique keys and merged gradients up): the pure transport cost of what we send. Both are called the way our
    client calls its shards: one blocking call on the calling thread, the others on a persistent thread pool (a
    grpc ``.future()`` starts a channel thread whenever none is in flight; it made the echo 20-40% slower here).
(b) ``torch_rpc``: a parameter server on ``torch.distributed.rpc`` built as PyTorch's tutorial builds one, sharded
    like ours, called with ``rpc_async`` to both shards at once.

Synchronous figures (``*_pull``, ``*_push``: one batch at a time) give the headline ratios, the issue's terms.
Pipelined figures (``*_pull_pipelined``, ``*_push_pipelined``) keep --depth batches in flight, as a training loop
that prefetches the next batch and pushes without waiting does (our pull_async / push_async); each peer gets the
same depth through its own async API (rpc_async futures for torch; for the echo, whole batches on a pool of
--depth threads, which beat grpc futures here), and those ratios are printed beside the headline.

All systems are started and warmed up first, then measured in interleaved rounds (each of --passes passes over
the batches split into --rounds slices, the system order rotating each round); a figure is the median over the
rounds of that round's rate, so a burst of load from elsewhere on the host skews neither one system nor the
result. The warm-up pulls every batch once, in order, so each PS makes its rows in first-touch order as the first
pass of training does (hot keys early); making them in key order would scatter the hot rows over the store, an
order no workload has. While one system is measured the processes of the others are paused (SIGSTOP), because
idle is not free for all of them: torch's TensorPipe agents poll, about 15% of a core per process here. Every
process runs with the same glibc heap top pad (--malloc-top-pad-mb, see pad_malloc), without which the echo's
1 MB messages pay page faults our 0.45 MB ones do not.

    python bench/ps_throughput.py [--batches 50] [--rounds 5] [--passes 3] [--depth 4] [--malloc-top-pad-mb 64]
                                  [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import multiprocessing as mp
import os
import pstats
import signal
import sys
import tempfile
import time
import traceback
from collections import defaultdict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterable, Iterator

import grpc
import numpy as np
import torch
import torch.distributed.rpc as rpc

from common import (BoundedZipf, add_systems_option, chosen_systems, exit_on_sigterm, free_port, geometric_mean,
                    print_figures, rates, stop_processes, time_each)
from torch_rpc_ps import TorchRpcClient, TorchRpcPS, init_torch_rpc
from seraphim.proto.partition import group_by_shard, sparse_shard_of
from seraphim.proto.rpc import make_channel, make_server
from seraphim.scheduler.local_cluster import LocalCluster, PSProcessSpec
from seraphim.worker import SGD, Normal, PSClient, merge_duplicates

NUM_SHARDS = 2
M_TOP_PAD = -2  # glibc mallopt parameter: bytes of free heap kept at the top instead of handed back to the kernel
LR, INIT_STD = 0.01, 0.01
TARGET_VS_ECHO, TARGET_VS_TORCH = 0.7, 1.5
SYSTEMS = ("seraphim", "grpc_echo", "grpc_echo_dedup", "torch_rpc")
_SPAWN = mp.get_context("spawn")

#: one measured operation of a system: run it on batches [lo, hi), return the seconds it took
Op = Callable[[int, int], float]


def pipelined(start: Callable[[Any], Any], finish: Callable[[Any], Any], items: Iterable[Any], depth: int) -> None:
    """start(item) for each item with at most `depth` started and not yet finished; finish() them in order."""
    window: deque = deque()
    for item in items:
        if len(window) == depth:
            finish(window.popleft())
        window.append(start(item))
    while window:
        finish(window.popleft())


@dataclass
class System:
    """A started, warmed-up system: its measured operations and the server processes it runs."""

    ops: dict[str, Op]
    pids: list[int]


@dataclass
class Workload:
    """The key batches every system sees, one gradient block pushed with each batch, and the key union."""

    batches: np.ndarray  # [num_batches, batch_size] int64
    grads: np.ndarray    # [batch_size, dim] float32
    touched: np.ndarray  # every key of the batches once

    @property
    def dim(self) -> int:
        return self.grads.shape[1]

    @property
    def row_bytes(self) -> int:
        return self.dim * self.grads.itemsize

    def warm_chunks(self) -> list[np.ndarray]:
        """The warm-up pulls: every batch once, in order, so each PS makes its rows in first-touch order, as the
        first pass of a training run does (hot keys first), before any clock starts."""
        return list(self.batches)


def make_workload(args: argparse.Namespace) -> Workload:
    zipf = BoundedZipf(args.num_keys, args.alpha, seed=args.seed)
    rng = np.random.default_rng(args.seed + 1)
    batches = zipf.sample((args.batches, args.batch_size), rng)
    grads = (rng.standard_normal((args.batch_size, args.dim)) * 0.01).astype(np.float32)
    return Workload(batches, grads, np.unique(batches))


# -- Seraphim ------------------------------------------------------------------------------------------------------
@contextmanager
def seraphim_system(work: Workload, args: argparse.Namespace) -> Iterator[System]:
    """Our PS client used as a user would (pull, push; pull_async, push_async) against 2 LocalCluster shards."""
    spec = PSProcessSpec(num_ps=NUM_SHARDS, ram_mb=args.ram_mb, page_kb=args.page_kb)
    profiler = cProfile.Profile() if args.profile else None
    with tempfile.TemporaryDirectory(prefix="seraphim-bench-") as tmp, LocalCluster(tmp, spec) as cluster, \
            PSClient(cluster.addresses) as ps:
        table = ps.sparse_table("bench", dim=work.dim, init=Normal(0.0, INIT_STD), optimizer=SGD(lr=LR))
        for chunk in work.warm_chunks():
            table.pull(chunk)
        table.push(work.batches[0], work.grads)
        pipe = partial(pipelined, finish=Future.result, depth=args.depth)

        def measured(fn: Op) -> Op:
            def op(lo: int, hi: int) -> float:
                if profiler:
                    profiler.enable()
                try:
                    return fn(lo, hi)
                finally:
                    if profiler:
                        profiler.disable()
            return op

        yield System({
            "pull": measured(lambda lo, hi: time_each(table.pull, work.batches[lo:hi])),
            "push": measured(lambda lo, hi: time_each(lambda k: table.push(k, work.grads), work.batches[lo:hi])),
            "pull_pipelined": measured(lambda lo, hi: time_each(
                lambda b: pipe(table.pull_async, items=b), [work.batches[lo:hi]])),
            "push_pipelined": measured(lambda lo, hi: time_each(
                lambda b: pipe(lambda k: table.push_async(k, work.grads), items=b), [work.batches[lo:hi]]))},
            [p.pid for p in cluster.ps_procs if p is not None])
    if profiler:
        print("\n# cProfile of the Seraphim client (every measured op), by own time:", file=sys.stderr)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(30)


# -- (a) the raw gRPC ceiling: an echo service ----------------------------------------------------------------------
_ECHO_SERVICE = "bench.Echo"


def _echo_main(row_bytes: int, max_rows: int, ports: Any, stop: Any) -> None:
    """One echo process: Pull answers `row_bytes` per 8-byte key received, Push answers 8 bytes."""
    blob = os.urandom(max_rows * row_bytes)

    def pull(request: bytes, context: grpc.ServicerContext) -> bytes:
        return blob[:len(request) // 8 * row_bytes]

    def push(request: bytes, context: grpc.ServicerContext) -> bytes:
        return len(request).to_bytes(8, "little")

    server, port = make_server("127.0.0.1", 0)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_ECHO_SERVICE, {
        "Pull": grpc.unary_unary_rpc_method_handler(pull),
        "Push": grpc.unary_unary_rpc_method_handler(push)}),))
    server.start()
    ports.put(port)
    stop.wait()
    server.stop(grace=1).wait()


Payloads = tuple[list[list[bytes]], list[list[bytes]]]  # per batch, per shard: pull requests, push requests


def echo_payloads(work: Workload) -> Payloads:
    """What a plain PS protocol sends each shard: every requested key (repeats included) up for a pull; the keys
    and every gradient row for a push."""
    pulls, pushes = [], []
    for keys in work.batches:
        parts = group_by_shard(sparse_shard_of(keys, NUM_SHARDS), NUM_SHARDS)
        pulls.append([keys[pos].tobytes() for pos in parts])
        pushes.append([keys[pos].tobytes() + work.grads[pos].tobytes() for pos in parts])
    return pulls, pushes


def echo_dedup_payloads(work: Workload) -> Payloads:
    """The bytes our client puts on the wire: unique keys (pull), unique keys + merged gradients (push)."""
    pulls, pushes = [], []
    for keys in work.batches:
        uniq, merged = merge_duplicates(keys, work.grads)
        parts = group_by_shard(sparse_shard_of(uniq, NUM_SHARDS), NUM_SHARDS)
        pulls.append([uniq[pos].tobytes() for pos in parts])
        pushes.append([uniq[pos].tobytes() + merged[pos].tobytes() for pos in parts])
    return pulls, pushes


@contextmanager
def grpc_echo_system(work: Workload, args: argparse.Namespace, payloads: Payloads) -> Iterator[System]:
    """Two echo processes called at once per batch with precomputed payloads: no routing, merging or codec.

    A batch goes as our client sends one: the first shard's call on the calling thread, the other's on a
    persistent pool. Pipelined, --depth batches run at once on a pool, as our client's pull_async/push_async do
    (grpc futures were tried too: their per-call channel thread made the echo slower pipelined than not)."""
    pulls, pushes = payloads
    stop, ports = _SPAWN.Event(), _SPAWN.Queue()
    procs = [_SPAWN.Process(target=_echo_main, args=(work.row_bytes, work.batches.shape[1], ports, stop),
                            name=f"echo-{s}", daemon=True) for s in range(NUM_SHARDS)]
    channels: list[grpc.Channel] = []
    calls_pool = ThreadPoolExecutor(max_workers=(args.depth + 1) * (NUM_SHARDS - 1), thread_name_prefix="echo-io")
    batch_pool = ThreadPoolExecutor(max_workers=args.depth, thread_name_prefix="echo-batch")
    try:
        for p in procs:
            p.start()
        channels = [make_channel(f"127.0.0.1:{ports.get(timeout=60)}") for _ in procs]
        pull_calls = [c.unary_unary(f"/{_ECHO_SERVICE}/Pull") for c in channels]
        push_calls = [c.unary_unary(f"/{_ECHO_SERVICE}/Push") for c in channels]

        def both(calls: list[Callable], payload: list[bytes]) -> None:
            others = [calls_pool.submit(call, data) for call, data in zip(calls[1:], payload[1:])]
            calls[0](payload[0])
            for future in others:
                future.result()

        def pipe(calls: list[Callable], batches: list[list[bytes]]) -> None:
            pipelined(partial(batch_pool.submit, both, calls), Future.result, batches, args.depth)

        for pull, push in zip(pulls[:5], pushes[:5]):
            both(pull_calls, pull)
            both(push_calls, push)
        yield System({"pull": lambda lo, hi: time_each(partial(both, pull_calls), pulls[lo:hi]),
                      "push": lambda lo, hi: time_each(partial(both, push_calls), pushes[lo:hi]),
                      "pull_pipelined": lambda lo, hi: time_each(partial(pipe, pull_calls), [pulls[lo:hi]]),
                      "push_pipelined": lambda lo, hi: time_each(partial(pipe, push_calls), [pushes[lo:hi]])},
                     [p.pid for p in procs])
    finally:
        batch_pool.shutdown()
        calls_pool.shutdown()
        for c in channels:
            c.close()
        stop.set()
        stop_processes(procs)


# -- (b) a parameter server on torch.distributed.rpc ----------------------------------------------------------------
def _torch_ps_main(shard: int, port: int) -> None:
    init_torch_rpc(f"ps{shard}", shard + 1, NUM_SHARDS + 1, port)
    rpc.shutdown()


def _torch_trainer_main(port: int, work: Workload, num_keys: int, seed: int, depth: int, conn: Any) -> None:
    """Warm up, answer 'ready', then run (op, lo, hi) commands from the parent and answer their seconds."""
    init_torch_rpc("trainer", 0, NUM_SHARDS + 1, port)
    try:
        shards = [rpc.remote(f"ps{s}", TorchRpcPS, args=(num_keys, work.dim, LR, INIT_STD, seed + s))
                  for s in range(NUM_SHARDS)]
        client = TorchRpcClient(shards, work.dim)
        grads = torch.from_numpy(work.grads)
        ops = {"pull": client.pull, "push": lambda keys: client.push(keys, grads)}
        pipelined_ops = {"pull_pipelined": (client.pull_async, client.pull_wait),
                         "push_pipelined": (lambda keys: client.push_async(keys, grads), torch.futures.wait_all)}
        for chunk in work.warm_chunks():
            client.pull(chunk)
        client.push(work.batches[0], grads)
        conn.send("ready")
        while (command := conn.recv()) is not None:
            op, lo, hi = command
            if op in pipelined_ops:
                start, finish = pipelined_ops[op]
                conn.send(time_each(lambda b: pipelined(start, finish, b, depth), [work.batches[lo:hi]]))
            else:
                conn.send(time_each(ops[op], work.batches[lo:hi]))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        rpc.shutdown()


@contextmanager
def torch_rpc_system(work: Workload, args: argparse.Namespace) -> Iterator[System]:
    """Trainer and 2 PS as spawned processes in one RPC group; the trainer runs the rounds this process asks for."""
    port = free_port()
    conn, child_conn = _SPAWN.Pipe()
    procs = [_SPAWN.Process(target=_torch_ps_main, args=(s, port), name=f"torch-ps{s}", daemon=True)
             for s in range(NUM_SHARDS)]
    procs.append(_SPAWN.Process(target=_torch_trainer_main,
                                args=(port, work, args.num_keys, args.seed, args.depth, child_conn),
                                name="torch-trainer", daemon=True))

    def answer() -> Any:
        if not conn.poll(args.torch_timeout_s):
            raise TimeoutError(f"the torch.distributed.rpc trainer did not answer within {args.torch_timeout_s} s")
        reply = conn.recv()
        if isinstance(reply, tuple):
            raise RuntimeError(f"the torch.distributed.rpc trainer failed:\n{reply[1]}")
        return reply

    def op(name: str) -> Op:
        def run(lo: int, hi: int) -> float:
            conn.send((name, lo, hi))
            return answer()
        return run

    try:
        for p in procs:
            p.start()
        answer()
        yield System({name: op(name) for name in ("pull", "push", "pull_pipelined", "push_pipelined")},
                     [p.pid for p in procs])
    finally:
        if procs[-1].is_alive():
            conn.send(None)
        stop_processes(procs)


# -- process plumbing and the report --------------------------------------------------------------------------------
def pad_malloc(mb: float) -> None:
    """Keep `mb` MiB of freed heap in every process of the run: this one by mallopt, the ones it starts through
    MALLOC_TOP_PAD_ (LocalCluster and multiprocessing pass the environment on). By default glibc hands the top of
    the heap back to the kernel once about twice the largest recent free lies free, so a process that frees two
    1 MB buffers per call (the echo's full-batch replies) faults ~500 pages back in per call, about 1 ms a batch
    here. Every system runs under the same setting; 0 keeps glibc's default."""
    if mb > 0:
        pad = int(mb * 2**20)
        os.environ["MALLOC_TOP_PAD_"] = str(pad)
        ctypes.CDLL(None).mallopt(M_TOP_PAD, pad)


def _signal(pids: list[int], sig: int) -> None:
    """Pause (SIGSTOP) or resume (SIGCONT) processes; one that has already exited is skipped."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


DIRECTIONS = ("pull", "push", "pull_pipelined", "push_pipelined")


def ratios(figures: dict[str, float], peer: str, name: str) -> dict[str, float]:
    """Row-rate ratios of Seraphim over `peer`, per direction; pipelined against the peer pipelined alike."""
    return {f"{d}_{name}": figures[f"seraphim_{d}_rows_per_s"] / figures[f"{peer}_{d}_rows_per_s"]
            for d in DIRECTIONS}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=50, help="measured pull batches (and as many pushes)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds each pass over the batches is split into")
    p.add_argument("--passes", type=int, default=3, help="passes over the same batches (rounds = passes x rounds)")
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--num-keys", type=int, default=10_000_000)
    p.add_argument("--alpha", type=float, default=1.1, help="Zipf exponent of key popularity")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--ram-mb", type=float, default=512.0, help="page-cache budget of each Seraphim PS")
    p.add_argument("--page-kb", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--depth", type=int, default=4, help="batches in flight in the pipelined figures, every system")
    p.add_argument("--malloc-top-pad-mb", type=float, default=64.0,
                   help="glibc heap top pad of every process of the run (0: glibc's default); see pad_malloc")
    add_systems_option(p, SYSTEMS)
    p.add_argument("--profile", action="store_true", help="cProfile the Seraphim client's rounds (to stderr)")
    p.add_argument("--torch-timeout-s", type=float, default=300.0)
    args = p.parse_args(argv)
    args.chosen = chosen_systems(p, args, SYSTEMS)
    if not 1 <= args.rounds <= args.batches:
        p.error(f"--rounds must be in [1, --batches={args.batches}], got {args.rounds}")
    if args.passes < 1:
        p.error(f"--passes must be at least 1, got {args.passes}")
    if args.depth < 1:
        p.error(f"--depth must be at least 1, got {args.depth}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    names = args.chosen
    pad_malloc(args.malloc_top_pad_mb)
    started = time.perf_counter()
    work = make_workload(args)
    distinct = np.mean([len(np.unique(b)) for b in work.batches]) / args.batch_size
    print(f"# {args.batches} batches x {args.batch_size} keys, Zipf({args.alpha}) over {args.num_keys:,} keys, "
          f"dim {args.dim} float32, {NUM_SHARDS} shards; {distinct:.1%} of a batch's keys are distinct, "
          f"{len(work.touched):,} keys touched; MB = 10^6 bytes of requested rows; figures are medians over "
          f"{args.passes} x {args.rounds} interleaved rounds; pipelined depth {args.depth}; glibc heap top pad "
          f"{args.malloc_top_pad_mb:g} MiB in every process", flush=True)
    starters = {"seraphim": seraphim_system, "torch_rpc": torch_rpc_system,
                "grpc_echo": partial(grpc_echo_system, payloads=echo_payloads(work)),
                "grpc_echo_dedup": partial(grpc_echo_system, payloads=echo_dedup_payloads(work))}
    round_rates: dict[str, list[float]] = defaultdict(list)
    with ExitStack() as stack:
        systems = {name: stack.enter_context(starters[name](work, args)) for name in names}
        print(f"# started and warmed up in {time.perf_counter() - started:.1f} s", flush=True)
        every_pid = [pid for system in systems.values() for pid in system.pids]
        stack.callback(_signal, every_pid, signal.SIGCONT)  # unwinds first: the systems then stop running processes
        _signal(every_pid, signal.SIGSTOP)
        bounds = np.linspace(0, args.batches, args.rounds + 1).astype(int)
        for r, (lo, hi) in enumerate(list(zip(bounds[:-1], bounds[1:])) * args.passes):
            for name in names[r % len(names):] + names[:r % len(names)]:
                _signal(systems[name].pids, signal.SIGCONT)
                for op, run in systems[name].ops.items():
                    round_rates[f"{name}_{op}"].append((hi - lo) * args.batch_size / run(int(lo), int(hi)))
                _signal(systems[name].pids, signal.SIGSTOP)
    figures: dict[str, float] = {}
    for key, per_round in round_rates.items():
        figures.update(rates(key, float(np.median(per_round)), work.row_bytes))
    print_figures(figures)
    headline = {}
    for peer, name, target in (("grpc_echo", "ratio_vs_grpc_echo", TARGET_VS_ECHO),
                               ("torch_rpc", "ratio_vs_torch_rpc_ps", TARGET_VS_TORCH),
                               ("grpc_echo_dedup", "ratio_vs_grpc_echo_dedup", None)):
        if "seraphim" in names and peer in names:
            per_direction = ratios(figures, peer, name)
            print_figures(per_direction)
            headline[name] = geometric_mean([per_direction[f"pull_{name}"], per_direction[f"push_{name}"]])
            headline[f"{name}_pipelined"] = geometric_mean([per_direction[f"pull_pipelined_{name}"],
                                                            per_direction[f"push_pipelined_{name}"]])
            verdict = (f"target >= {target}: {'met' if headline[name] >= target else 'MISSED'}" if target else
                       "no target: the transport cost of the bytes Seraphim itself sends")
            print(f"# {name}: geometric mean of the synchronous pull and push row-rate ratios; {verdict}; "
                  f"{name}_pipelined: the same at depth {args.depth}")
    print(f"# total {time.perf_counter() - started:.1f} s")
    print_figures(headline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
