"""Scalable decoupled GNNs as SGAP compositions: SGC, SIGN, S²GC, GBP and GAMLP, each a few lines over operators.

GAMLP (Zhang et al., KDD'22) is: Laplacian hops → (optional per-hop MLP) → node-adaptive hop attention (recursive or
JK) → an initial-residual output MLP (GCNII-style), plus, for label utilization, ``MLP(Ŷ^(K))`` added to the
output, where ``Ŷ^(K)`` are the propagated training (and, under RLU, reliable pseudo) labels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from torch import Tensor, nn

from seraphim.algorithms.gnn.csr import CSRGraph
from seraphim.algorithms.gnn.operators import (
    MLP, ConcatMessage, GraphOp, JKAttention, LaplacianOp, LastMessage, MessageOp, PostOp, ProjectedMessage,
    RecursiveAttention, WeightedMessage,
)

__all__ = ["SGAPModel", "InitialResidualMLP", "InputResidual", "sgc", "sign", "s2gc", "gbp", "gamlp"]


class SGAPModel(nn.Module):
    """``pre`` (graph op, precompute) → ``message`` (hop combination) → ``head`` (+ ``label_head``) → ``post``.

    ``forward`` sees only a mini-batch's hop rows (and its label-input rows when ``label_head`` is set), so the hops
    may live anywhere: in RAM or in PS tables.
    """

    def __init__(self, pre: GraphOp, message: MessageOp, head: nn.Module, post: PostOp | None = None,
                 label_head: nn.Module | None = None, input_dropout: float = 0.0, label_dropout: float = 0.0) -> None:
        super().__init__()
        self.pre, self.post = pre, post
        self.message, self.head, self.label_head = message, head, label_head
        self.input_drop = nn.Dropout(input_dropout)
        self.label_drop = nn.Dropout(label_dropout)

    @property
    def uses_labels(self) -> bool:
        return self.label_head is not None

    def preprocess(self, graph: CSRGraph, x: np.ndarray) -> list[np.ndarray]:
        """The hop matrices this model reads, ``[X^(0), ..., X^(K)]``."""
        return self.pre(graph, x)

    def forward(self, hops: Sequence[Tensor], label_input: Tensor | None = None) -> Tensor:
        out = self.head(self.message([self.input_drop(h) for h in hops]))
        if self.label_head is not None:
            if label_input is None:
                raise ValueError("this model has a label branch: pass label_input (the propagated labels Ŷ^(K) "
                                 "of the batch, [B, num_classes])")
            out = out + self.label_head(self.label_drop(label_input))
        return out

    def postprocess(self, graph: CSRGraph, logits: np.ndarray, labels: np.ndarray,
                    train_idx: np.ndarray) -> np.ndarray:
        """Scores refined by ``post`` over the whole graph; the logits unchanged when there is no post op."""
        return logits if self.post is None else self.post(graph, logits, labels, train_idx)


class InitialResidualMLP(nn.Module):
    """GAMLP's output MLP (GCNII-style initial residual): ``h0 = BN(W_0 x)``; each middle layer
    ``h ← BN(W_l((1-α)·δ(h) + α·h0)) + h``; the last layer ``W_L δ(h)`` (δ = PReLU then dropout)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, layers: int = 4, dropout: float = 0.5,
                 alpha: float = 0.5, batch_norm: bool = True) -> None:
        super().__init__()
        if layers < 2:
            raise ValueError(f"InitialResidualMLP needs layers >= 2 (input and output layers), got {layers}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"initial-residual weight alpha must lie in [0, 1], got {alpha}")
        self.alpha = alpha
        self.first = nn.Linear(in_dim, hidden)
        self.middle = nn.ModuleList(nn.Linear(hidden, hidden, bias=not batch_norm) for _ in range(layers - 2))
        norm = (lambda: nn.BatchNorm1d(hidden)) if batch_norm else nn.Identity
        self.norms = nn.ModuleList(norm() for _ in range(layers - 1))
        self.acts = nn.ModuleList(nn.PReLU() for _ in range(layers - 1))
        self.last = nn.Linear(hidden, out_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h0 = h = self.norms[0](self.first(x))
        for layer, norm, act in zip(self.middle, self.norms[1:], self.acts):
            support = (1.0 - self.alpha) * self.dropout(act(h)) + self.alpha * h0
            h = norm(layer(support)) + h
        return self.last(self.dropout(self.acts[-1](h)))


class InputResidual(MessageOp):
    """``dropout(PReLU(inner(hops) + W X^(0)))``: GAMLP's ``--residual``, a direct path from the raw features
    past the hop combination, for nodes whose neighbourhood misleads."""

    def __init__(self, inner: MessageOp, in_dim: int, width: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.inner = inner
        self.project = nn.Linear(in_dim, width)
        self.act, self.dropout = nn.PReLU(), nn.Dropout(dropout)

    def out_dim(self, in_dim: int) -> int:
        return self.inner.out_dim(in_dim)

    def forward(self, hops: Sequence[Tensor]) -> Tensor:
        return self.dropout(self.act(self.inner(hops) + self.project(hops[0])))


def _head(in_dim: int, hidden: int, num_classes: int, layers: int, dropout: float,
          batch_norm: bool = True) -> nn.Module:
    return MLP(in_dim, hidden, num_classes, layers, dropout, batch_norm)


def sgc(in_dim: int, num_classes: int, hops: int, *, hidden: int = 256, layers: int = 1, dropout: float = 0.0,
        r: float = 0.5) -> SGAPModel:
    """SGC (Wu et al., ICML'19): ``X^(K)`` into a classifier (``layers=1`` is the original logistic regression)."""
    return SGAPModel(LaplacianOp(hops, r), LastMessage(), _head(in_dim, hidden, num_classes, layers, dropout))


def sign(in_dim: int, num_classes: int, hops: int, *, hidden: int = 256, layers: int = 2, dropout: float = 0.5,
         input_dropout: float = 0.0, hop_layers: int = 1, batch_norm: bool = True, r: float = 0.5) -> SGAPModel:
    """SIGN (Frasca et al., 2020): a per-hop MLP (``hop_layers`` deep) on every hop, concatenated, PReLU and
    dropout, then an MLP. ``hop_layers=0`` concatenates the raw hops into the MLP (SGL's SIGN, which its authors
    ran on the citation graphs). ``batch_norm=False`` drops batch norm from every layer: on a few hundred
    labelled nodes its batch statistics hurt (see ``bench/gnn_accuracy.py``)."""
    levels = hops + 1
    if hop_layers == 0:
        message: MessageOp = ConcatMessage(levels)
        head = _head(message.out_dim(in_dim), hidden, num_classes, layers, dropout, batch_norm)
    else:
        message = ProjectedMessage(in_dim, hidden, levels, ConcatMessage(levels), hop_layers, dropout, batch_norm)
        head = nn.Sequential(nn.PReLU(), nn.Dropout(dropout),
                             _head(message.out_dim(in_dim), hidden, num_classes, layers, dropout, batch_norm))
    return SGAPModel(LaplacianOp(hops, r), message, head, input_dropout=input_dropout)


def s2gc(in_dim: int, num_classes: int, hops: int, *, alpha: float = 0.05, hidden: int = 256, layers: int = 1,
         dropout: float = 0.0, r: float = 0.5) -> SGAPModel:
    """S²GC (Zhu & Koniusz, ICLR'21): the simple spectral average ``αX + (1-α)/K Σ_l X^(l)`` into a classifier."""
    return SGAPModel(LaplacianOp(hops, r), WeightedMessage.s2gc(hops, alpha),
                     _head(in_dim, hidden, num_classes, layers, dropout))


def gbp(in_dim: int, num_classes: int, hops: int, *, beta: float = 0.15, hidden: int = 256, layers: int = 2,
        dropout: float = 0.5, r: float = 0.5) -> SGAPModel:
    """GBP (Chen et al., NeurIPS'20): the β-weighted hop sum ``Σ_l β(1-β)^l X^(l)`` into an MLP."""
    return SGAPModel(LaplacianOp(hops, r), WeightedMessage.gbp(hops, beta),
                     _head(in_dim, hidden, num_classes, layers, dropout))


def gamlp(in_dim: int, num_classes: int, hops: int, *, attention: str = "recursive", hidden: int = 512,
          hop_layers: int = 2, out_layers: int = 4, jk_layers: int = 2, dropout: float = 0.5,
          input_dropout: float = 0.0, att_dropout: float = 0.0, act: str = "leaky_relu", alpha: float = 0.5,
          label_layers: int = 0, label_dropout: float = 0.0, residual: bool = False, batch_norm: bool = True,
          r: float = 0.5) -> SGAPModel:
    """GAMLP with ``attention`` ``"recursive"`` or ``"jk"`` over hops 0..``hops``.

    ``hop_layers`` > 0 puts a per-hop MLP of that depth before the attention (the authors' ``--pre-process``, used
    in every published OGB configuration); 0 attends over the raw hop features (SGL's GAMLP, the authors' citation
    graph setting, where with ``out_layers=2`` and ``batch_norm=False`` the head is SGL's two-layer MLP).
    ``label_layers`` > 0 adds the label branch ``MLP(Ŷ^(K))`` to the output (GAMLP's label utilization; the input
    of RLU). ``residual`` adds the authors' input residual (:class:`InputResidual`). ``batch_norm`` applies to
    every MLP inside (per-hop, JK reference, head, label branch).
    """
    levels = hops + 1
    width = hidden if hop_layers > 0 else in_dim
    if attention == "recursive":
        attend: MessageOp = RecursiveAttention(width, levels, act, att_dropout)
    elif attention == "jk":
        attend = JKAttention(width, levels, hidden, jk_layers, dropout, act, att_dropout, batch_norm)
    else:
        raise ValueError(f"GAMLP attention must be 'recursive' or 'jk', got {attention!r}")
    if hop_layers > 0:
        message = ProjectedMessage(in_dim, hidden, levels, attend, hop_layers, dropout, batch_norm)
    else:
        message = attend
    if residual:
        message = InputResidual(message, in_dim, message.out_dim(in_dim), dropout)
    head = InitialResidualMLP(message.out_dim(in_dim), hidden, num_classes, out_layers, dropout, alpha, batch_norm)
    label_head = (MLP(num_classes, hidden, num_classes, label_layers, dropout, batch_norm) if label_layers > 0
                  else None)
    return SGAPModel(LaplacianOp(hops, r), message, head, label_head=label_head, input_dropout=input_dropout,
                     label_dropout=label_dropout)
