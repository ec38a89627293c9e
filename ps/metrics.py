"""A PS shard's Prometheus metrics: its tables, pages and clocks read at scrape time, and its RPCs as they happen.

Table and page figures come from ``ParameterServer.stats()`` when the registry is collected (every few seconds,
on the heartbeat thread), so the data path pays nothing for them; only the RPC wrapper observes each call.

    registry = process_registry()
    metrics = PSMetrics(ps, registry)          # registers the collector and metrics.rpc
    PSService(ps, max_bytes, metrics.rpc)
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from seraphim.proto.telemetry import RpcMetrics
from seraphim.ps.server import ParameterServer


class PSMetrics:
    """A collector; registers itself and the PS's RPC metrics in ``registry``."""

    def __init__(self, ps: ParameterServer, registry: CollectorRegistry) -> None:
        self.ps = ps
        self.rpc = RpcMetrics(registry, "seraphim_ps")
        self._final: list[Metric] | None = None
        registry.register(self)

    def freeze(self) -> None:
        """Keep the figures as they are now, before the PS closes its store: the last heartbeat still sends them."""
        self._final = list(self._live())

    def collect(self) -> Iterator[Metric]:
        return iter(self._final) if self._final is not None else self._live()

    def _live(self) -> Iterator[Metric]:
        stats = self.ps.stats()
        page = max(stats.page_bytes, 1)
        per_table = {
            "rows": GaugeMetricFamily("seraphim_ps_table_rows", "Rows held, by table", labels=["table"]),
            "resident": GaugeMetricFamily("seraphim_ps_pages_resident", "Pages in the RAM tier, by table",
                                          labels=["table"]),
            "disk": GaugeMetricFamily("seraphim_ps_pages_on_disk", "Pages stored in LMDB, by table",
                                      labels=["table"]),
            "hit_ratio": GaugeMetricFamily("seraphim_ps_page_hit_ratio",
                                           "Page accesses served from RAM over all page accesses, by table",
                                           labels=["table"]),
            "hits": CounterMetricFamily("seraphim_ps_page_hits", "Page accesses served from RAM", labels=["table"]),
            "misses": CounterMetricFamily("seraphim_ps_page_misses", "Page accesses read from LMDB",
                                          labels=["table"]),
            "pull_rows": CounterMetricFamily("seraphim_ps_pulled_rows", "Rows pulled, by table", labels=["table"]),
            "push_rows": CounterMetricFamily("seraphim_ps_pushed_rows", "Rows pushed, by table", labels=["table"]),
            "pull_bytes": CounterMetricFamily("seraphim_ps_pulled_bytes", "Row bytes pulled, by table",
                                              labels=["table"]),
            "push_bytes": CounterMetricFamily("seraphim_ps_pushed_bytes", "Gradient bytes pushed, by table",
                                              labels=["table"]),
        }
        for t in stats.tables:
            values = {"rows": t.rows, "resident": t.bytes_ram // page, "disk": t.bytes_disk // page,
                      "hit_ratio": t.hit_rate, "hits": t.hits, "misses": t.misses, "pull_rows": t.pull_rows,
                      "push_rows": t.push_rows, "pull_bytes": t.pull_bytes, "push_bytes": t.push_bytes}
            for key, family in per_table.items():
                family.add_metric([t.name], values[key])
        yield from per_table.values()
        yield GaugeMetricFamily("seraphim_ps_ram_budget_bytes", "Byte budget of the RAM tier", value=stats.ram_budget)
        yield GaugeMetricFamily("seraphim_ps_ram_used_bytes", "Bytes of the RAM tier holding pages",
                                value=stats.ram_used)
        yield GaugeMetricFamily("seraphim_ps_lmdb_bytes", "Bytes used in the LMDB environment", value=stats.lmdb_bytes)
        yield CounterMetricFamily("seraphim_ps_evictions", "Pages evicted from the RAM tier", value=stats.evictions)
        yield GaugeMetricFamily("seraphim_ps_min_clock", "The slowest worker's clock on this shard",
                                value=self.ps.clocks.min_clock)
        clocks = GaugeMetricFamily("seraphim_ps_worker_clock", "Each worker's clock on this shard", labels=["worker"])
        for worker, clock in enumerate(self.ps.clocks.clocks):
            clocks.add_metric([str(worker)], clock)
        yield clocks
