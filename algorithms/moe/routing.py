"""Token routing of a mixture-of-experts layer: top-k gating with an expert capacity, Hunyuan-Large's recycle routing
of the tokens that overflow it, the load-balancing loss and the router z-loss.

Conventions (Hunyuan-Large's ``HunYuanTopKGate``, ``modeling_hunyuan.py``): the gate is a float32 linear map to E
logits and a softmax; a token's combine weight is the softmax probability of its expert, not renormalized for
top-1 (top-k > 1 renormalizes over the k chosen, as Mixtral does). Capacity C = ceil(capacity_factor * k * T / E)
assignments per expert; choices are served in priority order (every token's first choice before any second one,
then token order), and an assignment past its expert's C is dropped, or with recycle routing sent to a random
expert that still has room (slots drawn uniformly among the free ones), weighted by that expert's probability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Routing:
    """Where a layer's T tokens go: one row per kept assignment, grouped by expert (ascending)."""

    token: torch.Tensor      # [N] token index of each kept assignment
    expert: torch.Tensor     # [N] its expert, ascending
    weight: torch.Tensor     # [N] combine weight (differentiable through the gate)
    counts: torch.Tensor     # [E] kept assignments per expert
    aux_loss: torch.Tensor   # load-balancing loss (scalar)
    z_loss: torch.Tensor     # router z-loss (scalar)
    assignments: int         # k * T
    dropped: int             # assignments no expert took
    recycled: int            # assignments moved to another expert by recycle routing


def capacity(tokens: int, n_experts: int, top_k: int, capacity_factor: float | None) -> int:
    """Assignments each expert takes: ceil(cf * k * T / E); None: no limit (inference, and the released model)."""
    if capacity_factor is None:
        return top_k * tokens
    return max(1, math.ceil(capacity_factor * top_k * tokens / n_experts))


def route(logits: torch.Tensor, top_k: int, capacity_factor: float | None, recycle: bool,
          generator: torch.Generator | None = None) -> Routing:
    """Route tokens with gate logits [T, E] (float32) to their experts (see the module docstring)."""
    tokens, n_experts = logits.shape
    probs = torch.softmax(logits, dim=-1)                                              # (T, E)
    top_p, top_e = probs.topk(top_k, dim=-1)                                           # (T, k)
    if top_k > 1:
        top_p = top_p / top_p.sum(-1, keepdim=True)
    # priority order: slot-major, then token order
    expert = top_e.t().reshape(-1)                                                     # (kT,)
    token = torch.arange(tokens, device=logits.device).repeat(top_k)                   # (kT,)
    weight = top_p.t().reshape(-1)                                                     # (kT,)
    limit = capacity(tokens, n_experts, top_k, capacity_factor)
    position = _positions(expert, n_experts)
    kept = position < limit
    counts = torch.bincount(expert[kept], minlength=n_experts)                         # (E,)
    overflow = torch.nonzero(~kept).squeeze(1)
    recycled = 0
    if recycle and len(overflow):
        spare = (limit - counts).clamp(min=0)                                          # (E,)
        slots = torch.repeat_interleave(torch.arange(n_experts, device=logits.device), spare)
        slots = slots[torch.randperm(len(slots), generator=generator, device=logits.device)]
        moved = overflow[:len(slots)]
        new_expert = slots[:len(moved)]
        expert = expert.clone()
        expert[moved] = new_expert
        weight = weight.clone()
        weight[moved] = probs[token[moved], new_expert]
        kept = kept.clone()
        kept[moved] = True
        counts = counts + torch.bincount(new_expert, minlength=n_experts)
        recycled = len(moved)
    order = torch.argsort(expert[kept], stable=True)
    chosen = torch.bincount(top_e.reshape(-1), minlength=n_experts).to(probs.dtype) / (top_k * tokens)  # (E,)
    aux = n_experts * (chosen * probs.mean(0)).sum()  # E * sum_e f_e P_e: 1 when balanced
    z = torch.logsumexp(logits, dim=-1).pow(2).mean()
    return Routing(token=token[kept][order], expert=expert[kept][order], weight=weight[kept][order], counts=counts,
                   aux_loss=aux, z_loss=z, assignments=top_k * tokens, dropped=int((~kept).sum()),
                   recycled=recycled)


def _positions(expert: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Each assignment's place in its expert's queue (0, 1, ...), in the order given."""
    one_hot = F.one_hot(expert, n_experts)                                             # (N, E)
    return (one_hot.cumsum(0) - 1).gather(1, expert[:, None]).squeeze(1)
