"""BlindFL models: federated source layers (``blindfl``) under a plaintext torch top model at the label party, and
the per-party trainers a session drives in lockstep.

Public API (what ``session.run_party``'s trainer factory builds; every party makes the same calls in order)::

    config = ModelConfig(kind="lr" | "mlp" | "wide_deep", lr=0.1, top_optimizer="sgd", hidden=(16,),
                         embedding_dim=4, precision=Precision(), seed=0)
    trainer = make_trainer(channel, data, config, private_key, peer_public_keys, label_party,
                           store=MemoryShareStore, pool_processes=0, he_processes=0)
        # -> LabelPartyTrainer at the label party, FeaturePartyTrainer elsewhere; the constructor exchanges the
        #    parties' schemas (label party <- feature parties) and the layer plan (label party -> feature parties)
    trainer.train_step(step, rows)  -> {"loss": ...} at the label party, {} elsewhere   (rows: this party's data
                                       rows of the batch, in the common sample order)
    trainer.evaluate(rows)          -> {"auc", "accuracy", "loss"} at the label party, {} elsewhere
    trainer.predict(rows)           -> probabilities (label party only)
    trainer.state() / trainer.load_state(state)   bytes and numeric arrays only, for ``session.Checkpoints``
    trainer.close()                 -> stops randomness/process pools

Models (the label party owns the plan; ``wide`` input = dense ‖ sparse ‖ one-hot categorical, ``numeric`` = dense
‖ sparse, ``categorical`` = field codes):

- ``lr``: MatMul(wide → 1) + bias, sigmoid.
- ``mlp``: MatMul(wide → hidden[0]) + bias, ReLU, then plaintext Linear layers hidden[1:] → 1.
- ``wide_deep``: wide = MatMul(wide → 1); deep = Embed(categorical → embedding_dim per field) ‖
  ReLU(MatMul(numeric → hidden[0]) + bias) → Linear layers hidden[1:] → 1; logit = wide + bias + deep.

The source layers learn by plain SGD at ``lr`` (BlindFL's update is linear, so it runs on encrypted shares); the
top model uses ``top_optimizer`` at ``top_lr`` (default ``lr``). The loss is the batch mean of binary cross-entropy.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Mapping

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from seraphim.algorithms.ctr.data import roc_auc
from seraphim.algorithms.vfl import paillier as he
from seraphim.algorithms.vfl.blindfl import (EmbedSourceLayer, MatMulSourceLayer, MemoryShareStore, PartyKeys,
                                             Precision, SourceLayer, StoreFactory)
from seraphim.algorithms.vfl.data import PartyData, Schema, SchemaError
from seraphim.worker.party_channel import PartyChannel, PartyError, recv_json, send_json

__all__ = ["ModelConfig", "LayerPlan", "plan_layers", "TopModel", "LabelPartyTrainer", "FeaturePartyTrainer",
           "make_trainer", "make_top_optimizer", "layer_inputs", "binary_metrics"]

_SCHEMA_TAG, _PLAN_TAG = "blindfl/schema", "blindfl/plan"


@dataclass(frozen=True)
class ModelConfig:
    """The model the label party trains (feature parties receive the plan derived from it)."""

    kind: Literal["lr", "mlp", "wide_deep"] = "lr"
    lr: float = 0.1
    top_optimizer: Literal["sgd", "adam"] = "sgd"
    top_lr: float | None = None
    hidden: tuple[int, ...] = (16,)
    embedding_dim: int = 4
    init_std: float | None = None  #: std of the source weights; default 0.01 (lr) or 1/sqrt(fan-in)
    precision: Precision = field(default_factory=Precision)
    seed: int = 0  #: the top model's initialization
    eval_batch: int = 1024

    def __post_init__(self) -> None:
        if self.kind not in ("lr", "mlp", "wide_deep"):
            raise ValueError(f"model kind {self.kind!r} is not one of 'lr', 'mlp', 'wide_deep'")
        if self.top_optimizer not in ("sgd", "adam"):
            raise ValueError(f"top_optimizer {self.top_optimizer!r} is not 'sgd' or 'adam'")
        if self.lr <= 0 or (self.top_lr is not None and self.top_lr <= 0):
            raise ValueError(f"learning rates must be positive, got lr={self.lr}, top_lr={self.top_lr}")
        if self.kind != "lr" and (not self.hidden or min(self.hidden) < 1):
            raise ValueError(f"model {self.kind!r} needs hidden sizes >= 1, got {self.hidden}")
        if self.embedding_dim < 1 or self.eval_batch < 1:
            raise ValueError(f"embedding_dim and eval_batch must be >= 1, got {self.embedding_dim}, "
                             f"{self.eval_batch}")


@dataclass(frozen=True)
class LayerPlan:
    """One source layer: its input kind, output width and every party's input width (and fields, Embed)."""

    name: str
    kind: Literal["matmul", "embed"]
    input: Literal["wide", "numeric", "categorical"]
    out_dim: int
    in_dims: dict[str, int]
    fields: dict[str, int] | None
    init_std: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "LayerPlan":
        return cls(str(d["name"]), d["kind"], d["input"], int(d["out_dim"]),
                   {str(k): int(v) for k, v in d["in_dims"].items()},
                   None if d["fields"] is None else {str(k): int(v) for k, v in d["fields"].items()},
                   float(d["init_std"]))

    @property
    def width(self) -> int:
        """Width of Z at the label party."""
        if self.kind == "matmul":
            return self.out_dim
        return sum(self.fields.values()) * self.out_dim


def _input_width(schema: Schema, kind: str) -> int:
    return {"wide": schema.wide_dim, "numeric": schema.numeric_dim, "categorical": schema.vocab_total}[kind]


def plan_layers(config: ModelConfig, schemas: Mapping[str, Schema]) -> list[LayerPlan]:
    """The source layers of ``config`` for parties with these schemas (ValueError if the data cannot feed it)."""

    def layer(name: str, kind: str, inp: str, out: int, std: float | None) -> LayerPlan:
        dims = {p: _input_width(s, inp) for p, s in schemas.items()}
        fields = {p: len(s.categorical) for p, s in schemas.items()} if kind == "embed" else None
        fan_in = sum(len(s.categorical) for s in schemas.values()) if kind == "embed" else sum(dims.values())
        default = 0.01 if config.kind == "lr" else 1.0 / math.sqrt(max(fan_in, 1))
        return LayerPlan(name, kind, inp, out, dims, fields, config.init_std or std or default)

    total_wide = sum(s.wide_dim for s in schemas.values())
    if total_wide == 0:
        raise ValueError("no party has any feature: nothing to train on")
    if config.kind == "lr":
        return [layer("linear", "matmul", "wide", 1, None)]
    if config.kind == "mlp":
        return [layer("hidden", "matmul", "wide", config.hidden[0], None)]
    plans = [layer("wide", "matmul", "wide", 1, 0.01)]
    if any(s.categorical for s in schemas.values()):
        plans.append(layer("embed", "embed", "categorical", config.embedding_dim, 0.05))
    if any(s.numeric_dim for s in schemas.values()):
        plans.append(layer("deep", "matmul", "numeric", config.hidden[0], None))
    return plans


def _mlp(sizes: list[int]) -> nn.Sequential:
    mods: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        mods += [nn.Linear(a, b, dtype=torch.float64), nn.ReLU()]
    return nn.Sequential(*mods[:-1])


class TopModel(nn.Module):
    """The label party's plaintext model over the source layers' outputs ``{layer name: Z}`` → logits [B]."""

    def __init__(self, config: ModelConfig, plans: list[LayerPlan]) -> None:
        super().__init__()
        self.kind = config.kind
        widths = {p.name: p.width for p in plans}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            if self.kind == "lr":
                self.bias = nn.Parameter(torch.zeros(1, dtype=torch.float64))
            elif self.kind == "mlp":
                self.bias = nn.Parameter(torch.zeros(widths["hidden"], dtype=torch.float64))
                self.head = _mlp(list(config.hidden) + [1])
            else:
                self.bias = nn.Parameter(torch.zeros(1, dtype=torch.float64))
                deep_in = widths.get("embed", 0)
                if "deep" in widths:
                    self.deep_bias = nn.Parameter(torch.zeros(widths["deep"], dtype=torch.float64))
                    deep_in += widths["deep"]
                self.head = _mlp([deep_in] + list(config.hidden[1:]) + [1])

    def forward(self, z: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.kind == "lr":
            return z["linear"][:, 0] + self.bias
        if self.kind == "mlp":
            return self.head(torch.relu(z["hidden"] + self.bias))[:, 0]
        deep = []
        if "embed" in z:
            deep.append(z["embed"])
        if "deep" in z:
            deep.append(torch.relu(z["deep"] + self.deep_bias))
        return z["wide"][:, 0] + self.bias + self.head(torch.cat(deep, dim=1))[:, 0]


def make_top_optimizer(config: ModelConfig, params) -> torch.optim.Optimizer:
    lr = config.top_lr or config.lr
    return torch.optim.Adam(params, lr=lr) if config.top_optimizer == "adam" else torch.optim.SGD(params, lr=lr)


def layer_inputs(data: PartyData) -> dict[str, np.ndarray | sp.csr_matrix]:
    """A party's whole input per kind: wide, numeric, categorical (codes offset into one vocabulary)."""
    return {"wide": data.wide(), "numeric": data.numeric(),
            "categorical": data.categorical + data.field_offsets()[None, :]}


def binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """AUC (NaN when one class is absent), accuracy at 0.5 and mean log-loss."""
    p = np.clip(probs, 1e-12, 1 - 1e-12)
    auc = roc_auc(labels, probs) if len(np.unique(labels)) == 2 else float("nan")
    return {"auc": auc, "accuracy": float(((probs >= 0.5) == (labels == 1)).mean()),
            "loss": float(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean())}


def _chunks(rows: np.ndarray, size: int) -> list[np.ndarray]:
    return [rows[i:i + size] for i in range(0, len(rows), size)] or [rows]


class _PartyTrainer:
    """What both roles share: the source layers of the plan, fed from this party's data."""

    def __init__(self, channel: PartyChannel, data: PartyData, keys: PartyKeys, label_party: str,
                 plans: list[LayerPlan], precision: Precision, store: StoreFactory, timeout_s: float,
                 eval_batch: int) -> None:
        self.chan, self.data, self.keys, self.label_party = channel, data, keys, label_party
        self.me = channel.party
        self.plans, self.eval_batch = plans, eval_batch
        self.inputs = layer_inputs(data)
        for plan in plans:
            have = _input_width(data.schema, plan.input)
            if plan.in_dims.get(self.me) != have:
                raise SchemaError(f"party {self.me!r}: the plan gives layer {plan.name!r} an input of width "
                                  f"{plan.in_dims.get(self.me)}, this party's {plan.input} input has {have}")
        self.layers: list[SourceLayer] = []
        for plan in plans:
            common = dict(precision=precision, init_std=plan.init_std, store=store, timeout_s=timeout_s)
            if plan.kind == "embed":
                self.layers.append(EmbedSourceLayer(plan.name, channel, keys, label_party, plan.in_dims, plan.out_dim,
                                                    fields=plan.fields, **common))
            else:
                self.layers.append(MatMulSourceLayer(plan.name, channel, keys, label_party, plan.in_dims,
                                                     plan.out_dim, **common))

    def _forward(self, rows: np.ndarray) -> dict[str, np.ndarray | None]:
        out = {}
        for plan, layer in zip(self.plans, self.layers):
            x = self.inputs[plan.input][rows] if plan.in_dims[self.me] > 0 else None
            out[plan.name] = layer.forward(x, batch=len(rows))
        return out

    def state(self) -> dict[str, np.ndarray | bytes]:
        """Every layer's state (keys ``layer.<name>.<key>``); the label party adds its top model."""
        return {f"layer.{layer.name}.{k}": v for layer in self.layers for k, v in layer.state().items()}

    def load_state(self, state: Mapping[str, np.ndarray | bytes]) -> None:
        for layer in self.layers:
            prefix = f"layer.{layer.name}."
            layer.load_state({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    def close(self) -> None:
        self.keys.close()


class LabelPartyTrainer(_PartyTrainer):
    """The label party: plans the model from every party's schema, runs the top model, owns the metrics."""

    def __init__(self, channel: PartyChannel, data: PartyData, config: ModelConfig, keys: PartyKeys,
                 store: StoreFactory = MemoryShareStore, timeout_s: float = 600.0) -> None:
        if data.labels is None:
            raise SchemaError(f"label party {channel.party!r} has no labels in its data")
        schemas = {channel.party: data.schema}
        for p in sorted(channel.peers()):
            schemas[p] = Schema.from_json(recv_json(channel, p, _SCHEMA_TAG, timeout_s))
            if schemas[p].has_labels:
                raise SchemaError(f"feature party {p!r} holds labels: only the label party {channel.party!r} "
                                  "may (drop the label column from its data)")
        plans = plan_layers(config, schemas)
        plan = {"layers": [p.to_json() for p in plans], "precision": asdict(config.precision),
                "eval_batch": config.eval_batch}
        for p in sorted(channel.peers()):
            send_json(channel, p, _PLAN_TAG, plan)
        super().__init__(channel, data, keys, channel.party, plans, config.precision, store, timeout_s,
                         config.eval_batch)
        self.config = config
        self.top = TopModel(config, plans)
        self.optimizer = make_top_optimizer(config, self.top.parameters())

    def _logits(self, z: Mapping[str, np.ndarray], grad: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=grad) for k, v in z.items()}
        return self.top(tensors), tensors

    def train_step(self, step: int, rows: np.ndarray) -> dict[str, float]:
        """One SGD step on the batch ``rows``; returns the batch loss (before the step)."""
        rows = np.asarray(rows, dtype=np.int64)
        logits, tensors = self._logits(self._forward(rows), grad=True)
        y = torch.tensor(self.data.labels[rows], dtype=torch.float64)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        for layer in self.layers:
            layer.backward(tensors[layer.name].grad.numpy(), self.config.lr)
        return {"loss": float(loss.detach())}

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Probabilities for ``rows`` (the feature parties run ``evaluate`` with the same rows meanwhile)."""
        out = []
        for chunk in _chunks(np.asarray(rows, dtype=np.int64), self.eval_batch):
            with torch.no_grad():
                out.append(torch.sigmoid(self._logits(self._forward(chunk), grad=False)[0]).numpy())
        return np.concatenate(out)

    def evaluate(self, rows: np.ndarray) -> dict[str, float]:
        rows = np.asarray(rows, dtype=np.int64)
        return binary_metrics(self.data.labels[rows], self.predict(rows))

    def state(self) -> dict[str, np.ndarray | bytes]:
        buf = io.BytesIO()
        torch.save({"model": self.top.state_dict(), "optimizer": self.optimizer.state_dict()}, buf)
        return super().state() | {"top": buf.getvalue()}

    def load_state(self, state: Mapping[str, np.ndarray | bytes]) -> None:
        super().load_state(state)
        saved = torch.load(io.BytesIO(bytes(state["top"])), weights_only=True)
        self.top.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])


class FeaturePartyTrainer(_PartyTrainer):
    """A feature party: sends its schema, follows the label party's plan, never sees labels or gradients."""

    def __init__(self, channel: PartyChannel, data: PartyData, keys: PartyKeys, label_party: str,
                 store: StoreFactory = MemoryShareStore, timeout_s: float = 600.0) -> None:
        if data.labels is not None:
            raise SchemaError(f"feature party {channel.party!r} holds labels: only the label party "
                              f"{label_party!r} may")
        send_json(channel, label_party, _SCHEMA_TAG, data.schema.to_json())
        plan = recv_json(channel, label_party, _PLAN_TAG, timeout_s)
        try:
            plans = [LayerPlan.from_json(p) for p in plan["layers"]]
            precision = Precision(**plan["precision"])
            eval_batch = int(plan["eval_batch"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PartyError(f"label party {label_party!r} sent a malformed plan: {exc}") from None
        super().__init__(channel, data, keys, label_party, plans, precision, store, timeout_s, eval_batch)

    def train_step(self, step: int, rows: np.ndarray) -> dict[str, float]:
        rows = np.asarray(rows, dtype=np.int64)
        self._forward(rows)
        for layer in self.layers:
            layer.backward()
        return {}

    def evaluate(self, rows: np.ndarray) -> dict[str, float]:
        for chunk in _chunks(np.asarray(rows, dtype=np.int64), self.eval_batch):
            self._forward(chunk)
        return {}


def make_trainer(channel: PartyChannel, data: PartyData, config: ModelConfig, private_key: he.PrivateKey,
                 peer_keys: Mapping[str, he.PublicKey], label_party: str, store: StoreFactory = MemoryShareStore,
                 pool_processes: int = 0, he_processes: int = 0,
                 timeout_s: float = 600.0) -> LabelPartyTrainer | FeaturePartyTrainer:
    """This party's trainer (label or feature role by ``label_party``); ``config`` matters at the label party."""
    keys = PartyKeys(private_key, peer_keys, pool_processes=pool_processes, he_processes=he_processes)
    if channel.party == label_party:
        return LabelPartyTrainer(channel, data, config, keys, store, timeout_s)
    return FeaturePartyTrainer(channel, data, keys, label_party, store, timeout_s)
