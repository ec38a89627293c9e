"""Train a CTR model on the parameter server: each worker reads its own shard of the generated click log.

Run one worker as a process: `python -m seraphim.algorithms.ctr.train --ps HOST:PORT,... --worker-id I
--num-workers N [--config CONFIG.json] [--out METRICS.json]`.

`fit` is the loop itself and knows nothing about where parameters live; `train_worker` binds it to the PS
(pull dense parameters before the forward, push their gradients and tick the clock after the backward;
sparse rows are pulled and pushed by `PSEmbedding` inside the forward and backward). The single-process
reference (`reference.py`) binds the same loop to local torch optimizers.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import expit, logit

from seraphim.algorithms.ctr.data import ClickBatch, ClickLogSpec, eval_batch, log_loss, roc_auc, worker_batch
from seraphim.algorithms.ctr.models import build_ps_model
from seraphim.worker import PSClient

MetricsCallback = Callable[[int, dict[str, float]], None]
_EVAL_CHUNK = 8192
_PRIOR_ROWS = 4096


class CTRConfig(BaseModel):
    """One CTR training run. lr, initial_accumulator: Adagrad of the sparse tables (torch's semantics; the loss
    is the batch mean); dense_lr: Adam of the bias and the MLP."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: Literal["lr", "wide_deep"] = "wide_deep"
    batch_size: int = Field(1024, ge=1, le=1 << 20)
    steps: int = Field(1000, ge=1)
    lr: float = Field(0.05, gt=0.0)
    initial_accumulator: float = Field(0.0, ge=0.0)
    dense_lr: float = Field(1e-3, gt=0.0)
    embedding_dim: int = Field(8, ge=1, le=1024)
    hidden: tuple[Annotated[int, Field(ge=1)], ...] = Field((256, 128), min_length=1)
    eval_every: int = Field(0, ge=0, description="steps between evaluations; 0: only at the end")
    eval_rows: int = Field(20000, ge=100)
    seed: int = Field(0, ge=0, description="seed of the dense initialization")
    data: ClickLogSpec = Field(default_factory=ClickLogSpec)


@dataclass
class StepHooks:
    """Where parameters live: before_forward refreshes dense values, after_backward applies the gradients."""

    before_forward: Callable[[], None]
    after_backward: Callable[[], None]


def prior_logit(spec: ClickLogSpec) -> float:
    """Log-odds of the click rate on the first rows of the stream, the bias every worker starts from."""
    rate = float(worker_batch(spec, 0, _PRIOR_ROWS, 0, 1).labels.mean())
    return float(logit(np.clip(rate, 1e-4, 1 - 1e-4)))


def model_kwargs(config: CTRConfig) -> dict[str, Any]:
    """The build_model arguments a config implies, identical for the PS and the reference."""
    return dict(
        num_fields=config.data.num_fields,
        embedding_dim=config.embedding_dim,
        hidden=config.hidden,
        prior_logit=prior_logit(config.data),
        seed=config.seed,
    )


def evaluate(model: torch.nn.Module, batch: ClickBatch, hooks: StepHooks) -> dict[str, float]:
    """AUC and log loss of the model on a held-out batch, in chunks."""
    hooks.before_forward()
    with torch.no_grad():
        scores = np.concatenate(
            [
                model(torch.from_numpy(batch.keys[i : i + _EVAL_CHUNK])).numpy()
                for i in range(0, len(batch), _EVAL_CHUNK)
            ]
        )
    return {"auc": roc_auc(batch.labels, scores), "loss": log_loss(batch.labels, expit(scores))}


def fit(
    model: torch.nn.Module,
    config: CTRConfig,
    hooks: StepHooks,
    worker_id: int = 0,
    num_workers: int = 1,
    metrics_cb: MetricsCallback | None = None,
    start_step: int = 0,
) -> dict[str, float]:
    """Run steps start_step..config.steps-1 on this worker's shard; return held-out loss/AUC, the Bayes AUC and
    throughput. A restarted worker passes the step it resumes at; batches depend only on the step, so it reads
    exactly the rows it had not trained on.

    examples_per_s counts the step itself (pull, forward, backward, push, clock), not data generation or
    evaluation, so that it compares storage back ends rather than the generator.
    """
    test = eval_batch(config.data, config.eval_rows)
    bayes = roc_auc(test.labels, test.true_prob)
    train_time, recent = 0.0, deque(maxlen=50)
    metrics: dict[str, float] = {}
    for step in range(start_step, config.steps):
        batch = worker_batch(config.data, step, config.batch_size, worker_id, num_workers)
        t0 = time.perf_counter()
        hooks.before_forward()
        loss = F.binary_cross_entropy_with_logits(model(torch.from_numpy(batch.keys)), torch.from_numpy(batch.labels))
        loss.backward()
        hooks.after_backward()
        dt = time.perf_counter() - t0
        train_time += dt
        recent.append(loss.item())
        metrics = {"train_loss": loss.item(), "examples_per_s": config.batch_size / dt}
        is_last = step + 1 == config.steps
        if is_last or (config.eval_every and (step + 1) % config.eval_every == 0):
            metrics.update(evaluate(model, test, hooks))
        if metrics_cb is not None:
            metrics_cb(step, metrics)
    if "auc" not in metrics:  # resumed after the last step: nothing left to train, evaluate once
        metrics.update(evaluate(model, test, hooks))
    done = config.steps - start_step
    return {
        "loss": metrics["loss"],
        "auc": metrics["auc"],
        "bayes_auc": bayes,
        "train_loss": float(np.mean(recent)) if recent else float("nan"),
        "steps": config.steps,
        "examples_per_s": done * config.batch_size / train_time if train_time else 0.0,
    }


def train_worker(
    client: PSClient,
    model_name: str,
    config: CTRConfig,
    worker_id: int,
    num_workers: int,
    metrics_cb: MetricsCallback | None = None,
    start_step: int = 0,
) -> dict[str, float]:
    """Train `config.model` on the PS as worker `worker_id` of `num_workers`; model_name prefixes the table names
    (`<model_name>_lr_w`, `<model_name>_emb`, `<model_name>_dense`), so several models can share a cluster."""
    if (client.worker_id, client.num_workers) != (worker_id, num_workers):
        raise ValueError(
            f"worker_id/num_workers ({worker_id}/{num_workers}) differ from the client's "
            f"({client.worker_id}/{client.num_workers}); pass the same to PSClient"
        )
    model, params = build_ps_model(
        client,
        model_name,
        config.model,
        lr=config.lr,
        initial_accumulator=config.initial_accumulator,
        dense_lr=config.dense_lr,
        **model_kwargs(config),
    )
    dense = [p for _, p in model.dense_parameters()]

    def after_backward() -> None:
        params.push()
        for p in dense:
            p.grad = None
        client.clock()

    result = fit(model, config, StepHooks(params.pull, after_backward), worker_id, num_workers, metrics_cb, start_step)
    return result | {"model_digest": client.digest()}  # after the last clock: every push has landed
