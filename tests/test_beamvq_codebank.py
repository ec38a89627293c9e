"""BeamVQ's code bank: straight-through gradients, top-K retrieval, the EMA step, and two workers sharing it on a PS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seraphim.algorithms.beamvq.codebank import CodeBank, LocalStore, PSStore
from seraphim.worker import PSClient

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def bank_with(codes: np.ndarray, decay: float = 0.9) -> CodeBank:
    """A bank whose codes are exactly ``codes`` (count 1 each)."""
    store = LocalStore(len(codes), codes.shape[1])
    store.assign(np.concatenate([codes, np.ones((len(codes), 1))], axis=1))
    bank = CodeBank(store, decay=decay, commitment=0.25, epsilon=0.0)
    bank.refresh()
    return bank


def test_retrieval_returns_the_k_nearest_codes_in_order_with_a_straight_through_gradient():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(16, 2)).astype(np.float32)
    bank = bank_with(codes)
    z = torch.randn(3, 4, 5, 5, requires_grad=True)  # [B, D=4, 5, 5]: each position holds two 2-vectors
    index = bank.nearest(z, 3)
    vectors = z.detach().movedim(1, -1).reshape(-1, 2).numpy()
    brute = np.argsort(((vectors[:, None] - codes[None]) ** 2).sum(-1), axis=1)[:, :3]
    np.testing.assert_array_equal(index.numpy(), brute)
    second = bank.retrieve(z, 1, index)
    np.testing.assert_allclose(second.detach().movedim(1, -1).reshape(-1, 2).numpy(), codes[brute[:, 1]], atol=1e-6)
    weight = torch.randn_like(z)
    (second * weight).sum().backward()
    np.testing.assert_allclose(z.grad.numpy(), weight.numpy())  # d z_q / d z is the identity
    z_q, commitment, nearest = bank.quantize(z.detach())
    np.testing.assert_array_equal(nearest.numpy(), brute[:, 0])
    expected = 0.25 * np.mean((vectors - codes[brute[:, 0]]) ** 2)
    np.testing.assert_allclose(float(commitment), expected, rtol=1e-5)
    with pytest.raises(ValueError, match=r"top_k must be in \[1, 16\]"):
        bank.nearest(z, 17)


def test_the_ema_step_moves_the_statistics_toward_the_batch_and_the_codes_follow():
    codes = np.array([[0.0, 0.0], [10.0, 10.0]], dtype=np.float32)
    bank = bank_with(codes, decay=0.9)
    z = torch.tensor([[1.0, 1.0], [3.0, 1.0], [9.0, 9.0]]).T[None, :, :]  # [B=1, D=2, 3 positions]
    _, _, index = bank.quantize(z)
    np.testing.assert_array_equal(index.numpy(), [0, 0, 1])
    bank.ema_update(z, index)
    bank.refresh()
    # sums: 0.9 * old + 0.1 * batch; counts: 0.9 * 1 + 0.1 * batch count
    np.testing.assert_allclose(bank.stats, [[0.4, 0.2, 1.1], [9.9, 9.9, 1.0]], rtol=1e-6)
    np.testing.assert_allclose(bank.codes.numpy(), [[0.4 / 1.1, 0.2 / 1.1], [9.9, 9.9]], rtol=1e-6)
    np.testing.assert_allclose(bank.pushed, [[0.4, 0.2, 0.1], [-0.1, -0.1, 0.0]], atol=1e-6)


def test_two_workers_ema_pushes_on_the_ps_combine_into_one_ema_step(two_ps):
    rng = np.random.default_rng(1)
    initial = torch.from_numpy(rng.normal(size=(1, 8, 40)).astype(np.float32))  # 40 positions of 2 code vectors
    batches = [torch.from_numpy(rng.normal(size=(2, 8, 6, 6)).astype(np.float32)) for _ in range(2)]
    with PSClient(two_ps.addresses, worker_id=0, num_workers=2) as ps0, \
            PSClient(two_ps.addresses, worker_id=1, num_workers=2) as ps1:
        banks = [CodeBank(PSStore(ps, "bank", codes=32, dim=4, workers=2), decay=0.8) for ps in (ps0, ps1)]
        banks[0].initialize(initial, seed=0)
        banks[1].refresh()
        np.testing.assert_array_equal(banks[0].stats, banks[1].stats)
        start = banks[0].stats.copy()
        batch_stats = []
        for bank, z in zip(banks, batches):
            _, _, index = bank.quantize(z)
            batch_stats.append(bank.batch_stats(z, index))
            bank.ema_update(z, index)
        ps0.flush()
        ps1.flush()
        for bank in banks:
            bank.refresh()
    expected = 0.8 * start + 0.2 * (batch_stats[0] + batch_stats[1]) / 2
    np.testing.assert_allclose(banks[0].stats, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(banks[0].stats, banks[1].stats)
    # each worker's push alone would have moved the rows elsewhere: both landed
    for stats in batch_stats:
        assert np.abs(0.8 * start + 0.2 * stats - expected).max() > 0.1
