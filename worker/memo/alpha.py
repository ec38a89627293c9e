"""MEMO's α: the share of tokens whose activations (beyond a layer's input and attention output) are swapped
rather than recomputed, from the tier's measured bandwidth, the layer's measured time and the tier's budget.

MEMO §4.1 (``../shared/reference/training_anchors.md`` §2)::

    max α  s.t.  (S_input + S_attn + α S_others) / B  <= T_layer      (the swap of a layer hides behind the next)
                 (n - keep) (S_input + S_attn + α S_others) <= M_tier   (the swapped layers fit the tier)
                 0 <= α <= 1

``alpha_closed_form`` is that LP's solution; ``alpha_lp`` writes it in pyomo and solves it with HiGHS, so more
constraints (a floor on α, a per-step I/O cap) are one line each. A negative bound means even α = 0 cannot hide
the swap of the input and attention output, or fit them: α is then 0 and the report says which bound did it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from seraphim.worker.memo.tier import ActivationTier


@dataclass(frozen=True)
class LayerActivations:
    """Bytes a layer's forward saves for backward (per step), and its forward time."""

    input_bytes: int
    attention_bytes: int
    other_bytes: int
    forward_s: float


@dataclass(frozen=True)
class AlphaChoice:
    alpha: float
    overlap_bound: float  # α at which the swap stops hiding behind the next layer's forward
    capacity_bound: float  # α at which the swapped layers stop fitting the tier
    bandwidth_bytes_per_s: float


def alpha_closed_form(acts: LayerActivations, bandwidth_bytes_per_s: float, tier_bytes: float, n_layers: int,
                      keep_last: int = 2) -> AlphaChoice:
    fixed = acts.input_bytes + acts.attention_bytes
    other = max(acts.other_bytes, 1)
    overlap = (bandwidth_bytes_per_s * acts.forward_s - fixed) / other
    swapped_layers = max(n_layers - keep_last, 1)
    capacity = (tier_bytes / swapped_layers - fixed) / other
    alpha = min(max(min(overlap, capacity), 0.0), 1.0)
    return AlphaChoice(alpha, overlap, capacity, bandwidth_bytes_per_s)


def alpha_lp(acts: LayerActivations, bandwidth_bytes_per_s: float, tier_bytes: float, n_layers: int,
             keep_last: int = 2, extra: Callable[[object, object], None] | None = None) -> float:
    """The same LP in pyomo (HiGHS); `extra(model, alpha)` may add constraints on the variable."""
    import pyomo.environ as pyo

    fixed = acts.input_bytes + acts.attention_bytes
    m = pyo.ConcreteModel()
    m.alpha = pyo.Var(bounds=(0.0, 1.0))
    m.goal = pyo.Objective(expr=m.alpha, sense=pyo.maximize)
    scale = 1.0 / max(fixed + acts.other_bytes, 1)  # bytes to O(1) numbers for the solver
    m.overlap = pyo.Constraint(expr=(fixed + m.alpha * acts.other_bytes) * scale
                               <= bandwidth_bytes_per_s * acts.forward_s * scale)
    m.capacity = pyo.Constraint(expr=max(n_layers - keep_last, 1) * (fixed + m.alpha * acts.other_bytes) * scale
                                <= tier_bytes * scale)
    if extra is not None:
        extra(m, m.alpha)
    result = pyo.SolverFactory("appsi_highs").solve(m, load_solutions=False)
    if result.solver.termination_condition != pyo.TerminationCondition.optimal:
        return 0.0  # infeasible: not even α = 0 fits, the closed form's report says which bound
    m.solutions.load_from(result)
    return float(pyo.value(m.alpha))


def measure_layer(layer: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  repeats: int = 2) -> LayerActivations:
    """The bytes a TokenwiseLayer's forward saves (its input, its attention output, the rest, over distinct
    storages) and its forward time, measured on x."""
    import time

    import torch.nn.functional as F

    seen: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in layer.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    x = x.detach().requires_grad_()
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        q, k, v = layer.attention_inputs(x, cos, sin)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        layer.attention_output(x, attended)
    input_bytes = x.numel() * x.element_size()
    attention_bytes = attended.numel() * attended.element_size()
    seen.pop(x.untyped_storage().data_ptr(), None)
    seen.pop(attended.untyped_storage().data_ptr(), None)
    with torch.no_grad():
        started = time.perf_counter()
        for _ in range(repeats):
            layer(x, cos, sin)
        forward_s = (time.perf_counter() - started) / repeats
    return LayerActivations(input_bytes, attention_bytes, sum(seen.values()), forward_s)


def measure_bandwidth(spill_dir: str, nbytes: int = 32 << 20) -> float:
    """Bytes/s at which the tier's disk takes a tensor and gives it back (a spill and its read): the slow path, so
    α is chosen for the case where the swapped bytes outgrow the tier's memory."""
    import time

    tier = ActivationTier(budget_bytes=0, spill_dir=Path(spill_dir) / "bandwidth-probe")
    probe = torch.randn(nbytes // 4)
    try:
        started = time.perf_counter()
        handle = tier.put(probe)
        tier.get(handle)
        tier.free(handle)
        return 2 * nbytes / (time.perf_counter() - started)
    finally:
        tier.close()
