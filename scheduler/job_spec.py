"""The job spec: one YAML format for every workload, validated before anything starts.

Errors name the field, the value given and what is allowed, one line each, so a typo in a spec costs a glance,
not a traceback. The algorithm's own section (``train``) is validated by that algorithm's Spec model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,48}[a-z0-9])?$"


class JobSpecError(ValueError):
    """A job spec that cannot run; the message lists every problem found."""


class ClusterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ps: int = Field(2, ge=1, le=256, description="number of PS shards")
    workers: int = Field(2, ge=1, le=1024, description="number of worker processes")
    launcher: Literal["local", "manual", "kubernetes"] = Field(
        "local", description="local: the scheduler starts the processes; manual or kubernetes: they register")
    ps_per_worker: bool = Field(
        False, description="give each worker its own `ps` shards that no other worker reaches (federated parties)")
    max_restarts: int = Field(3, ge=0, le=100, description="restarts allowed per process before the job fails")
    image: str = Field("seraphim:latest", description="container image (kubernetes launcher)")
    scheduler_address: str = Field("seraphim-scheduler:7070",
                                   description="where pods reach the scheduler (kubernetes launcher)")


    @property
    def total_ps(self) -> int:
        """PS processes the job runs: `ps` shards, once per worker when each worker has its own."""
        return self.ps * (self.workers if self.ps_per_worker else 1)


class StorageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dir: str = Field("runs", description="directory under which runs/<job> is created")
    ram_mb: float = Field(256.0, gt=0, description="RAM budget of each PS's page cache, MiB")
    page_kb: int = Field(256, ge=4, le=65536, description="page size, KiB")
    durability: Literal["snapshot", "strict"] = "snapshot"
    snapshot_every: int = Field(10, ge=0, description="snapshot every N clocks (0: off)")


class ConsistencySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    staleness: int = Field(0, ge=-1, description="0 BSP, N SSP, -1 ASP")
    deterministic: bool = Field(
        False, description="hold each clock's gradient pushes on the PS and apply them in worker order, so two runs "
                           "with one seed are bitwise equal (BSP only)")

    @model_validator(mode="after")
    def _deterministic_needs_bsp(self) -> "ConsistencySpec":
        if self.deterministic and self.staleness != 0:
            raise ValueError(f"deterministic: true applies a clock's pushes once every worker has completed it, so "
                             f"it needs staleness 0 (BSP); got staleness {self.staleness}")
        return self


class JobSpec(BaseModel):
    """A whole job: what to run, on how many processes, with what storage and consistency."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, description="lower-case letters, digits and '-', at most 50")
    algorithm: str
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    consistency: ConsistencySpec = Field(default_factory=ConsistencySpec)
    train: dict[str, Any] = Field(default_factory=dict)


def _format(err: ValidationError, prefix: str = "") -> list[str]:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        given = f" (got {e['input']!r})" if e["type"] != "missing" and not isinstance(e["input"], dict) else ""
        lines.append(f"{loc}: {e['msg']}{given}")
    return lines


def parse_job(data: Any, source: str = "job spec") -> tuple[JobSpec, BaseModel]:
    """Validate a job spec mapping; returns it and its algorithm's validated train section."""
    from seraphim.algorithms.registry import job_class

    if not isinstance(data, dict):
        raise JobSpecError(f"{source}: expected a mapping of fields at the top level, got {type(data).__name__}")
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise JobSpecError(f"{source}: " + "; ".join(_format(exc))) from None
    try:
        cls = job_class(spec.algorithm)
    except ValueError as exc:
        raise JobSpecError(f"{source}: algorithm: {exc}") from None
    try:
        train = cls.Spec.model_validate(spec.train)
    except ValidationError as exc:
        raise JobSpecError(f"{source}: " + "; ".join(_format(exc, "train"))) from None
    problems = cls(train).check_cluster(spec.cluster, spec.storage)
    if problems:
        raise JobSpecError(f"{source}: " + "; ".join(problems))
    return spec, train


def parse_job_text(text: str, source: str = "job spec") -> tuple[JobSpec, BaseModel]:
    """Validate a job spec given as YAML text."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise JobSpecError(f"{source}: not valid YAML{where}: {problem}") from None
    return parse_job(data, source)


def load_job(path: str | Path) -> tuple[JobSpec, BaseModel]:
    """Read and validate a job spec YAML file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise JobSpecError(f"cannot read job spec {str(path)!r}: {exc.strerror}") from None
    return parse_job_text(text, str(path))
