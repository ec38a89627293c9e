"""Where the routed experts live while a worker trains, the two placements the job offers:

- ``BankExperts`` ("ps"): the experts are sets of a ``ParameterBank`` on the PS; each step a worker pulls the
  experts its tokens chose, runs them, and pushes only their gradients (weights move to the tokens);
- ``AllToAllExperts`` ("all_to_all", expert parallelism): worker r owns experts r*E/W .. (r+1)*E/W - 1; tokens go to
  their expert's owner and back by all-to-all over ``torch.distributed`` (gloo), and only the owner pulls its
  experts from the bank and pushes their gradient (tokens move to the weights).

Both keep the expert states on the PS, so a restarted worker loses nothing. Inference (evaluation, sampling, on
any subset of the workers) pulls the chosen experts in either placement: an all-to-all needs every worker.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from seraphim.algorithms.moe.model import run_experts
from seraphim.algorithms.moe.routing import Routing
from seraphim.worker.paged.bank import ParameterBank


class BankExperts:
    """One layer's experts as sets layer*E .. layer*E + E - 1 of a bank: pull the chosen, push their gradients."""

    def __init__(self, bank: ParameterBank, layer: int, n_experts: int) -> None:
        self.bank, self.n_experts = bank, n_experts
        self.first = layer * n_experts

    def __call__(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        active = torch.nonzero(routing.counts).squeeze(1)
        weights = self.bank.fetch(active.numpy() + self.first, among=range(self.first, self.first + self.n_experts))
        return run_experts(x, routing.counts[active].tolist(), weights)


class _AllToAll(torch.autograd.Function):
    """all_to_all_single with autograd: backward sends the gradients back along the reversed splits."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, out_splits: list[int], in_splits: list[int]) -> torch.Tensor:
        ctx.splits = (out_splits, in_splits)
        out = x.new_empty(sum(out_splits), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        out_splits, in_splits = ctx.splits
        back = grad.new_empty(sum(in_splits), *grad.shape[1:])
        dist.all_to_all_single(back, grad.contiguous(), in_splits, out_splits)
        return back, None, None


class AllToAllExperts:
    """Expert parallelism: this worker runs its own experts on every worker's tokens routed to them."""

    def __init__(self, bank: ParameterBank, layer: int, n_experts: int, rank: int, world_size: int) -> None:
        if n_experts % world_size:
            raise ValueError(f"all_to_all placement: {n_experts} experts do not split evenly over {world_size} "
                             f"workers")
        self.bank, self.n_experts, self.world = bank, n_experts, world_size
        self.per_worker = n_experts // world_size
        self.first = layer * n_experts
        self.owned = self.first + rank * self.per_worker
        self.pulling = BankExperts(bank, layer, n_experts)

    def __call__(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        if not self.bank.training:
            return self.pulling(x, routing)
        send_counts = routing.counts.view(self.world, self.per_worker)                # (W, E/W) mine, per owner
        recv_counts = torch.empty_like(send_counts)                                    # (W, E/W) theirs, for mine
        dist.all_to_all_single(recv_counts, send_counts.contiguous())
        send, recv = send_counts.sum(1).tolist(), recv_counts.sum(1).tolist()
        received = _AllToAll.apply(x, recv, send)                                      # (M, D) source-major
        local = torch.repeat_interleave(torch.arange(self.per_worker).repeat(self.world), recv_counts.reshape(-1))
        order = torch.argsort(local, stable=True)                                      # group by my expert
        weights = self.bank.fetch(np.arange(self.owned, self.owned + self.per_worker),
                                  among=range(self.first, self.first + self.n_experts))
        out = run_experts(received[order], recv_counts.sum(0).tolist(), weights)      # (M, D)
        return _AllToAll.apply(out[torch.argsort(order)], send, recv)                  # (N, D)
