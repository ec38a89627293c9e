"""The PS process.

Standalone: ``seraphim ps start --data-dir D --shard 0 --num-shards 2 --num-workers 4 ...`` takes its settings
from flags. Managed: ``seraphim ps start --scheduler S --job J --shard 0 --data-dir D`` takes them from the job
spec through the scheduler, registers the address it serves at, heartbeats, and exits when the job ends.
It serves until SIGTERM or SIGINT, then flushes its pages and exits 0. --port-file receives the bound port.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Callable

from prometheus_client import CollectorRegistry

from seraphim.proto import ps_pb2_grpc
from seraphim.proto.agent import SchedulerAgent
from seraphim.proto.errors import SeraphimError
from seraphim.proto.port_file import write_port_file
from seraphim.proto.rpc import MAX_MESSAGE_BYTES, TlsFiles, make_server, resolve_token
from seraphim.proto.telemetry import process_registry
from seraphim.ps.config import PSConfig
from seraphim.ps.metrics import PSMetrics
from seraphim.ps.server import ParameterServer
from seraphim.ps.service import PSService

log = logging.getLogger("seraphim.ps")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seraphim ps start", description="Run one parameter-server shard.")
    p.add_argument("--data-dir", required=True, type=Path, help="directory of this PS's LMDB environment")
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--shard-from-hostname", action="store_true",
                   help="take the shard from the trailing -<n> of the host name (a StatefulSet pod's ordinal)")
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (see --port-file)")
    p.add_argument("--advertise", help="host name or address workers reach this PS at (default: --host)")
    p.add_argument("--port-file", type=Path, help="write the bound port here once serving")
    p.add_argument("--scheduler", help="scheduler address: take settings from the job and register (managed)")
    p.add_argument("--job", help="job id (managed mode)")
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--staleness", type=int, default=0, help="0 BSP, N SSP, -1 ASP")
    p.add_argument("--deterministic", action="store_true",
                   help="hold each clock's gradient pushes and apply them in worker order (BSP only)")
    p.add_argument("--ram-mb", type=float, default=256.0, help="RAM budget of the page cache in MiB")
    p.add_argument("--page-kb", type=int, default=256, help="page size in KiB")
    p.add_argument("--durability", default="snapshot", choices=("snapshot", "strict"))
    p.add_argument("--snapshot-every", type=int, default=10, help="snapshot every N clocks (0: only on request)")
    p.add_argument("--token", help="cluster token (or --token-file, SERAPHIM_TOKEN, SERAPHIM_TOKEN_FILE)")
    p.add_argument("--token-file")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--tls-ca", help="CA of the scheduler's certificate (managed mode over TLS)")
    p.add_argument("--tls-server-name", help="name in the scheduler's certificate, when not its host")
    p.add_argument("--max-message-mb", type=float, default=MAX_MESSAGE_BYTES / 2**20)
    return p


def shard_from_hostname(hostname: str) -> int:
    match = re.search(r"-(\d+)$", hostname)
    if not match:
        raise ValueError(f"--shard-from-hostname: host name {hostname!r} does not end in -<ordinal>")
    return int(match.group(1))


def config_from_args(a: argparse.Namespace) -> PSConfig:
    tls = TlsFiles(ca=a.tls_ca, cert=a.tls_cert, key=a.tls_key) if a.tls_cert else None
    return PSConfig(data_dir=a.data_dir, shard=a.shard, num_shards=a.num_shards, host=a.host, port=a.port,
                    num_workers=a.num_workers, staleness=a.staleness, deterministic=a.deterministic, ram_bytes=int(a.ram_mb * 2**20),
                    page_bytes=a.page_kb * 1024, durability=a.durability, snapshot_every=a.snapshot_every,
                    token=resolve_token(a.token, a.token_file), tls=tls,
                    max_message_bytes=int(a.max_message_mb * 2**20))


def serve(config: PSConfig, stop: threading.Event, on_serving: Callable[[int], None] | None = None,
          registry: CollectorRegistry | None = None) -> None:
    """Serve until `stop` is set, then stop the server and close the store; the PS's metrics go to `registry`."""
    ps = ParameterServer(config)
    metrics = PSMetrics(ps, registry or process_registry())
    server, port = make_server(config.host, config.port, token=config.token, tls=config.tls,
                               max_workers=config.max_threads, max_message_bytes=config.max_message_bytes)
    ps_pb2_grpc.add_ParameterServerServicer_to_server(PSService(ps, config.max_message_bytes, metrics.rpc), server)
    server.start()
    restored = "nothing (new store)" if ps.restored_clock is None else f"clock {ps.restored_clock}"
    log.info("ps %d/%d serving on %s:%d, pid %d, restored %s, tables %s", config.shard, config.num_shards,
             config.host, port, os.getpid(), restored, sorted(ps.tables) or "none")
    try:
        if on_serving is not None:
            on_serving(port)
        stop.wait()
    finally:
        server.stop(grace=2).wait()
        metrics.freeze()
        ps.close()
        log.info("ps %d stopped; pages flushed", config.shard)


def _managed(a: argparse.Namespace, config: PSConfig, stop: threading.Event) -> int:
    tls = TlsFiles(ca=a.tls_ca, server_name=a.tls_server_name) if a.tls_ca else None
    registry = process_registry()
    agent = SchedulerAgent(a.scheduler, a.job, "ps", config.shard, token=config.token, tls=tls, registry=registry)
    settings = agent.register().ps
    config.shard, config.num_shards = settings.shard, settings.num_shards
    if settings.data_subdir:
        config.data_dir = config.data_dir / settings.data_subdir
    config.num_workers, config.staleness = settings.num_workers, settings.staleness
    config.deterministic = settings.deterministic
    config.ram_bytes, config.page_bytes = int(settings.ram_mb * 2**20), settings.page_kb * 1024
    config.durability, config.snapshot_every = settings.durability, settings.snapshot_every
    config.validate()
    advertise = a.advertise or (socket.gethostname() if a.host in ("0.0.0.0", "::") else a.host)

    def on_serving(port: int) -> None:
        write_port_file(a.port_file, port)
        agent.register(address=f"{advertise}:{port}")
        agent.start(on_stop=stop.set)

    try:
        serve(config, stop, on_serving, registry)
    except BaseException as exc:
        agent.finish("FAILED", f"{type(exc).__name__}: {exc}")
        raise
    agent.finish("DONE" if agent.stop_requested.is_set() else "FAILED", "the PS was stopped by a signal")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    a = parser().parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if a.shard_from_hostname:
            a.shard = shard_from_hostname(socket.gethostname())
        config = config_from_args(a)
        if a.scheduler:
            if not a.job:
                raise ValueError("--scheduler needs --job (the id of the job this PS serves)")
            return _managed(a, config, stop)
        config.validate()
        serve(config, stop, lambda port: write_port_file(a.port_file, port))
    except ValueError as exc:
        print(f"seraphim ps: {exc}", file=sys.stderr)
        return 2
    except (OSError, SeraphimError) as exc:
        print(f"seraphim ps: {exc}", file=sys.stderr)
        return 1
    return 0
