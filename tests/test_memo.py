"""MEMO on the LM: token-wise swapping and recomputation give the gradients of the plain layer (float64, to
rounding), the tier spills to disk and reads back, alpha's closed form is its LP's solution, and saved activations
placed by a memory plan leave the step's math unchanged."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from seraphim.algorithms.transformer.model import PRESETS, TransformerConfig, build_model, rope_tables
from seraphim.scheduler.planner import Problem, plan_memory
from seraphim.worker.memo.alpha import LayerActivations, alpha_closed_form, alpha_lp, measure_layer
from seraphim.worker.memo.tier import ActivationTier
from seraphim.worker.memo.tokenwise import TokenwiseMemo
from seraphim.worker.paged.activations import ActivationPlan, SavedActivations, SavedTensor


def _model(layers: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(TransformerConfig(**{**PRESETS["lm-tiny"], "n_layers": layers}), seed=5).double()


def _grads(model: torch.nn.Module, tokens: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    loss = model(tokens[:, :-1], tokens[:, 1:])
    return loss.item(), torch.autograd.grad(loss, list(model.parameters()))


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_tokenwise_swap_and_recompute_give_the_plain_layers_gradients(tmp_path, alpha):
    plain = _model()
    wrapped = copy.deepcopy(plain)
    tier = ActivationTier(budget_bytes=40_000, spill_dir=tmp_path)  # most swapped tensors go to disk
    memo = TokenwiseMemo(tier, alpha=alpha)
    assert len(memo.wrap(wrapped.model.layers)) == 2  # the last two layers are never swapped
    tokens = torch.randint(0, 512, (2, 49), generator=torch.Generator().manual_seed(1))
    loss, expected = _grads(plain, tokens)
    got_loss, got = _grads(wrapped, tokens)
    assert got_loss == pytest.approx(loss, abs=1e-12)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    swapped_tokens = min(round(alpha * 48), 47)
    assert memo.recomputed_tokens == 2 * 2 * (48 - swapped_tokens)  # 2 wrapped layers x batch 2
    assert tier.stats.spilled_bytes > 0 and tier.stats.read_back_bytes == tier.stats.spilled_bytes
    assert tier.memory_bytes == 0 and not list(tmp_path.glob("*.bin"))  # everything freed after backward
    with torch.no_grad():  # evaluation and generation bypass the swapping
        torch.testing.assert_close(wrapped(tokens), plain(tokens))
    tier.close()


def test_alpha_is_the_lps_solution_and_zero_when_even_the_fixed_part_cannot_hide():
    acts = LayerActivations(input_bytes=4 << 20, attention_bytes=4 << 20, other_bytes=56 << 20, forward_s=0.05)
    for bandwidth, tier in [(2e9, 8 << 30), (1e9, 8 << 30), (2e9, 400 << 20), (8e9, 64 << 30)]:
        choice = alpha_closed_form(acts, bandwidth, tier, n_layers=16)
        assert choice.alpha == pytest.approx(alpha_lp(acts, bandwidth, tier, n_layers=16), abs=1e-6)
    slow = alpha_closed_form(acts, bandwidth_bytes_per_s=1e8, tier_bytes=8 << 30, n_layers=16)
    assert slow.alpha == 0.0 and slow.overlap_bound < 0
    assert alpha_lp(acts, 2e9, 8 << 30, 16, extra=lambda m, a: setattr(m, "cap", type(m.overlap)(expr=a <= 0.1))) \
        == pytest.approx(0.1)


def test_measured_layer_activations_count_inputs_attention_and_the_rest_without_weights():
    model = _model(layers=2).float()
    layer = model.model.layers[0]
    x = torch.randn(2, 32, 64)
    cos, sin = rope_tables(16, 0, 32, 10000.0)
    acts = measure_layer(layer, x, cos, sin)
    assert acts.input_bytes == 2 * 32 * 64 * 4 and acts.attention_bytes == 2 * 4 * 32 * 16 * 4
    weights = sum(p.numel() * 4 for p in layer.parameters())
    assert acts.input_bytes < acts.other_bytes < 40 * acts.input_bytes + weights and acts.forward_s > 0


def test_saved_activations_placed_by_a_plan_keep_the_gradients():
    model = _model(layers=2)
    tokens = torch.randint(0, 512, (2, 33), generator=torch.Generator().manual_seed(2))
    _, expected = _grads(model, tokens)
    saved = SavedActivations(torch.device("cpu"))

    def run() -> list[torch.Tensor]:
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda s: s.tensor):
            return _grads(model, tokens)[1]

    saved.begin_step(record=True)
    run()
    saved.end_step()
    rows = saved.stats.trace
    assert rows and all(lo < hi for lo, hi, _ in rows)
    problem = Problem(tuple(map(str, range(len(rows)))), np.array([r[0] for r in rows]),
                      np.array([r[1] for r in rows]), np.array([r[2] for r in rows]))
    plan = plan_memory(problem, time_limit_s=5)
    assert plan.lower_bound <= plan.peak <= sum(r[2] for r in rows)
    saved.install(ActivationPlan(plan.offsets.tolist(), [r[2] for r in rows], plan.peak))
    saved.begin_step(record=False)
    got = run()
    assert saved.stats.planned == len(rows) and saved.stats.unplanned == 0
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    assert isinstance(saved.pack(torch.ones(3)), SavedTensor)
