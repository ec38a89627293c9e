"""The cluster's Prometheus metrics as the scheduler serves them on ``/metrics``: its jobs from the job store, and
the metrics every PS and worker process sent with its heartbeats, labelled with ``job_id``, ``role`` and ``rank``.

One scrape target for the whole cluster: the processes' ports may be anything (``seraphim run`` picks free ones) and
they reach the scheduler anyway. A process's series are as fresh as its last heartbeat that carried them (every 2 s
by default, and its last one); those of a job that ended ``retain_s`` ago are dropped.

    metrics = ClusterMetrics(master)            # master.heartbeat() feeds master.process_metrics
    registry = CollectorRegistry(); registry.register(metrics)
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator

from prometheus_client import ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from seraphim.proto import scheduler_pb2
from seraphim.scheduler.store import JobRow

if TYPE_CHECKING:
    from seraphim.scheduler.master import Master

log = logging.getLogger("seraphim.scheduler")
STATE_NAME = scheduler_pb2.JobState.Name
_ACTIVE = (scheduler_pb2.PENDING, scheduler_pb2.RUNNING)


@dataclass
class NodeMetrics:
    """The metric families one process sent last, and when (unix seconds)."""

    families: list[Metric]
    received: float


class ProcessMetrics:
    """The latest metrics of each job process, keyed by (job_id, role, rank); thread-safe."""

    def __init__(self) -> None:
        self._nodes: dict[tuple[str, str, int], NodeMetrics] = {}
        self._lock = threading.Lock()

    def update(self, job_id: str, role: str, rank: int, text: str) -> None:
        """Keep a process's metrics; text that does not parse is logged and dropped (the heartbeat still counts)."""
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError as exc:
            log.warning("%s: %s-%d sent metrics that do not parse as Prometheus text (%s); dropped", job_id, role,
                        rank, exc)
            return
        with self._lock:
            self._nodes[(job_id, role, rank)] = NodeMetrics(families, time.time())

    def nodes(self, job_id: str | None = None) -> dict[tuple[str, str, int], NodeMetrics]:
        with self._lock:
            return {k: v for k, v in self._nodes.items() if job_id is None or k[0] == job_id}

    def forget(self, job_ids: Iterable[str]) -> None:
        drop = set(job_ids)
        with self._lock:
            for key in [k for k in self._nodes if k[0] in drop]:
                del self._nodes[key]


def labelled(groups: Iterable[tuple[dict[str, str], Iterable[Metric]]]) -> list[Metric]:
    """Families of several processes merged by name, each sample with its process's labels added: one family per
    name, as the text format requires."""
    merged: dict[str, Metric] = {}
    for extra, families in groups:
        for family in families:
            out = merged.get(family.name)
            if out is None:
                out = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            elif out.type != family.type:
                log.warning("metric %s is a %s in one process and a %s in another; the second is left out",
                            family.name, out.type, family.type)
                continue
            out.samples.extend(s._replace(labels={**s.labels, **extra}) for s in family.samples)
    return list(merged.values())


class ClusterMetrics:
    """A prometheus_client collector: the scheduler's process, its jobs, and every job process's own metrics."""

    def __init__(self, master: "Master", retain_s: float = 600.0) -> None:
        self.master = master
        self.retain_s = retain_s
        self._own = ProcessCollector(registry=None)

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        jobs = self.master.store.jobs()
        shown = [j for j in jobs if j.state in _ACTIVE or now - j.finished <= self.retain_s]
        self.master.process_metrics.forget({j.job_id for j in jobs} - {j.job_id for j in shown})
        yield self._job_counts(jobs)
        yield from self._job_families(shown, now)
        groups: list[tuple[dict[str, str], Iterable[Metric]]] = [({"role": "scheduler"}, self._own.collect())]
        for (job_id, role, rank), node in sorted(self.master.process_metrics.nodes().items()):
            groups.append(({"job_id": job_id, "role": role, "rank": str(rank)}, node.families))
        yield from labelled(groups)

    @staticmethod
    def _job_counts(jobs: list[JobRow]) -> Metric:
        counts = GaugeMetricFamily("seraphim_jobs", "Jobs the scheduler knows, by state", labels=["state"])
        by_state = {name: 0 for name in scheduler_pb2.JobState.keys()}
        for job in jobs:
            by_state[STATE_NAME(job.state)] += 1
        for state, n in by_state.items():
            counts.add_metric([state], n)
        return counts

    def _job_families(self, jobs: list[JobRow], now: float) -> Iterator[Metric]:
        """State, progress, restarts and duration of the shown jobs; attempt and heartbeat age of their processes."""
        labels = ["job_id"]
        state = GaugeMetricFamily("seraphim_job_state", "1 for a job's current state", labels=[*labels, "name",
                                                                                               "algorithm", "state"])
        restarts = CounterMetricFamily("seraphim_job_restarts", "Processes of the job started again", labels=labels)
        step = GaugeMetricFamily("seraphim_job_step", "The slowest worker's completed steps", labels=labels)
        total = GaugeMetricFamily("seraphim_job_total_steps", "Steps the job runs", labels=labels)
        duration = GaugeMetricFamily("seraphim_job_duration_seconds", "Since the job started running (to its end)",
                                     labels=labels)
        node_labels = [*labels, "role", "rank"]
        attempt = GaugeMetricFamily("seraphim_process_attempt", "1 for a process's first start, +1 per restart",
                                    labels=node_labels)
        age = GaugeMetricFamily("seraphim_process_heartbeat_age_seconds", "Since the process's last heartbeat",
                                labels=node_labels)
        for job in jobs:
            nodes = self.master.store.nodes(job.job_id)
            state.add_metric([job.job_id, job.name, job.algorithm, STATE_NAME(job.state)], 1)
            restarts.add_metric([job.job_id], job.restarts)
            step.add_metric([job.job_id], min((n.step for n in nodes if n.role == "worker"), default=0))
            total.add_metric([job.job_id], job.total_steps)
            if job.started:
                duration.add_metric([job.job_id], (job.finished or now) - job.started)
            for n in nodes:
                attempt.add_metric([job.job_id, n.role, str(n.rank)], n.attempt)
                if job.state in _ACTIVE and n.last_heartbeat:
                    age.add_metric([job.job_id, n.role, str(n.rank)], now - n.last_heartbeat)
        yield from (state, restarts, step, total, duration, attempt, age)
