"""Prometheus metrics of one PS or worker process, shared by both sides of the wire.

Each process object keeps a registry of its own (two PS shards in one test process must not collide in the global
one); its SchedulerAgent sends the registry's text to the scheduler with its heartbeats, and the scheduler serves
every process's metrics on its ``/metrics`` with ``job_id``, ``role`` and ``rank`` labels: one scrape target per
cluster, reached with the cluster token, whatever ports the processes got.

    registry = process_registry()
    rpc = RpcMetrics(registry, "seraphim_ps")
    rpc.observe("Pull", seconds, sent=len(reply), received=len(request))   # latency histogram, bytes each way
"""

from __future__ import annotations

from prometheus_client import (CollectorRegistry, Counter, Histogram, ProcessCollector, disable_created_metrics,
                               generate_latest)

# RPC latencies span a loopback pull of a few rows (100 us) to a BSP clock waiting for the slowest worker (seconds)
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)


def process_registry() -> CollectorRegistry:
    """A fresh registry with the process collector (CPU seconds, resident memory, open files). The ``_created``
    series of counters and histograms are switched off for the process: they would double every heartbeat's text."""
    disable_created_metrics()
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> str:
    """The registry in Prometheus text format, as a heartbeat carries it."""
    return generate_latest(registry).decode()


class RpcMetrics:
    """Latency per method, bytes sent and received per method, and failed calls per method and status code."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.seconds = Histogram(f"{prefix}_rpc_seconds", "Time of one RPC, by method", ["method"],
                                 registry=registry, buckets=LATENCY_BUCKETS)
        self.sent = Counter(f"{prefix}_rpc_sent_bytes", "Bytes sent in RPC messages, by method", ["method"],
                            registry=registry)
        self.received = Counter(f"{prefix}_rpc_received_bytes", "Bytes received in RPC messages, by method",
                                ["method"], registry=registry)
        self.errors = Counter(f"{prefix}_rpc_errors", "RPCs that ended in an error status, by method and code",
                              ["method", "code"], registry=registry)
        self._children: dict[str, tuple[Histogram, Counter, Counter]] = {}

    def _child(self, method: str) -> tuple[Histogram, Counter, Counter]:
        """The labelled series of a method, looked up once: .labels() costs more than the observation."""
        child = self._children.get(method)
        if child is None:
            child = self._children[method] = (self.seconds.labels(method), self.sent.labels(method),
                                              self.received.labels(method))
        return child

    def observe(self, method: str, seconds: float, sent: int = 0, received: int = 0) -> None:
        """One call of ``method``: its time and the bytes each way (a plain call, not a context manager: this runs
        on every pull and push, and a generator-based ``with`` cost more than the observation)."""
        latency, sent_bytes, received_bytes = self._child(method)
        latency.observe(seconds)
        sent_bytes.inc(sent)
        received_bytes.inc(received)

    def error(self, method: str, code: str) -> None:
        self.errors.labels(method, code).inc()
