"""PS-backed torch modules under autograd, against real PS processes."""

import numpy as np
import torch

from seraphim.worker import Adagrad, Adam, Normal, PSClient
from seraphim.worker.torch_modules import PSEmbedding, PSParameters


def test_embedding_and_dense_parameters_learn_a_regression(two_ps):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    true_emb = rng.normal(size=(50, 4)).astype(np.float32)
    true_w = rng.normal(size=(4,)).astype(np.float32)
    with PSClient(two_ps.addresses) as ps:
        emb = PSEmbedding(ps.sparse_table("e", dim=4, init=Normal(0, 0.1), optimizer=Adagrad(lr=0.3)))
        head = torch.nn.Linear(4, 1)
        params = PSParameters(ps, "head", head.named_parameters(), optimizer=Adam(lr=0.05))
        losses = []
        for _ in range(150):
            keys = rng.integers(0, 50, size=64)
            target = torch.from_numpy(true_emb[keys] @ true_w)
            params.pull()
            out = head(emb(torch.from_numpy(keys))).squeeze(-1)
            loss = torch.mean((out - target) ** 2)
            head.zero_grad()
            loss.backward()
            params.push()
            ps.clock()
            losses.append(loss.item())
        assert np.mean(losses[-10:]) < 0.1 * np.mean(losses[:10])
        params.pull()
        np.testing.assert_allclose(params.table.pull_all().reshape(-1)[:5],
                                   torch.cat([head.weight.reshape(-1), head.bias]).detach().numpy(), rtol=1e-6)
