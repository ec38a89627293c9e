"""The same CTR models trained in one process with plain torch: the accuracy reference and the e2e bench peer.

Sparse tables are `nn.Embedding(key_space, dim, sparse=True)` over the same hashed key space as the PS
(so the same collisions), updated by `torch.optim.Adagrad`; dense parameters by `torch.optim.Adam`,
matching the PS tables' optimizers. Memory is what plain torch needs: key_space x dim floats per table
plus as much again for Adagrad's accumulator (2^24 keys x dim 8: about 1 GiB), all allocated up front.
"""

from __future__ import annotations

import torch
from torch import nn

from seraphim.algorithms.ctr.models import LookupFactory, build_model
from seraphim.algorithms.ctr.train import CTRConfig, MetricsCallback, StepHooks, fit, model_kwargs


def _local_lookup(key_space: int) -> LookupFactory:
    """A lookup factory making dense-backed embeddings with sparse gradients."""

    def make(_name: str, dim: int, init_std: float) -> nn.Module:
        weight = torch.zeros(key_space, dim)
        if init_std > 0:
            weight.normal_(0.0, init_std)
        return nn.Embedding.from_pretrained(weight, freeze=False, sparse=True)

    return make


def build_reference_model(config: CTRConfig) -> nn.Module:
    """The config's model with local tables; dense weights equal the PS run's (same seed)."""
    return build_model(config.model, _local_lookup(config.data.key_space), **model_kwargs(config))


def train_reference(config: CTRConfig, metrics_cb: MetricsCallback | None = None) -> dict[str, float]:
    """Train in this process on the stream a single worker would read; returns the same metrics as train_worker."""
    model = build_reference_model(config)
    dense = [p for _, p in model.dense_parameters()]
    dense_ids = {id(p) for p in dense}
    sparse = [p for p in model.parameters() if id(p) not in dense_ids]
    adagrad = torch.optim.Adagrad(sparse, lr=config.lr, initial_accumulator_value=config.initial_accumulator)
    optimizers = [adagrad, torch.optim.Adam(dense, lr=config.dense_lr)]

    def step() -> None:
        with torch.sparse.check_sparse_tensor_invariants(enable=False):  # the default, said aloud to silence torch
            for opt in optimizers:
                opt.step()
                opt.zero_grad(set_to_none=True)

    return fit(model, config, StepHooks(before_forward=lambda: None, after_backward=step), metrics_cb=metrics_cb)
