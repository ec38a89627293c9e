"""PasCa's scalable graph paradigm (SGAP) as composable operators, so a scalable GNN is a few lines of composition.

Three decoupled stages (Zhang et al., PaSca, WWW'22):

1. **graph operators** (pre-processing, parameter-free, numpy in and out): the hop list ``[X^(0), ..., X^(K)]``
   computed once by the compiled kernels of ``propagation.py`` (or, on a cluster, partition by partition on the PS);
2. **message operators** (training, torch modules): combine a mini-batch's hop rows, a list of ``[B, d]`` tensors,
   into one ``[B, d']`` tensor that an MLP classifies: fixed (last, mean, max, sum, concat, hand-weighted) or learned
   (per-hop scalars, node-adaptive gate, GAMLP's recursive and JK hop attention), optionally after a per-hop projection;
3. **post-processing** (parameter-free, numpy): soft predictions re-propagated over the graph with the training
   labels reset (label propagation), or Correct & Smooth.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from seraphim.algorithms.gnn.csr import CSRGraph, GraphError
from seraphim.algorithms.gnn.propagation import hops as propagate_hops
from seraphim.algorithms.gnn.propagation import ppr, train_one_hot

__all__ = [
    "GraphOp", "LaplacianOp", "PPROp", "HeatOp",
    "MessageOp", "LastMessage", "MeanMessage", "SumMessage", "MaxMessage", "ConcatMessage", "WeightedMessage",
    "LearnableWeightedMessage", "AdaptiveMessage", "GateMessage", "RecursiveAttention", "JKAttention",
    "ProjectedMessage", "MLP", "activation",
    "PostOp", "LabelPropagationPost", "CorrectAndSmooth",
]


# ------------------------------------------------------------------------------------------------ graph operators
class GraphOp(ABC):
    """A parameter-free precompute: ``levels`` matrices ``[X^(0), ..., X^(hops)]`` from the graph and ``x``."""

    hops: int
    r: float

    @property
    def levels(self) -> int:
        return self.hops + 1

    def _check(self) -> None:
        if self.hops < 1:
            raise GraphError(f"{type(self).__name__} needs hops >= 1, got {self.hops}")
        if not 0.0 <= self.r <= 1.0:
            raise GraphError(f"{type(self).__name__} normalization exponent r must lie in [0, 1], got {self.r}")

    @abstractmethod
    def __call__(self, graph: CSRGraph, x: np.ndarray) -> list[np.ndarray]:
        """The ``hops + 1`` float32 ``[n, d]`` hop matrices, ``X^(0) = x``."""


@dataclass(frozen=True)
class LaplacianOp(GraphOp):
    """Powers of ``Â = D̃^(r-1)(A+I)D̃^(-r)``: ``X^(l) = Â X^(l-1)`` (SGC, SIGN, S²GC, GBP, GAMLP)."""

    hops: int
    r: float = 0.5

    def __post_init__(self) -> None:
        self._check()

    def __call__(self, graph: CSRGraph, x: np.ndarray) -> list[np.ndarray]:
        return propagate_hops(graph, x, self.hops, self.r)


@dataclass(frozen=True)
class PPROp(GraphOp):
    """Personalized-PageRank iterates (APPNP): ``X^(l) = (1-alpha) Â X^(l-1) + alpha X^(0)``.

    This is the restart-to-``X^(0)`` form (as on the PS, ``ps_propagation.propagate_partition(teleport=alpha)``),
    not SGL's lazy walk ``(1-alpha)Â + alpha I``; the restart keeps every level anchored to the node's own features.
    """

    hops: int
    alpha: float = 0.15
    r: float = 0.5

    def __post_init__(self) -> None:
        self._check()
        if not 0.0 <= self.alpha < 1.0:
            raise GraphError(f"PPROp teleport alpha must lie in [0, 1), got {self.alpha}")

    def __call__(self, graph: CSRGraph, x: np.ndarray) -> list[np.ndarray]:
        return ppr(graph, x, self.alpha, self.hops, self.r)


@dataclass(frozen=True)
class HeatOp(GraphOp):
    """Heat-kernel diffusion at times ``t·l/hops``: ``X^(l) = e^(-t_l) Σ_{j<=terms} t_l^j/j! Â^j X``.

    All levels reuse one set of ``terms + 1`` powers of ``Â``, so the cost is ``terms`` hops whatever ``hops`` is.
    """

    hops: int
    t: float = 3.0
    terms: int = 10
    r: float = 0.5

    def __post_init__(self) -> None:
        self._check()
        if self.t <= 0 or self.terms < 1:
            raise GraphError(f"HeatOp needs t > 0 and terms >= 1, got t={self.t}, terms={self.terms}")

    def coefficients(self) -> np.ndarray:
        """float64 ``[hops + 1, terms + 1]``: row ``l`` weights the powers ``Â^0..Â^terms`` for level ``l``."""
        times = self.t * np.arange(1, self.levels)[:, None] / self.hops
        j = np.arange(self.terms + 1, dtype=np.float64)
        log_fact = np.array([math.lgamma(v + 1.0) for v in j])
        coef = np.zeros((self.levels, self.terms + 1))
        coef[0, 0] = 1.0
        coef[1:] = np.exp(-times + j * np.log(times) - log_fact)
        return coef

    def __call__(self, graph: CSRGraph, x: np.ndarray) -> list[np.ndarray]:
        powers = propagate_hops(graph, x, self.terms, self.r)
        out = [powers[0]]
        for row in self.coefficients()[1:]:
            level = np.zeros_like(powers[0])
            for c, p in zip(row, powers):
                level += np.float32(c) * p
            out.append(level)
        return out


# ---------------------------------------------------------------------------------------------- message operators
def activation(name: str) -> nn.Module:
    """The score activation δ of GAMLP: ``sigmoid``, ``relu``, ``leaky_relu`` (slope 0.2) or ``tanh``."""
    table: dict[str, Callable[[], nn.Module]] = {
        "sigmoid": nn.Sigmoid, "relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "tanh": nn.Tanh,
    }
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(table)}")
    return table[name]()


class MLP(nn.Module):
    """Linear → [BatchNorm] → PReLU → Dropout, repeated; the last layer is a plain Linear (``layers`` >= 1)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, layers: int = 2, dropout: float = 0.0,
                 batch_norm: bool = True) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"an MLP needs layers >= 1, got {layers}")
        dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks.append(nn.Linear(dims[i], dims[i + 1]))
            if i < layers - 1:
                if batch_norm:
                    blocks.append(nn.BatchNorm1d(dims[i + 1]))
                blocks += [nn.PReLU(), nn.Dropout(dropout)]
        self.net = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _check_levels(hops: Sequence[Tensor], expected: int | None, who: str) -> None:
    if len(hops) == 0:
        raise ValueError(f"{who} got an empty hop list")
    if expected is not None and len(hops) != expected:
        raise ValueError(f"{who} was built for {expected} hop levels but got {len(hops)}")


class MessageOp(nn.Module, ABC):
    """Combines the hop rows of a batch, ``[X^(0)_B, ..., X^(K)_B]`` (each ``[B, d]``), into one ``[B, d']``."""

    def out_dim(self, in_dim: int) -> int:
        """``d'`` for inputs of width ``in_dim``."""
        return in_dim

    @abstractmethod
    def forward(self, hops: Sequence[Tensor]) -> Tensor: ...


class LastMessage(MessageOp):
    """``X^(K)``: SGC."""

    def forward(self, hops: Sequence[Tensor]) -> Tensor:
        _check_levels(hops, None, "LastMessage")
        return hops[-1]


class MeanMessage(MessageOp):
    """``mean_l X^(l)``."""

    def forward(self, hops: Sequence[Tensor]) -> Tensor:
        _check_levels(hops, None, "MeanMessage")
        return torch.stack(list(hops)).mean(0)


class SumMessage(MessageOp):
    """``Σ_l X^(l)``."""

    def forward(self, hops: Sequence[Tensor]) -> Tensor:
        _check_levels(hops, None, "SumMessage")
        return torch.stack(list(hops)).sum(0)


class MaxMessage(MessageOp):
    """Element-wise ``max_l X^(l)``."""

    def forward(self, hops: Sequence[Tensor]) -> Tensor:
        _check_levels(hops, None, "MaxMessage")
        return torch.stack(list(hops)).amax(0)


class ConcatMessage(MessageOp):
    """``X^(0) ‖ ... ‖ X^(K)``: SIGN (after a per-hop projection)."""

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.levels = levels

    def out_dim(self, in_dim: int) -> int:
        return in_dim * self.levels

    def forward(self, hops: Sequence[Tensor]) -> Tensor:
        _check_levels(hops, self.levels, "ConcatMessage")
        return torch.cat(list(hops), dim=1)


class WeightedMessage(MessageOp):
    """``Σ_l w_l X^(l)`` with fixed hand-made weights (S²GC's average, GBP's ``β(1-β)^l``)."""

    def __init__(self, weights: Sequence[float]) -> None:
        super().__init__()
        if len(weights) == 0:
            raise ValueError("WeightedMessage needs at least one weight")
        self.register_buffer("weights", torch.tensor(list(weights), dtype=torch.float32))

    @classmethod
    def s2gc(cls, hops: int, alpha: float = 0.05) -> "WeightedMessage":
        """S²GC (Zhu & Koniusz, ICLR'21): ``α X + (1-α)/K Σ_{l=1..K} X^(l)``."""
        return cls([alpha] + [(1.0 - alpha) / hops] * hops)

    @classmethod
    def gbp(cls, hops: int, beta: float = 0.15) -> "WeightedMessage":
        """GBP (Chen et al., NeurIPS'20): ``Σ_{l=0..K} β(1-β)^l X^(l)`` (a truncated PPR)."""
        return cls([beta * (1.0 - beta) ** l for l in range(hops + 1)])

    def forward(self, hops: Sequence[Tensor]) -> Tensor:
        _check_levels(hops, len(self.weights), "WeightedMessage")
        return torch.einsum("l,lbd->bd", self.weights, torch.stack(list(hops)))


class LearnableWeightedMessage(MessageOp):
    """``Σ_l softmax(θ)_l X^(l)``: one learned weight per hop, the same for every node."""

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(levels))

    def forward(self, hops: Sequence[Tensor]) -> Tensor:
        _check_levels(hops, len(self.theta), "LearnableWeightedMessage")
        return torch.einsum("l,lbd->bd", torch.softmax(self.theta, 0), torch.stack(list(hops)))


class AdaptiveMessage(MessageOp):
    """Node-adaptive combination ``Σ_l w_i(l) X_i^(l)``, ``w_i = softmax_l(score_i(l))``; subclasses score.

    ``att_dropout`` drops entries of the weights while training (as GAMLP does), so only in eval mode do the
    weights a node uses sum to one.
    """

    def __init__(self, levels: int, att_dropout: float = 0.0) -> None:
        super().__init__()
        self.levels = levels
        self.att_drop = nn.Dropout(att_dropout)

    @abstractmethod
    def scores(self, stacked: Tensor) -> Tensor:
        """Unnormalized scores ``[B, L]`` from the stacked hops ``[B, L, d]``."""

    def weights(self, hops: Sequence[Tensor]) -> Tensor:
        """The per-node hop weights ``[B, L]`` (each row sums to one)."""
        return torch.softmax(self.scores(self._stacked(hops)), dim=1)

    def forward(self, hops: Sequence[Tensor]) -> Tensor:
        stacked = self._stacked(hops)  # once per batch: the scores and the weighted sum both read it
        w = self.att_drop(torch.softmax(self.scores(stacked), dim=1))
        return torch.einsum("bl,bld->bd", w, stacked)

    def _stacked(self, hops: Sequence[Tensor]) -> Tensor:
        _check_levels(hops, self.levels, type(self).__name__)
        return torch.stack(list(hops), dim=1)


class GateMessage(AdaptiveMessage):
    """Node-adaptive gate: ``score_i(l) = σ(X_i^(l)·s + b)`` (PasCa's ``gate`` message operator)."""

    def __init__(self, in_dim: int, levels: int, att_dropout: float = 0.0) -> None:
        super().__init__(levels, att_dropout)
        self.gate = nn.Linear(in_dim, 1)

    def scores(self, stacked: Tensor) -> Tensor:
        return torch.sigmoid(self.gate(stacked)).squeeze(-1)


class RecursiveAttention(AdaptiveMessage):
    """GAMLP's recursive attention: ``X̃_i^(l) = X_i^(l) ‖ Σ_{k<l} w_i(k) X_i^(k)``, ``w̃_i(l) = δ(X̃_i^(l)·s)``.

    The weights inside the history are the softmax over the scores of hops ``0..l-1`` found so far; hop 0, which
    has no history, uses ``X^(0)`` as its own (as the authors' code). The final weights are the softmax over all
    ``L`` scores, so each hop is scored by how much it adds to what the earlier hops already gave.

    The score is linear in the history: with ``s = [s_own ‖ s_hist]``, ``s·X̃_i^(l) = s_own·X_i^(l) +
    Σ_{k<l} w_i(k) (s_hist·X_i^(k))``, so two projections per hop replace a history vector per hop (O(L·d), not
    O(L²·d): on Cora's 1433-wide raw features this is most of a training step).
    """

    def __init__(self, in_dim: int, levels: int, act: str = "leaky_relu", att_dropout: float = 0.0) -> None:
        super().__init__(levels, att_dropout)
        self.score = nn.Linear(2 * in_dim, 1)
        self.act = activation(act)

    def scores(self, stacked: Tensor) -> Tensor:
        own_w, hist_w = self.score.weight[0].chunk(2)
        own = stacked @ own_w + self.score.bias            # [B, L]
        past = stacked @ hist_w                             # [B, L]
        found = [self.act(own[:, :1] + past[:, :1])]
        for l in range(1, stacked.shape[1]):
            w = self.att_drop(torch.softmax(torch.cat(found, dim=1), dim=1))
            found.append(self.act(own[:, l:l + 1] + (w * past[:, :l]).sum(1, keepdim=True)))
        return torch.cat(found, dim=1)


class JKAttention(AdaptiveMessage):
    """GAMLP's JK attention: reference ``E_i = MLP(X_i^(0) ‖ ... ‖ X_i^(K))``, ``w̃_i(l) = δ((X_i^(l) ‖ E_i)·s)``.

    The paper's JK branch reads hops 1..K; the authors' code reads all of 0..K, as here. The score is computed as
    ``s_x·X_i^(l) + s_ref·E_i`` (the same linear map), so the ``[B, L, d + hidden]`` concatenation is never built.
    """

    def __init__(self, in_dim: int, levels: int, hidden: int, ref_layers: int = 2, dropout: float = 0.0,
                 act: str = "leaky_relu", att_dropout: float = 0.0, batch_norm: bool = True) -> None:
        super().__init__(levels, att_dropout)
        self.reference = nn.Sequential(MLP(levels * in_dim, hidden, hidden, ref_layers, dropout, batch_norm),
                                       nn.PReLU(), nn.Dropout(dropout))
        self.score = nn.Linear(in_dim + hidden, 1)
        self.act = activation(act)

    def scores(self, stacked: Tensor) -> Tensor:
        ref = self.reference(stacked.flatten(1))
        own_w, ref_w = self.score.weight[0].split([stacked.shape[2], ref.shape[1]])
        return self.act(stacked @ own_w + (ref @ ref_w + self.score.bias).unsqueeze(1))


class ProjectedMessage(MessageOp):
    """A per-hop MLP ``f_l: d → hidden`` on every hop, then ``inner`` (SIGN = this over :class:`ConcatMessage`;
    GAMLP's ``--pre-process`` = this over an attention built for width ``hidden``)."""

    def __init__(self, in_dim: int, hidden: int, levels: int, inner: MessageOp, layers: int = 1,
                 dropout: float = 0.0, batch_norm: bool = True) -> None:
        super().__init__()
        self.hidden = hidden
        self.project = nn.ModuleList(MLP(in_dim, hidden, hidden, layers, dropout, batch_norm) for _ in range(levels))
        self.inner = inner

    def out_dim(self, in_dim: int) -> int:
        return self.inner.out_dim(self.hidden)

    def forward(self, hops: Sequence[Tensor]) -> Tensor:
        _check_levels(hops, len(self.project), "ProjectedMessage")
        return self.inner([f(x) for f, x in zip(self.project, hops)])


# ------------------------------------------------------------------------------------------------ post-processing
class PostOp(ABC):
    """Parameter-free refinement of a trained model's predictions over the whole graph (numpy in and out)."""

    @abstractmethod
    def __call__(self, graph: CSRGraph, logits: np.ndarray, labels: np.ndarray,
                 train_idx: np.ndarray) -> np.ndarray:
        """Refined class scores ``[n, C]`` (argmax is the prediction) from logits ``[n, C]``."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, shifted by each row's max so that large logits do not overflow."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _check_logits(graph: CSRGraph, logits: np.ndarray) -> None:
    if logits.ndim != 2 or logits.shape[0] != graph.num_nodes:
        raise GraphError(f"logits must be [num_nodes={graph.num_nodes}, num_classes], got {logits.shape}")


@dataclass
class LabelPropagationPost(PostOp):
    """Softmax predictions with the training rows reset to their one-hot labels, re-propagated by ``graph_op``
    and combined by ``message`` (parameter-free; :class:`LastMessage` by default)."""

    graph_op: GraphOp
    message: MessageOp | None = None

    def __call__(self, graph: CSRGraph, logits: np.ndarray, labels: np.ndarray,
                 train_idx: np.ndarray) -> np.ndarray:
        _check_logits(graph, logits)
        probs = softmax(logits)
        probs[train_idx] = train_one_hot(labels, train_idx, logits.shape[1])
        levels = self.graph_op(graph, probs)
        with torch.no_grad():
            combined = (self.message or LastMessage())([torch.from_numpy(h) for h in levels])
        return combined.numpy()


@dataclass(frozen=True)
class CorrectAndSmooth(PostOp):
    """Correct & Smooth (Huang et al., ICLR'21) with the autoscale correction.

    Correct: the training residual ``E = Y - P`` (zero elsewhere) spreads by ``Z ← (1-a1) E + a1 Â Z``; each node's
    spread residual is rescaled to the mean training-residual L1 norm and added to ``P``. Smooth: the corrected
    scores, training rows reset to ``Y``, spread by ``Z ← (1-a2) G + a2 Â Z``.
    """

    correct_alpha: float = 0.8
    smooth_alpha: float = 0.8
    correct_iters: int = 50
    smooth_iters: int = 50
    r: float = 0.5

    def __call__(self, graph: CSRGraph, logits: np.ndarray, labels: np.ndarray,
                 train_idx: np.ndarray) -> np.ndarray:
        _check_logits(graph, logits)
        probs = softmax(logits)
        y_train = train_one_hot(labels, train_idx, logits.shape[1])
        residual = np.zeros_like(probs)
        residual[train_idx] = y_train - probs[train_idx]
        spread = ppr(graph, residual, 1.0 - self.correct_alpha, self.correct_iters, self.r)[-1]
        sigma = np.abs(residual[train_idx]).sum(1).mean() if len(train_idx) else 0.0
        norm = np.abs(spread).sum(1, keepdims=True)
        corrected = probs + sigma * np.divide(spread, norm, out=np.zeros_like(spread), where=norm > 0)
        corrected[train_idx] = y_train
        return ppr(graph, corrected.astype(np.float32), 1.0 - self.smooth_alpha, self.smooth_iters, self.r)[-1]
