"""The plaintext baseline: the same models as the federated run (same plan, same top model and its seed, same
optimizers, same batches) trained on all parties' data in one place, for the accuracy comparison.

    model = CentralModel(parts, label_party, config, weights=None)  # parts: PartyData per party, rows aligned
    model.train_step(rows) -> loss;  model.evaluate(rows) -> {"auc", "accuracy", "loss"};  model.predict(rows)
    model.weights() -> {layer: {party: W}}

``weights`` starts the source layers from given matrices (e.g. the federated run's initial W = U + V opened with
``blindfl.reveal_weight``), so that the two runs can be compared step by step.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from seraphim.algorithms.vfl.data import PartyData
from seraphim.algorithms.vfl.models import (ModelConfig, TopModel, binary_metrics, layer_inputs, make_top_optimizer,
                                            plan_layers)

__all__ = ["CentralModel"]


def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


class CentralModel:
    """All parties' features in one process: Z = Σ_p X_p W_p (MatMul) or the parties' embeddings concatenated
    (label party first, then feature parties by name), as the federated layers compute it."""

    def __init__(self, parts: Mapping[str, PartyData], label_party: str, config: ModelConfig,
                 weights: Mapping[str, Mapping[str, np.ndarray]] | None = None, seed: int = 0) -> None:
        lengths = {p: len(d) for p, d in parts.items()}
        if len(set(lengths.values())) != 1 or parts[label_party].labels is None:
            raise ValueError(f"parts must be row-aligned (got lengths {lengths}) and the label party "
                             f"{label_party!r} must hold labels")
        self.order = [label_party] + sorted(p for p in parts if p != label_party)
        self.labels = parts[label_party].labels
        self.config = config
        self.plans = plan_layers(config, {p: parts[p].schema for p in self.order})
        self.inputs = {p: layer_inputs(parts[p]) for p in self.order}
        rng = np.random.default_rng(seed)
        self.W: dict[str, dict[str, nn.Parameter]] = {}
        for plan in self.plans:
            self.W[plan.name] = {}
            for p in self.order:
                if plan.in_dims[p] == 0:
                    continue
                given = None if weights is None else weights.get(plan.name, {}).get(p)
                init = rng.normal(0.0, plan.init_std, size=(plan.in_dims[p], plan.out_dim)) if given is None \
                    else np.asarray(given, dtype=np.float64)
                self.W[plan.name][p] = nn.Parameter(torch.tensor(init, dtype=torch.float64))
        self.top = TopModel(config, self.plans)
        self.top_opt = make_top_optimizer(config, self.top.parameters())
        self.source_opt = torch.optim.SGD([w for layer in self.W.values() for w in layer.values()], lr=config.lr)

    def _z(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        z = {}
        for plan in self.plans:
            parts = []
            for p, w in self.W[plan.name].items():
                x = self.inputs[p][plan.input][rows]
                if plan.kind == "embed":
                    parts.append(w[torch.as_tensor(x, dtype=torch.long)].reshape(len(rows), -1))
                else:
                    parts.append(torch.tensor(_dense(x), dtype=torch.float64) @ w)
            z[plan.name] = sum(parts) if plan.kind == "matmul" else torch.cat(parts, dim=1)
        return z

    def train_step(self, rows: np.ndarray) -> float:
        rows = np.asarray(rows, dtype=np.int64)
        loss = nn.functional.binary_cross_entropy_with_logits(
            self.top(self._z(rows)), torch.tensor(self.labels[rows], dtype=torch.float64))
        self.top_opt.zero_grad()
        self.source_opt.zero_grad()
        loss.backward()
        self.top_opt.step()
        self.source_opt.step()
        return float(loss.detach())

    def predict(self, rows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.sigmoid(self.top(self._z(np.asarray(rows, dtype=np.int64)))).numpy()

    def evaluate(self, rows: np.ndarray) -> dict[str, float]:
        rows = np.asarray(rows, dtype=np.int64)
        return binary_metrics(self.labels[rows], self.predict(rows))

    def weights(self) -> dict[str, dict[str, np.ndarray]]:
        return {name: {p: w.detach().numpy().copy() for p, w in layer.items()} for name, layer in self.W.items()}
