"""PasCa's multi-objective search over the scalable GNN design space, every trial a job of its own.

The space is PasCa's paradigm: the graph operator (``Â`` with r, or personalized PageRank) and its number of
hops, the message operator over hops (last = SGC, concat = SIGN, fixed weights = S²GC and GBP, node-adaptive
recursive or JK attention = GAMLP) and the width. optuna's NSGA-II (or TPE, or random) proposes a design, the
search submits it to the scheduler as a ``gnn.gamlp`` job on the graph the search prepared once, and tells optuna
the trial's validation accuracy and its propagation-plus-training seconds. The Pareto front is printed, written to
``pareto.json`` and plotted to ``pareto.png`` in the search's run directory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import optuna
import yaml
from pydantic import BaseModel, ConfigDict, Field

from seraphim.algorithms.gnn.csr import GraphError
from seraphim.algorithms.gnn.graph_source import GraphSourceSpec, open_graph
from seraphim.algorithms.gnn.job import TrainingSpec
from seraphim.algorithms.registry import Job, JobContext, register
from seraphim.proto import scheduler_pb2
from seraphim.scheduler.client import SchedulerClient

MESSAGE_OPS = {"last": "sgc", "concat": "sign", "s2gc_weights": "s2gc", "gbp_weights": "gbp",
               "recursive_attention": "gamlp", "jk_attention": "gamlp"}


class SpaceSpec(BaseModel):
    """The design space searched (each list a categorical choice)."""

    model_config = ConfigDict(extra="forbid")
    operators: list[Literal["laplacian", "ppr"]] = ["laplacian", "ppr"]
    r: list[float] = [0.0, 0.5, 1.0]
    hops: tuple[int, int] = (1, 6)
    messages: list[Literal["last", "concat", "s2gc_weights", "gbp_weights", "recursive_attention",
                           "jk_attention"]] = list(MESSAGE_OPS)
    hidden: list[int] = [32, 64, 128]


class TrialClusterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ps: int = Field(1, ge=1)
    workers: int = Field(1, ge=1)
    ram_mb: float = Field(64.0, gt=0)
    page_kb: int = Field(4, ge=4)


class PasCaSearchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    graph: GraphSourceSpec
    trials: int = Field(8, ge=1, le=1000)
    sampler: Literal["nsga2", "tpe", "random"] = "nsga2"
    seed: int = 0
    space: SpaceSpec = Field(default_factory=SpaceSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    trial_cluster: TrialClusterSpec = Field(default_factory=TrialClusterSpec)
    trial_timeout_s: float = Field(1800.0, gt=0)


def _sampler(spec: PasCaSearchSpec) -> optuna.samplers.BaseSampler:
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=spec.seed, population_size=max(2, min(8, spec.trials)))
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=spec.seed)
    return optuna.samplers.RandomSampler(seed=spec.seed)


def design(trial: optuna.Trial, space: SpaceSpec) -> dict[str, Any]:
    """One point of the design space, as the propagation and model sections of a ``gnn.gamlp`` job."""
    operator = trial.suggest_categorical("operator", space.operators)
    r = trial.suggest_categorical("r", space.r)
    hops = trial.suggest_int("hops", *space.hops)
    message = trial.suggest_categorical("message", space.messages)
    hidden = trial.suggest_categorical("hidden", space.hidden)
    options: dict[str, Any] = {"hidden": hidden}
    if message in ("recursive_attention", "jk_attention"):
        options.update(attention="recursive" if message == "recursive_attention" else "jk", out_layers=2,
                       hop_layers=1)
    return {"propagation": {"operator": operator, "r": r, "hops": hops},
            "model": {"kind": MESSAGE_OPS[message], "options": options}}


def pareto_front(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trials no other trial beats on both accuracy (higher) and seconds (lower), by increasing seconds."""
    front = [p for p in points if not any(q["valid_acc"] >= p["valid_acc"] and q["seconds"] <= p["seconds"] and
                                          (q["valid_acc"], q["seconds"]) != (p["valid_acc"], p["seconds"])
                                          for q in points)]
    return sorted(front, key=lambda p: p["seconds"])


def plot_front(points: list[dict[str, Any]], front: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([p["seconds"] for p in points], [p["valid_acc"] for p in points], c="0.6", label="trials")
    ax.plot([p["seconds"] for p in front], [p["valid_acc"] for p in front], "o-", c="C3", label="Pareto front")
    for p in front:
        ax.annotate(p["label"], (p["seconds"], p["valid_acc"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel("propagation + training seconds")
    ax.set_ylabel("validation accuracy")
    ax.set_title("PasCa search: accuracy against time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class _Trials:
    """Submits trial jobs to the scheduler and waits for their results; cancels the one running if stopped."""

    def __init__(self, spec: PasCaSearchSpec, ctx: JobContext, graph_dir: Path) -> None:
        if ctx.scheduler is None:
            raise GraphError("gnn.pasca runs each trial as a job: start it through a scheduler (seraphim run or "
                             "seraphim submit), not as a direct worker")
        self.spec, self.ctx, self.graph_dir = spec, ctx, graph_dir
        self.client = SchedulerClient(ctx.scheduler.address, token=ctx.scheduler.token, tls=ctx.scheduler.tls)
        self.root = ctx.run_dir / "trials"
        self.root.mkdir(parents=True, exist_ok=True)
        self.name = ctx.run_dir.name[:40]

    def job_yaml(self, number: int, point: dict[str, Any]) -> str:
        c = self.spec.trial_cluster
        return yaml.safe_dump({
            "name": f"{self.name}-t{number}", "algorithm": "gnn.gamlp",
            "cluster": {"ps": c.ps, "workers": c.workers, "max_restarts": 0},
            "storage": {"dir": str(self.root), "ram_mb": c.ram_mb, "page_kb": c.page_kb, "snapshot_every": 0},
            "train": {"graph": {"path": str(self.graph_dir), "partition": self.spec.graph.partition},
                      "training": self.spec.training.model_dump(), **point},
        })

    def run(self, number: int, point: dict[str, Any]) -> dict[str, Any]:
        status = self.client.submit(self.job_yaml(number, point), "local", str(self.root))
        deadline = time.monotonic() + self.spec.trial_timeout_s
        try:
            while status.state not in (scheduler_pb2.SUCCEEDED, scheduler_pb2.FAILED, scheduler_pb2.CANCELLED):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"trial {number} ({status.job_id}) ran past trial_timeout_s="
                                     f"{self.spec.trial_timeout_s:.0f}")
                time.sleep(0.5)
                status = self.client.job(status.job_id)
        finally:
            if status.state in (scheduler_pb2.PENDING, scheduler_pb2.RUNNING):
                self.client.cancel(status.job_id)
        if status.state != scheduler_pb2.SUCCEEDED:
            return {"job": status.job_id, "failed": f"{scheduler_pb2.JobState.Name(status.state)}: {status.reason}"}
        result = json.loads((Path(status.run_dir) / "results" / "worker-0.json").read_text())
        return {"job": status.job_id, "valid_acc": result["valid_acc"], "test_acc": result["test_acc"],
                "seconds": result["propagation_s"] + result["train_s"]}


def run_search(spec: PasCaSearchSpec, ctx: JobContext) -> dict[str, Any]:
    if ctx.world_size != 1:
        raise GraphError(f"gnn.pasca drives its trials from one worker; set cluster.workers: 1 (got "
                         f"{ctx.world_size}); each trial's own cluster is trial_cluster")
    graph_dir = Path(spec.graph.path) if spec.graph.path is not None else ctx.run_dir / "graph"
    open_graph(spec.graph, graph_dir, 0)  # generated or converted once for every trial; a bad graph fails here
    trials = _Trials(spec, ctx, graph_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=_sampler(spec))
    points: list[dict[str, Any]] = []
    for number in range(spec.trials):
        trial = study.ask()
        point = design(trial, spec.space)
        outcome = trials.run(number, point)
        if "failed" in outcome:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            ctx.log.warning("trial %d failed: %s", number, outcome["failed"])
            continue
        study.tell(trial, [outcome["valid_acc"], outcome["seconds"]])
        label = f"{point['model']['kind']}/{point['propagation']['operator']}/K{point['propagation']['hops']}"
        points.append({"trial": number, "label": label, **trial.params, **outcome})
        ctx.report(number, {"trial_valid_acc": outcome["valid_acc"], "trial_seconds": outcome["seconds"],
                            "accuracy": max(p["valid_acc"] for p in points)})
        ctx.log.info("trial %d %s: valid %.4f test %.4f in %.1fs", number, label, outcome["valid_acc"],
                     outcome["test_acc"], outcome["seconds"])
    front = pareto_front(points)
    (ctx.run_dir / "pareto.json").write_text(json.dumps({"trials": points, "front": front}, indent=2))
    if points:
        plot_front(points, front, ctx.run_dir / "pareto.png")
    for p in front:
        ctx.log.info("pareto: %-28s valid %.4f test %.4f %.1fs", p["label"], p["valid_acc"], p["test_acc"],
                     p["seconds"])
    return {"trials": len(points), "failed": spec.trials - len(points),
            "pareto_front": [{k: p[k] for k in ("label", "valid_acc", "test_acc", "seconds")} for p in front]}


@register("gnn.pasca")
class PasCaSearchJob(Job):
    """The multi-objective search; ``cluster.workers`` must be 1 (the search driver)."""

    Spec = PasCaSearchSpec

    def total_steps(self) -> int:
        return self.spec.trials

    def run(self, ctx: JobContext) -> dict[str, Any]:
        return run_search(self.spec, ctx)
