"""The PS process: ``python -m seraphim.ps --data-dir D --shard 0 --num-shards 2 ...``.

It serves until SIGTERM or SIGINT, then flushes its pages and exits 0. When --port-file is given it writes the
bound port there once it serves, so a launcher can start it on port 0 and learn where it listens.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from seraphim.proto import ps_pb2_grpc
from seraphim.proto.rpc import MAX_MESSAGE_BYTES, TlsFiles, make_server, resolve_token
from seraphim.ps.config import PSConfig
from seraphim.ps.server import ParameterServer
from seraphim.ps.service import PSService

log = logging.getLogger("seraphim.ps")


def parse_args(argv: list[str] | None = None) -> PSConfig:
    p = argparse.ArgumentParser(prog="seraphim ps start", description="Run one parameter-server shard.")
    p.add_argument("--data-dir", required=True, type=Path, help="directory of this PS's LMDB environment")
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (see --port-file)")
    p.add_argument("--port-file", type=Path, help="write the bound port here once serving")
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--staleness", type=int, default=0, help="0 BSP, N SSP, -1 ASP")
    p.add_argument("--ram-mb", type=float, default=256.0, help="RAM budget of the page cache in MiB")
    p.add_argument("--page-kb", type=int, default=256, help="page size in KiB")
    p.add_argument("--durability", default="snapshot", choices=("snapshot", "strict"))
    p.add_argument("--snapshot-every", type=int, default=10, help="snapshot every N clocks (0: only on request)")
    p.add_argument("--token", help="cluster token (or --token-file, SERAPHIM_TOKEN, SERAPHIM_TOKEN_FILE)")
    p.add_argument("--token-file")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--tls-ca")
    p.add_argument("--max-message-mb", type=float, default=MAX_MESSAGE_BYTES / 2**20)
    a = p.parse_args(argv)
    tls = TlsFiles(ca=a.tls_ca, cert=a.tls_cert, key=a.tls_key) if a.tls_cert else None
    config = PSConfig(data_dir=a.data_dir, shard=a.shard, num_shards=a.num_shards, host=a.host, port=a.port,
                      num_workers=a.num_workers, staleness=a.staleness, ram_bytes=int(a.ram_mb * 2**20),
                      page_bytes=a.page_kb * 1024, durability=a.durability, snapshot_every=a.snapshot_every,
                      token=resolve_token(a.token, a.token_file), tls=tls,
                      max_message_bytes=int(a.max_message_mb * 2**20))
    config.extra["port_file"] = str(a.port_file) if a.port_file else ""
    return config


def serve(config: PSConfig, stop: threading.Event) -> None:
    """Serve until `stop` is set, then stop the server and close the store."""
    ps = ParameterServer(config)
    server, port = make_server(config.host, config.port, token=config.token, tls=config.tls,
                               max_workers=config.max_threads, max_message_bytes=config.max_message_bytes)
    ps_pb2_grpc.add_ParameterServerServicer_to_server(PSService(ps, config.max_message_bytes), server)
    server.start()
    restored = "nothing (new store)" if ps.restored_clock is None else f"clock {ps.restored_clock}"
    log.info("ps %d/%d serving on %s:%d, pid %d, restored %s, tables %s", config.shard, config.num_shards,
             config.host, port, os.getpid(), restored, sorted(ps.tables) or "none")
    port_file = config.extra.get("port_file")
    if port_file:
        tmp = Path(port_file + ".tmp")
        tmp.write_text(str(port))
        tmp.replace(port_file)
    try:
        stop.wait()
    finally:
        server.stop(grace=2).wait()
        ps.close()
        log.info("ps %d stopped; pages flushed", config.shard)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    try:
        config = parse_args(argv)
        config.validate()
    except ValueError as exc:
        print(f"seraphim ps: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve(config, stop)
    except OSError as exc:
        print(f"seraphim ps: {exc}", file=sys.stderr)
        return 1
    return 0
