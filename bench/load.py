"""Load: a bounded number of client processes pulling and pushing Zipf-drawn keys against 2 PS shards for a fixed
time; per-operation latency percentiles, errors, and the PS's memory against its RAM budget, for Seraphim and for
a torch.distributed.rpc PS (bench/torch_rpc_ps.py) measured in the same run under the same load.

Each client is a closed loop (the next operation starts when the last one answered): with probability
--push-fraction a push of --batch-size gradient rows, else a pull of --batch-size keys, the keys drawn Zipf(--alpha)
over --num-keys (repeats included, as a CTR batch has them). Every client draws the same keys on both systems. The
Seraphim PS gets a page-cache budget (--ram-mb per shard) far below the table the run touches, so the table spills to
LMDB and the run measures the paged store under load, not a cache that holds everything.

Printed (``name: value``): ``p50_ms``, ``p99_ms``, ``p999_ms`` over every operation, the same per operation
(``pull_p99_ms``, ``push_p999_ms``, ...), ``ops_per_s``, ``errors`` (failed operations; target 0), the PS memory
(``ps_peak_rss_mb``: the larger shard's peak resident set, /proc VmHWM; ``ps_ram_budget_mb``; ``ps_rss_over_budget``:
peak RSS / budget; ``ps_rss_growth_over_budget``: (peak RSS - RSS once every client has warmed up, kernels compiled
and the table made) / budget, what the load added; ``ps_anon_mb``, ``ps_anon_growth_over_budget``: the same for
anonymous memory only (RssAnon at the end), without the LMDB file pages the kernel maps in and may drop), the spill (``ps_table_mb`` rows held x row bytes, ``ps_lmdb_mb``, ``ps_hit_rate``), then the peer's figures
prefixed ``torch_rpc_`` and the ratios ``*_vs_torch_rpc`` (Seraphim's latency over the peer's: below 1 is faster).

    python bench/load.py [--clients 4] [--seconds 20] [--ram-mb 8] [--num-keys 2000000] [--batch-size 1024]
                         [--push-fraction 0.5] [--systems seraphim,torch_rpc]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import signal
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from common import (BoundedZipf, add_systems_option, chosen_systems, exit_on_sigterm, free_port, print_figures,
                    stop_processes)
from seraphim.scheduler.local_cluster import LocalCluster, PSProcessSpec
from seraphim.worker import SGD, Normal, PSClient

NUM_SHARDS = 2
LR, INIT_STD = 0.01, 0.01
SYSTEMS = ("seraphim", "torch_rpc")
OPS = ("pull", "push")
TABLE = "load"
_SPAWN = mp.get_context("spawn")
MiB = 2**20


@dataclass
class LoadSystem:
    """A started system: its PS processes, what a client process runs, and its store's figures after the load."""

    ps_pids: list[int]
    client: Callable[[int, tuple], tuple[Callable[..., None], tuple]]  # (rank, (ready, start, results)) -> target, args
    store_figures: Callable[[], dict[str, float]]


@dataclass
class ClientResult:
    """What one client process measured: each finished operation's kind (0 pull, 1 push) and seconds; failures."""

    kinds: np.ndarray
    seconds: np.ndarray
    errors: int
    first_error: str


def closed_loop(pull: Callable[[np.ndarray], Any], push: Callable[[np.ndarray, np.ndarray], Any],
                args: argparse.Namespace, rank: int, ready: Any, start: Any) -> ClientResult:
    """Warm up (one pull and one push: the PS compiles its kernels on first use), say ready, wait for the start
    signal, then pull or push back to back for args.seconds, timing every operation."""
    zipf = BoundedZipf(args.num_keys, args.alpha, seed=args.seed)
    rng = np.random.default_rng([args.seed, rank])
    grads = (rng.standard_normal((args.batch_size, args.dim)) * 0.01).astype(np.float32)
    warm = zipf.sample(args.batch_size, np.random.default_rng([args.seed, rank, 1]))
    pull(warm)
    push(warm, grads)
    kinds, seconds, errors, first_error = [], [], 0, ""
    ready.put(rank)
    start.wait()
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        keys = zipf.sample(args.batch_size, rng)
        is_push = bool(rng.random() < args.push_fraction)
        began = time.perf_counter()
        try:
            push(keys, grads) if is_push else pull(keys)
        except Exception as exc:  # a failed operation is counted, and the load goes on
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
            continue
        seconds.append(time.perf_counter() - began)
        kinds.append(int(is_push))
    return ClientResult(np.array(kinds, np.int8), np.array(seconds), errors, first_error)


def _report(rank: int, results: Any, run: Callable[[], ClientResult]) -> None:
    """Run a client and put (rank, result or the traceback) on the results queue."""
    try:
        results.put((rank, run()))
    except BaseException:
        results.put((rank, traceback.format_exc()))


# -- Seraphim --------------------------------------------------------------------------------------------------------
def _seraphim_client(rank: int, addresses: list[str], args: argparse.Namespace, ready: Any, start: Any,
                     results: Any) -> None:
    def run() -> ClientResult:
        with PSClient(addresses) as ps:
            table = ps.sparse_table(TABLE, dim=args.dim, init=Normal(0.0, INIT_STD), optimizer=SGD(lr=LR))
            return closed_loop(table.pull, table.push, args, rank, ready, start)

    _report(rank, results, run)


@contextmanager
def seraphim_system(args: argparse.Namespace) -> Iterator[LoadSystem]:
    """2 LocalCluster shards with a small page-cache budget."""
    spec = PSProcessSpec(num_ps=NUM_SHARDS, ram_mb=args.ram_mb, page_kb=args.page_kb)
    with tempfile.TemporaryDirectory(prefix="seraphim-load-") as tmp, LocalCluster(tmp, spec) as cluster:
        yield LoadSystem([p.pid for p in cluster.ps_procs if p is not None],
                         lambda rank, signals: (_seraphim_client, (rank, cluster.addresses, args, *signals)),
                         partial(seraphim_store_figures, args, cluster.addresses))


def seraphim_store_figures(args: argparse.Namespace, addresses: list[str]) -> dict[str, float]:
    """The RAM budget and the spill, from the shards' Stats."""
    with PSClient(addresses) as ps:
        stats = ps.stats()
    tables = [t for s in stats for t in s.tables if t.name == TABLE]
    hits, misses = sum(t.hits for t in tables), sum(t.misses for t in tables)
    row_bytes = args.dim * 4  # SGD keeps no state beside the weights
    return {"ps_ram_budget_mb": stats[0].ram_budget / MiB,
            "ps_table_mb": sum(t.rows for t in tables) * row_bytes / MiB,
            "ps_lmdb_mb": sum(s.lmdb_bytes for s in stats) / MiB,
            "ps_hit_rate": hits / max(1, hits + misses)}


# -- the peer: torch.distributed.rpc ---------------------------------------------------------------------------------
def _torch_ps(shard: int, world: int, port: int, args: argparse.Namespace) -> None:
    import torch.distributed.rpc as rpc
    from torch_rpc_ps import hold_shard, init_torch_rpc

    hold_shard(args.num_keys, args.dim, LR, INIT_STD, args.seed + shard)
    init_torch_rpc(f"ps{shard}", shard, world, port)
    rpc.shutdown()  # waits for every client of the group to finish


def _torch_client(rank: int, world: int, port: int, args: argparse.Namespace, ready: Any, start: Any,
                  results: Any) -> None:
    import torch
    import torch.distributed.rpc as rpc
    from torch_rpc_ps import TorchRpcClient, init_torch_rpc, shard_rref

    init_torch_rpc(f"client{rank}", NUM_SHARDS + rank, world, port)
    try:
        client = TorchRpcClient([rpc.rpc_sync(f"ps{s}", shard_rref) for s in range(NUM_SHARDS)], args.dim)
        _report(rank, results, lambda: closed_loop(
            client.pull, lambda keys, grads: client.push(keys, torch.from_numpy(grads)), args, rank, ready, start))
    finally:
        rpc.shutdown()


@contextmanager
def torch_rpc_system(args: argparse.Namespace) -> Iterator[LoadSystem]:
    """2 PS processes of a torch.distributed.rpc group that the clients join."""
    world, port = NUM_SHARDS + args.clients, free_port()
    procs = [_SPAWN.Process(target=_torch_ps, args=(s, world, port, args), name=f"torch-ps{s}", daemon=True)
             for s in range(NUM_SHARDS)]
    try:
        for p in procs:
            p.start()
        yield LoadSystem([p.pid for p in procs],
                         lambda rank, signals: (_torch_client, (rank, world, port, args, *signals)),
                         dict)
    finally:
        stop_processes(procs)


# -- the run ---------------------------------------------------------------------------------------------------------
def _wait_ready(ready: Any, results: Any, timeout_s: float) -> None:
    """Wait for one client's warm-up; a client that crashed before it says so on the results queue."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ready.get(timeout=1.0)
            return
        except queue.Empty:
            if not results.empty():
                rank, outcome = results.get()
                raise RuntimeError(f"client {rank} failed before the start:\n{outcome}")
    raise TimeoutError(f"a client was not warmed up within {timeout_s:g} s")


def rss_bytes(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"/proc/{pid}/status has no {field}")


def run_load(name: str, args: argparse.Namespace) -> dict[str, float]:
    """Start the system, run the clients for args.seconds, and return its figures (unprefixed)."""
    starter = seraphim_system if name == "seraphim" else torch_rpc_system
    ready, start, results = _SPAWN.Queue(), _SPAWN.Event(), _SPAWN.Queue()
    with starter(args) as system_:
        ps_pids = system_.ps_pids
        clients = [_SPAWN.Process(target=target, args=target_args, name=f"{name}-client{rank}", daemon=True)
                   for rank in range(args.clients)
                   for target, target_args in [system_.client(rank, (ready, start, results))]]
        try:
            for p in clients:
                p.start()
            for _ in clients:
                _wait_ready(ready, results, args.start_timeout_s)
            # warm: kernels compiled, the table made
            idle, idle_anon = ([max(rss_bytes(pid, field) for pid in ps_pids) for field in ("VmRSS", "RssAnon")])
            start.set()
            got = dict(results.get(timeout=args.seconds + args.start_timeout_s) for _ in clients)
            peak = max(rss_bytes(pid, "VmHWM") for pid in ps_pids)
            anon = max(rss_bytes(pid, "RssAnon") for pid in ps_pids)
            store = system_.store_figures()
        finally:
            stop_processes(clients, join_timeout_s=60)
    failed = {rank: r for rank, r in got.items() if isinstance(r, str)}
    if failed:
        raise RuntimeError(f"{name} client(s) {sorted(failed)} crashed:\n{next(iter(failed.values()))}")
    figures = latency_figures(list(got.values()), args.seconds)
    figures["ps_peak_rss_mb"] = peak / MiB
    figures["ps_idle_rss_mb"] = idle / MiB
    figures["ps_anon_mb"] = anon / MiB
    if store:
        figures.update(store)
        figures["ps_rss_over_budget"] = peak / (store["ps_ram_budget_mb"] * MiB)
        figures["ps_rss_growth_over_budget"] = (peak - idle) / (store["ps_ram_budget_mb"] * MiB)
        figures["ps_anon_growth_over_budget"] = (anon - idle_anon) / (store["ps_ram_budget_mb"] * MiB)
    errors = [r for r in got.values() if r.errors]
    if errors:
        print(f"# {name}: first error: {errors[0].first_error}", flush=True)
    return figures


def latency_figures(results: list[ClientResult], seconds: float) -> dict[str, float]:
    kinds = np.concatenate([r.kinds for r in results])
    ms = np.concatenate([r.seconds for r in results]) * 1e3
    figures: dict[str, float] = {}
    for prefix, mask in [("", np.ones(len(ms), bool))] + [(f"{op}_", kinds == i) for i, op in enumerate(OPS)]:
        p50, p99, p999 = np.percentile(ms[mask], [50, 99, 99.9])
        figures.update({f"{prefix}p50_ms": p50, f"{prefix}p99_ms": p99, f"{prefix}p999_ms": p999})
    figures["ops_per_s"] = len(ms) / seconds
    figures["errors"] = float(sum(r.errors for r in results))
    return figures


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=4, help="client processes, each a closed loop")
    p.add_argument("--seconds", type=float, default=20.0, help="measured time per system")
    p.add_argument("--start-timeout-s", type=float, default=180.0, help="for the clients to start and warm up")
    p.add_argument("--batch-size", type=int, default=1024, help="keys per pull, gradient rows per push")
    p.add_argument("--push-fraction", type=float, default=0.5)
    p.add_argument("--num-keys", type=int, default=2_000_000)
    p.add_argument("--alpha", type=float, default=1.1, help="Zipf exponent of key popularity")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--ram-mb", type=float, default=8.0, help="page-cache budget of each Seraphim PS")
    p.add_argument("--page-kb", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    add_systems_option(p, SYSTEMS)
    args = p.parse_args(argv)
    args.chosen = chosen_systems(p, args, SYSTEMS)
    if args.clients < 1 or args.seconds <= 0 or not 0 <= args.push_fraction <= 1:
        p.error("--clients must be >= 1, --seconds > 0 and --push-fraction in [0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    print(f"# {args.clients} client processes x {args.seconds:g} s per system, closed loop; {args.batch_size} keys "
          f"an operation, {args.push_fraction:.0%} pushes; Zipf({args.alpha}) over {args.num_keys:,} keys, dim "
          f"{args.dim} float32, {NUM_SHARDS} shards; Seraphim page cache {args.ram_mb:g} MiB per shard, pages "
          f"{args.page_kb} KiB", flush=True)
    figures: dict[str, dict[str, float]] = {}
    for name in args.chosen:
        figures[name] = run_load(name, args)
        print_figures({f"{'' if name == 'seraphim' else name + '_'}{k}": v for k, v in figures[name].items()})
    if len(figures) == len(SYSTEMS):
        ours, peer = figures["seraphim"], figures["torch_rpc"]
        print("# *_vs_torch_rpc: Seraphim's latency over the torch.distributed.rpc PS's (below 1: faster); "
              "ops_per_s_vs_torch_rpc: throughput ratio (above 1: more)")
        print_figures({f"{k}_vs_torch_rpc": ours[k] / peer[k] for k in ours if k.endswith("_ms")}
                      | {"ops_per_s_vs_torch_rpc": ours["ops_per_s"] / peer["ops_per_s"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
