"""The scheduler's HTTP port: the dashboard, its JSON API and Prometheus ``/metrics``.

``seraphim scheduler start --http-port 8080`` serves it beside the gRPC port, under TLS when the scheduler has a
certificate. The page and its script carry no data and load without the token; every ``/api/`` call needs the
cluster token as ``Authorization: Bearer TOKEN`` (the page reads it from the URL's fragment, ``#token=...``, which
never reaches a server log, and keeps it in the tab's sessionStorage), and so does ``/metrics`` unless
``--metrics-public``. The API:

    GET /api/jobs                          every job: state, progress, restarts, duration
    GET /api/jobs/ID                       one job and its processes (role, host, pid, attempt, heartbeat age)
    GET /api/jobs/ID/curves                its metrics per worker and step (at most 400 points a curve)
    GET /api/jobs/ID/logs?source=S&offset=N  the log from byte N (-1: its last 64 KiB); the next offset to ask for
    GET /api/jobs/ID/shards                its PS shards' tables, pages, hit ratio, bytes and RPC counts
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import ssl
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from seraphim.proto import scheduler_pb2
from seraphim.proto.errors import InvalidArgument, NotFound, SeraphimError
from seraphim.proto.rpc import TlsFiles
from seraphim.scheduler.master import Master

log = logging.getLogger("seraphim.scheduler")
STATE_NAME = scheduler_pb2.JobState.Name
STATIC_DIR = Path(__file__).resolve().parent / "web_static"
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
          "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8")}
LOG_TAIL_BYTES = 64 * 1024
LOG_READ_BYTES = 1024 * 1024
CURVE_POINTS = 400
_LOG_SOURCE = re.compile(r"[a-z]+(-\d+)?")


class Unauthorized(Exception):
    """A call without the right cluster token."""


class WebServer:
    """A threading HTTP(S) server over a Master and the cluster's Prometheus registry."""

    def __init__(self, master: Master, registry: CollectorRegistry, host: str, port: int, token: str,
                 tls: TlsFiles | None = None, metrics_public: bool = False) -> None:
        self.api = DashboardApi(master)
        self.registry, self.token, self.metrics_public = registry, token, metrics_public
        self.httpd = _QuietServer((host, port), _handler_class(self))
        self.scheme = "http"
        if tls is not None and tls.cert is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.cert, tls.key)
            # the handshake runs on the request's thread: a client that never sends one cannot stall accept()
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True,
                                                    do_handshake_on_connect=False)
            self.scheme = "https"
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def check_token(self, authorization: str | None) -> None:
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise Unauthorized("missing or wrong cluster token: send it as 'Authorization: Bearer TOKEN' (the "
                               "dashboard takes it from its URL: /#token=TOKEN)")

    def metrics_text(self) -> bytes:
        return generate_latest(self.registry)


class _QuietServer(ThreadingHTTPServer):
    """A connection that breaks off (a plaintext client on the TLS port, a closed tab) is logged in one line."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: tuple[str, int]) -> None:
        log.debug("HTTP connection from %s ended with an error", client_address, exc_info=True)


def _handler_class(server: WebServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 30  # seconds a connection may sit idle

        def log_message(self, format: str, *args: Any) -> None:  # requests are not worth a line each in the log
            return

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            try:
                if url.path in STATIC:
                    name, kind = STATIC[url.path]
                    self._send(HTTPStatus.OK, (STATIC_DIR / name).read_bytes(), kind)
                elif url.path == "/metrics":
                    if not server.metrics_public:
                        server.check_token(self.headers.get("Authorization"))
                    self._send(HTTPStatus.OK, server.metrics_text(), CONTENT_TYPE_LATEST)
                elif url.path.startswith("/api/"):
                    server.check_token(self.headers.get("Authorization"))
                    reply = server.api.route(url.path, {k: v[-1] for k, v in parse_qs(url.query).items()})
                    self._send(HTTPStatus.OK, json.dumps(reply).encode(), "application/json")
                else:
                    self._error(HTTPStatus.NOT_FOUND, f"no page {url.path!r}; the dashboard is at /")
            except Unauthorized as exc:
                self._error(HTTPStatus.UNAUTHORIZED, str(exc))
            except NotFound as exc:
                self._error(HTTPStatus.NOT_FOUND, str(exc))
            except InvalidArgument as exc:
                self._error(HTTPStatus.BAD_REQUEST, str(exc))
            except (SeraphimError, OSError, ValueError) as exc:
                log.exception("GET %s failed", url.path)
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")

        def _error(self, status: HTTPStatus, message: str) -> None:
            self._send(status, json.dumps({"error": message}).encode(), "application/json")

        def _send(self, status: HTTPStatus, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

    return Handler


class DashboardApi:
    """The JSON the dashboard polls, read from the master's store, the run directories and the process metrics."""

    def __init__(self, master: Master) -> None:
        self.master = master
        self._routes: dict[str, Callable[[str, dict[str, str]], Any]] = {
            "": self.job, "curves": self.curves, "logs": self.logs, "shards": self.shards}

    def route(self, path: str, query: dict[str, str]) -> Any:
        parts = path.strip("/").split("/")[1:]  # after "api"
        if parts == ["jobs"]:
            return self.jobs()
        if len(parts) in (2, 3) and parts[0] == "jobs" and (parts[2:] or [""])[0] in self._routes:
            return self._routes[(parts[2:] or [""])[0]](parts[1], query)
        raise NotFound(f"no API {path!r}; see /api/jobs, /api/jobs/ID[/curves|/logs|/shards]")

    def _summary(self, status: scheduler_pb2.JobStatus, now: float) -> dict[str, Any]:
        end = status.finished or now
        return {"job_id": status.job_id, "name": status.name, "algorithm": status.algorithm,
                "state": STATE_NAME(status.state), "reason": status.reason, "step": status.step,
                "total_steps": status.total_steps, "restarts": status.restarts, "created": status.created,
                "duration_s": end - status.started if status.started else 0.0, "run_dir": status.run_dir,
                "num_ps": status.num_ps, "num_workers": status.num_workers, "metrics": dict(status.metrics)}

    def jobs(self) -> dict[str, Any]:
        now = time.time()
        return {"jobs": [self._summary(self.master.status(j), now) for j in reversed(self.master.store.jobs())]}

    def job(self, job_id: str, query: dict[str, str]) -> dict[str, Any]:
        now = time.time()
        status = self.master.status(self.master.job(job_id))
        out = self._summary(status, now)
        out["processes"] = [{"name": f"{n.role}-{n.rank}", "role": n.role, "rank": n.rank, "host": n.host,
                             "pid": n.pid, "attempt": n.attempt, "state": n.state, "address": n.address,
                             "step": n.step,
                             "heartbeat_age_s": now - n.last_heartbeat if n.last_heartbeat else None}
                            for n in status.nodes]
        return out

    def curves(self, job_id: str, query: dict[str, str]) -> dict[str, Any]:
        """{metric: {worker: [[step, value], ...]}}, each curve thinned to at most CURVE_POINTS evenly spaced rows."""
        from seraphim.scheduler.reports import read_metrics

        metrics_dir = Path(self.master.job(job_id).run_dir) / "metrics"
        try:
            per_worker = read_metrics(metrics_dir)
        except ValueError:  # no worker has reported yet
            return {"curves": {}}
        curves: dict[str, dict[str, list[list[float]]]] = {}
        for rank, rows in per_worker.items():
            for name in np.unique(rows.name):
                mask = (rows.name == name) & np.isfinite(rows.value)
                steps, values = rows.step[mask], rows.value[mask]
                keep = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), CURVE_POINTS)).round().astype(int))
                if len(steps):
                    curves.setdefault(str(name), {})[str(rank)] = np.stack(
                        [steps[keep], values[keep]], axis=1).tolist()
        return {"curves": curves}

    def logs(self, job_id: str, query: dict[str, str]) -> dict[str, Any]:
        log_dir = Path(self.master.job(job_id).run_dir) / "logs"
        sources = sorted(p.stem for p in log_dir.glob("*.log"))
        source = query.get("source", "job")
        if not _LOG_SOURCE.fullmatch(source):
            raise InvalidArgument(f"log source {source!r} is not a name like job, ps-0 or worker-1")
        try:
            offset = int(query.get("offset", "-1"))
        except ValueError:
            raise InvalidArgument(f"offset {query['offset']!r} is not an integer (-1: the log's tail)") from None
        path = log_dir / f"{source}.log"
        if not path.exists():
            return {"source": source, "sources": sources, "text": "", "offset": max(offset, 0)}
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if offset < 0 or offset > size:  # the tail; a log that shrank (rewritten) starts again at its tail too
                offset = max(0, size - LOG_TAIL_BYTES)
                if offset:
                    f.seek(offset - 1)
                    offset += len(f.readline()) - 1  # from the next whole line
            f.seek(offset)
            data = f.read(LOG_READ_BYTES)
        data = data[: data.rfind(b"\n") + 1]
        return {"source": source, "sources": sources, "text": data.decode(errors="replace"),
                "offset": offset + len(data)}

    def shards(self, job_id: str, query: dict[str, str]) -> dict[str, Any]:
        """Each PS shard's figures from the metrics its last heartbeat carried, with the time they arrived."""
        self.master.job(job_id)
        shards = []
        for (_, role, rank), node in sorted(self.master.process_metrics.nodes(job_id).items()):
            if role != "ps":
                continue
            tables: dict[str, dict[str, float]] = {}
            totals: dict[str, float] = {}
            for family in node.families:
                for sample in family.samples:
                    name = sample.name.removeprefix("seraphim_ps_")
                    if "table" in sample.labels:
                        tables.setdefault(sample.labels["table"], {})[name] = sample.value
                    elif name == "rpc_seconds_count":
                        totals["rpcs"] = totals.get("rpcs", 0.0) + sample.value
                    elif not sample.labels:
                        totals[name] = sample.value
            shards.append({"shard": rank, "received": node.received, "tables": tables, "totals": totals})
        return {"shards": shards, "now": time.time()}
