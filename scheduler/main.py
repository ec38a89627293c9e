"""The scheduler process: ``seraphim scheduler start --data-dir D [--port 7070] [--token-file F] [--http-port 8080]``.

Without a token it generates one and writes it to ``D/token`` (mode 0600): every RPC of the cluster must carry
it. ``--http-port`` serves the dashboard and Prometheus ``/metrics`` (scheduler/web.py) behind the same token.
It serves until SIGTERM or SIGINT; the processes of running jobs outlive it and are followed again by the next
scheduler started on the same data directory.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import signal
import ssl
import sys
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry

from seraphim.proto import scheduler_pb2_grpc
from seraphim.proto.port_file import write_port_file
from seraphim.proto.rpc import TlsFiles, make_server, resolve_token
from seraphim.scheduler.cluster_metrics import ClusterMetrics
from seraphim.scheduler.launchers import LocalLauncher
from seraphim.scheduler.master import Master
from seraphim.scheduler.service import SchedulerService
from seraphim.scheduler.web import WebServer

log = logging.getLogger("seraphim.scheduler")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seraphim scheduler start", description="Run the cluster's scheduler.")
    p.add_argument("--data-dir", required=True, type=Path, help="the job store (SQLite) and the token live here")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7070, help="0 picks a free port (see --port-file)")
    p.add_argument("--port-file", type=Path, help="write the bound port here once serving")
    p.add_argument("--token", help="cluster token (or --token-file, SERAPHIM_TOKEN, SERAPHIM_TOKEN_FILE)")
    p.add_argument("--token-file")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--tls-ca", help="CA that signed --tls-cert; handed to the processes the scheduler starts")
    p.add_argument("--tls-server-name", help="name in the certificate, when processes reach it by IP")
    p.add_argument("--heartbeat-timeout", type=float, default=10.0, help="seconds of silence before a process "
                                                                        "counts as dead")
    p.add_argument("--http-port", type=int, help="serve the dashboard and /metrics on this port (0: a free one); "
                                                 "none without it")
    p.add_argument("--http-host", help="address of the HTTP port (default: --host)")
    p.add_argument("--http-port-file", type=Path, help="write the bound HTTP port here, before --port-file")
    p.add_argument("--metrics-public", action="store_true",
                   help="serve /metrics without the token (to a scraper that cannot send one)")
    return p


def _web_server(a: argparse.Namespace, master: Master, token: str, tls: TlsFiles | None) -> WebServer | None:
    """The dashboard and /metrics when --http-port is given: the cluster's metrics in a registry of their own."""
    if a.http_port is None:
        return None
    registry = CollectorRegistry()
    registry.register(ClusterMetrics(master))
    return WebServer(master, registry, a.http_host or a.host, a.http_port, token, tls, a.metrics_public)


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s scheduler %(levelname)s %(message)s")
    if a.data_dir.exists() and not a.data_dir.is_dir():
        print(f"seraphim scheduler: --data-dir {str(a.data_dir)!r} is not a directory", file=sys.stderr)
        return 2
    a.data_dir.mkdir(parents=True, exist_ok=True)
    token_file = a.data_dir / "token"
    try:
        token = resolve_token(a.token, a.token_file)
    except ValueError as exc:
        print(f"seraphim scheduler: {exc}", file=sys.stderr)
        return 2
    if token is None:
        token = token_file.read_text().strip() if token_file.exists() else secrets.token_hex(16)
        log.info("cluster token in %s: clients pass --token-file %s (or SERAPHIM_TOKEN_FILE)", token_file, token_file)
    if not token_file.exists() or token_file.read_text().strip() != token:
        token_file.write_text(token)
    token_file.chmod(0o600)
    tls = (TlsFiles(ca=a.tls_ca, cert=a.tls_cert, key=a.tls_key, server_name=a.tls_server_name)
           if a.tls_cert else None)
    try:
        server, port = make_server(a.host, a.port, token=token, tls=tls)
    except (OSError, ValueError) as exc:
        print(f"seraphim scheduler: {exc}", file=sys.stderr)
        return 1
    own = f"{'127.0.0.1' if a.host in ('0.0.0.0', '::') else a.host}:{port}"
    master = Master(a.data_dir, LocalLauncher(own, token_file, tls), heartbeat_timeout_s=a.heartbeat_timeout)
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(SchedulerService(master), server)
    try:
        web = _web_server(a, master, token, tls)
    except (OSError, ssl.SSLError) as exc:  # SSLError: a certificate and key that do not belong together
        master.close()
        print(f"seraphim scheduler: cannot serve HTTP on {a.http_host or a.host}:{a.http_port}: "
              f"{exc.strerror or exc} (--http-port: another port, or 0 for a free one)", file=sys.stderr)
        return 1
    server.start()
    log.info("scheduler serving on %s:%d (data %s)", a.host, port, a.data_dir)
    if web is not None:
        web.start()
        log.info("dashboard and /metrics on %s://%s:%d/ (metrics %s)", web.scheme, a.http_host or a.host, web.port,
                 "public" if a.metrics_public else "behind the token")
        write_port_file(a.http_port_file, web.port)
    write_port_file(a.port_file, port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    if web is not None:
        web.close()
    master.close()
    server.stop(grace=2).wait()
    log.info("scheduler stopped")
    return 0
