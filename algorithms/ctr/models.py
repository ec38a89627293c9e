"""CTR models written once over an embedding lookup, so the PS run and the single-process reference share them.

A lookup is any module mapping int64 keys [B, F] to [B, F, dim]: `PSEmbedding` over a PS sparse table in
distributed training (`build_ps_model`), `nn.Embedding(key_space, dim, sparse=True)` in the reference. Dense
parameters (bias, MLP) are ordinary torch parameters; `dense_parameters()` names them for `PSParameters`
(or for a local Adam).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from seraphim.worker import Adagrad, Adam, Normal, PSClient, Zeros
from seraphim.worker.torch_modules import PSEmbedding, PSParameters

# factory(table_name, dim, init_std) -> lookup module; init_std 0 means zeros.
LookupFactory = Callable[[str, int, float], nn.Module]

MODEL_NAMES = ("lr", "wide_deep")
LR_TABLE = "lr_w"
EMB_TABLE = "emb"
EMB_INIT_STD = 0.01
DENSE_TABLE = "dense"


class SparseLR(nn.Module):
    """Logistic regression over hashed keys: logit = b + sum over fields of w[key]."""

    def __init__(self, weights: nn.Module, prior_logit: float = 0.0):
        super().__init__()
        self.weights = weights
        self.bias = nn.Parameter(torch.tensor([prior_logit], dtype=torch.float32))

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        return self.weights(keys).sum(dim=(1, 2)) + self.bias

    def dense_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [("bias", self.bias)]


def make_mlp(in_dim: int, hidden: Sequence[int]) -> nn.Sequential:
    """Linear-ReLU stack ending in one output unit."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, 1))
    return nn.Sequential(*layers)


class WideAndDeep(nn.Module):
    """Wide: the sparse LR weights. Deep: per-key embeddings concatenated over fields into an MLP."""

    def __init__(
        self,
        wide: nn.Module,
        deep: nn.Module,
        num_fields: int,
        embedding_dim: int,
        hidden: Sequence[int],
        prior_logit: float = 0.0,
    ):
        super().__init__()
        self.wide = wide
        self.deep = deep
        self.mlp = make_mlp(num_fields * embedding_dim, hidden)
        self.bias = nn.Parameter(torch.tensor([prior_logit], dtype=torch.float32))

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        wide = self.wide(keys).sum(dim=(1, 2))
        deep = self.mlp(self.deep(keys).flatten(1)).squeeze(-1)
        return wide + deep + self.bias

    def dense_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [("bias", self.bias)] + [(f"mlp.{n}", p) for n, p in self.mlp.named_parameters()]


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG for dense initialization without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_model(
    model: str,
    lookup: LookupFactory,
    *,
    num_fields: int,
    embedding_dim: int,
    hidden: Sequence[int],
    prior_logit: float,
    seed: int,
) -> SparseLR | WideAndDeep:
    """Build `model` ("lr" or "wide_deep"); dense weights are drawn from `seed`, so every builder agrees."""
    if model not in MODEL_NAMES:
        raise ValueError(f"model must be one of {MODEL_NAMES}, got {model!r}")
    with _seeded(seed):
        if model == "lr":
            return SparseLR(lookup(LR_TABLE, 1, 0.0), prior_logit)
        return WideAndDeep(
            lookup(LR_TABLE, 1, 0.0),
            lookup(EMB_TABLE, embedding_dim, EMB_INIT_STD),
            num_fields,
            embedding_dim,
            hidden,
            prior_logit,
        )


def build_ps_model(
    client: PSClient,
    prefix: str,
    model: str,
    *,
    lr: float,
    initial_accumulator: float,
    dense_lr: float,
    **kwargs: Any,
) -> tuple[SparseLR | WideAndDeep, PSParameters]:
    """`model` with its sparse tables `<prefix>_lr_w` / `<prefix>_emb` (Adagrad) and its dense parameters in
    `<prefix>_dense` (Adam) on the PS. kwargs: as for build_model. Pull the PSParameters before each forward."""

    def lookup(name: str, dim: int, init_std: float) -> nn.Module:
        init = Normal(0.0, init_std) if init_std > 0 else Zeros()
        optimizer = Adagrad(lr=lr, initial_accumulator=initial_accumulator)
        return PSEmbedding(client.sparse_table(f"{prefix}_{name}", dim=dim, init=init, optimizer=optimizer))

    net = build_model(model, lookup, **kwargs)
    params = PSParameters(client, f"{prefix}_{DENSE_TABLE}", net.dense_parameters(), optimizer=Adam(lr=dense_lr))
    return net, params
