"""Workloads register by name; the worker role finds a job's class here from the spec's ``algorithm`` field.

Each algorithm lives in its own module, imported only when a job asks for it, so a worker for a CTR job never
loads the GNN or federated code.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from pydantic import BaseModel

from seraphim.proto.rpc import TlsFiles
from seraphim.worker.client import PSClient

#: algorithm name -> module that registers it
ALGORITHM_MODULES: dict[str, str] = {
    "ctr": "seraphim.algorithms.ctr.job",
    "dit": "seraphim.algorithms.dit.job",
    "gnn.gamlp": "seraphim.algorithms.gnn.job",
    "gnn.pasca": "seraphim.algorithms.gnn.search",
    "vfl.blindfl": "seraphim.algorithms.vfl.job",
    "beamvq": "seraphim.algorithms.beamvq.job",
    "lm.transformer": "seraphim.algorithms.transformer.job",
    "lm.moe": "seraphim.algorithms.moe.job",
    "lr_scaling.sweep": "seraphim.algorithms.lr_scaling_sweep",
    "lr_scaling.trial": "seraphim.algorithms.lr_scaling_trial",
}

_REGISTRY: dict[str, type["Job"]] = {}


@dataclass
class JobContext:
    """What a running job's worker sees: its rank, the PS, where to write, and how to report metrics."""

    rank: int
    world_size: int
    ps: PSClient
    run_dir: Path
    report: Callable[[int, dict[str, float]], None]
    log: logging.Logger
    start_step: int = 0  # a restarted worker resumes here: the clock the PS shards hold for its rank
    scheduler: SchedulerAccess | None = None  # set for managed workers: jobs that submit jobs (searches) use it


@dataclass(frozen=True)
class SchedulerAccess:
    """How a managed worker reaches its scheduler, for workloads whose trials are jobs of their own."""

    address: str
    token: str | None
    tls: TlsFiles | None
    job_id: str = ""  # this worker's job, for requests about it (its memory plan)


class Job(ABC):
    """A workload: its spec section (a pydantic model) and the loop one worker runs."""

    Spec: ClassVar[type[BaseModel]]

    def __init__(self, spec: BaseModel) -> None:
        self.spec = spec

    @abstractmethod
    def total_steps(self) -> int:
        """Steps each worker runs, for progress reporting."""

    def check_cluster(self, cluster: Any, storage: Any) -> list[str]:
        """Problems of this algorithm's section that only the cluster and storage sections show (a page budget
        against the PS's storage page, a model against the disk), as 'field: problem' lines; none by default."""
        return []

    @abstractmethod
    def run(self, ctx: JobContext) -> dict[str, Any]:
        """Train on this worker's share; return the final metrics."""


def register(name: str) -> Callable[[type[Job]], type[Job]]:
    def wrap(cls: type[Job]) -> type[Job]:
        _REGISTRY[name] = cls
        return cls

    return wrap


def known_algorithms() -> list[str]:
    return sorted(ALGORITHM_MODULES)


def job_class(name: str) -> type[Job]:
    """The registered Job class of an algorithm; ValueError naming the known ones when there is none."""
    if name not in ALGORITHM_MODULES:
        raise ValueError(f"unknown algorithm {name!r}; known: {known_algorithms()}")
    importlib.import_module(ALGORITHM_MODULES[name])
    return _REGISTRY[name]
