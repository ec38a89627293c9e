"""The CTR workload as a Seraphim job: each worker trains on its shard of the generated click log."""

from __future__ import annotations

from typing import Any

from seraphim.algorithms.ctr.train import CTRConfig, train_worker
from seraphim.algorithms.registry import Job, JobContext, register


@register("ctr")
class CTRJob(Job):
    """Sparse logistic regression or wide-and-deep, parameters on the PS."""

    Spec = CTRConfig

    def total_steps(self) -> int:
        return self.spec.steps

    def run(self, ctx: JobContext) -> dict[str, Any]:
        """Data-parallel over the job's shared PS; a worker with PS shards of its own trains a model of its own."""
        return train_worker(ctx.ps, "ctr", self.spec, ctx.ps.worker_id, ctx.ps.num_workers, metrics_cb=ctx.report,
                            start_step=ctx.start_step)
