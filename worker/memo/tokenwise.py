"""MEMO's token-wise activation swapping and recomputation (Zhao et al., SIGMOD 2025, §4.1) for layers that split
into token-local halves around causal attention.

A layer that offers ``attention_inputs(x, cos, sin) -> (q, k, v)`` and ``attention_output(x, attended) -> y``
(``TokenwiseLayer``) can be wrapped. Its forward then keeps nothing on the compute side but a few numbers per token:

- its input x and its attention output go to the slower tier (``ActivationTier``), whole;
- of the other tensors its backward needs, those of the first α of the tokens go to the tier too (autograd saves
  them through saved-tensor hooks that put them there), and those of the other tokens are dropped.

Backward fetches x and the attention output (prefetched while the layer after it ran backward), recomputes the
dropped tokens' token-local tensors from x (norms, projections, MLP: nothing there mixes tokens), runs attention's
backward from the saved output and its log-sum-exp (attention itself is never recomputed: at long sequences it is
most of a layer's FLOPs), and returns the same gradients as the unwrapped layer, up to summation order. The last
``keep_last`` layers are not wrapped: their backward comes first, so swapping them would only add a round trip.

Usage::

    memo = TokenwiseMemo(ActivationTier(budget_bytes=1 << 30), alpha=0.25)
    memo.wrap(model.model.layers)           # every layer but the last two
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Callable, ContextManager, Iterator, Protocol, Sequence

import torch
from torch import nn

from seraphim.worker.memo.tier import ActivationTier

Weights = Callable[[nn.Module], ContextManager[Any]]  # makes a layer's weights usable while its backward recomputes
SavedRef = Callable[[torch.Tensor], Any]  # a saved tensor's reference kept elsewhere (a paged weight), or None


class TokenwiseLayer(Protocol):
    def attention_inputs(self, x: torch.Tensor, cos: torch.Tensor,
                         sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def attention_output(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor: ...


def _expand_kv(t: torch.Tensor, heads: int) -> torch.Tensor:
    return t.repeat_interleave(heads // t.shape[1], dim=1) if t.shape[1] != heads else t


def _fold_kv(grad: torch.Tensor, groups: int) -> torch.Tensor:
    b, h, s, k = grad.shape
    return grad.view(b, groups, h // groups, s, k).sum(2) if h != groups else grad


class TokenwiseMemo:
    """Wraps layers so their activations are swapped and recomputed token-wise; holds the tier and α."""

    def __init__(self, tier: ActivationTier, alpha: float, keep_last: int = 2, weights: Weights | None = None,
                 saved_ref: SavedRef | None = None, unpack_ref: Callable[[Any], torch.Tensor] | None = None) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (the share of tokens whose activations are swapped), "
                             f"got {alpha}")
        self.tier, self.alpha, self.keep_last = tier, alpha, keep_last
        self.weights: Weights = weights or (lambda layer: nullcontext())
        self._saved_ref, self._unpack_ref = saved_ref, unpack_ref
        self._order: list[nn.Module] = []
        self._pending: dict[int, list[int]] = {}  # layer index -> tier handles its backward will read
        self.recomputed_tokens = 0
        self.swapped_bytes = 0

    def wrap(self, layers: Sequence[nn.Module]) -> list[nn.Module]:
        """Route the forward of every layer but the last keep_last through the token-wise function; returns them."""
        wrapped = list(layers)[:max(0, len(layers) - self.keep_last)]
        for index, layer in enumerate(wrapped):
            if not (hasattr(layer, "attention_inputs") and hasattr(layer, "attention_output")):
                raise TypeError(f"{type(layer).__name__} has no attention_inputs/attention_output: token-wise "
                                f"recomputation needs the layer's token-local halves")
            original = layer.forward

            def forward(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: Any = None,
                        _layer: nn.Module = layer, _index: int = index, _original: Callable = original):
                if cache is not None or not torch.is_grad_enabled():
                    return _original(x, cos, sin, cache)  # generation and evaluation keep nothing for backward
                params = [p for p in _layer.parameters() if p.requires_grad]
                return _TokenwiseLayerFunction.apply(self, _layer, _index, x, cos, sin, *params)

            layer.forward = forward
        self._order = wrapped
        return wrapped

    # -- saved tensors of the swapped tokens -------------------------------------------------------------------
    @contextmanager
    def swapping(self, handles: list[int]) -> Iterator[None]:
        """Autograd saves tensors into the tier while this is active (weights kept by reference stay so)."""

        def pack(t: torch.Tensor) -> Any:
            ref = self._saved_ref(t) if self._saved_ref is not None else None
            if ref is not None:
                return ref
            handle = self.tier.put(t)
            handles.append(handle)
            self.swapped_bytes += t.numel() * t.element_size()
            return _TierRef(handle)

        def unpack(saved: Any) -> torch.Tensor:
            if isinstance(saved, _TierRef):
                return self.tier.get(saved.handle)
            return self._unpack_ref(saved)

        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield

    def prefetch(self, index: int) -> None:
        """Start reading back what the backward of layer `index` will need."""
        for handle in self._pending.get(index, ()):
            self.tier.prefetch(handle)


class _TierRef:
    __slots__ = ("handle",)

    def __init__(self, handle: int) -> None:
        self.handle = handle


def _release(t: torch.Tensor) -> None:
    """Drop a graph output's values but keep its shape and graph: only its grad_fn is needed in backward."""
    t.data = torch.zeros(1, dtype=t.dtype, device=t.device).expand(t.shape)


class _TokenwiseLayerFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, memo: TokenwiseMemo, layer: TokenwiseLayer, index: int, x: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        seq = x.shape[1]
        swapped = min(int(round(memo.alpha * seq)), seq - 1)  # one recomputed token at least: keeps shapes simple
        handles: list[int] = []
        x_in = x.detach()
        ctx.memo, ctx.layer, ctx.index, ctx.swapped, ctx.params = memo, layer, index, swapped, params
        ctx.cos, ctx.sin = cos, sin
        head = None
        if swapped:  # the first α of the tokens: their graph is kept, its saved tensors in the tier
            head = x_in[:, :swapped].requires_grad_()
            with torch.enable_grad(), memo.swapping(handles):
                q1, k1, v1 = layer.attention_inputs(head, cos[:swapped], sin[:swapped])
        with torch.no_grad():
            q2, k2, v2 = layer.attention_inputs(x_in[:, swapped:], cos[swapped:], sin[swapped:])
            q = torch.cat([q1.detach(), q2], dim=2) if swapped else q2
            k = torch.cat([k1.detach(), k2], dim=2) if swapped else k2
            v = torch.cat([v1.detach(), v2], dim=2) if swapped else v2
            attended, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, _expand_kv(k, q.shape[1]), _expand_kv(v, q.shape[1]), 0.0, True)
            tail = layer.attention_output(x_in[:, swapped:], attended[:, :, swapped:])
        if swapped:
            attended_head = attended[:, :, :swapped].detach().requires_grad_()
            with torch.enable_grad(), memo.swapping(handles):
                out1 = layer.attention_output(head, attended_head)
            out = torch.cat([out1.detach(), tail], dim=1)
            ctx.qkv_head = [memo.tier.put(t.detach()) for t in (q1, k1, v1)]
            handles += ctx.qkv_head
            ctx.head_graph = (head, attended_head, q1, k1, v1, out1)
            for t in (q1, k1, v1, out1):
                _release(t)
        else:
            out = tail
        ctx.x_handle, ctx.attended_handle = memo.tier.put(x_in), memo.tier.put(attended)
        handles += [ctx.x_handle, ctx.attended_handle]
        memo._pending[index] = handles
        ctx.lse = lse
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        memo, layer, swapped, params = ctx.memo, ctx.layer, ctx.swapped, ctx.params
        if ctx.index > 0:
            memo.prefetch(ctx.index - 1)  # the layer before's swap-in overlaps this layer's backward
        tier = memo.tier
        x = tier.get(ctx.x_handle)
        attended = tier.get(ctx.attended_handle)
        cos, sin = ctx.cos[swapped:], ctx.sin[swapped:]
        with memo.weights(layer), torch.enable_grad():
            x_tail = x[:, swapped:].detach().requires_grad_()
            attended_tail = attended[:, :, swapped:].detach().requires_grad_()
            out2 = layer.attention_output(x_tail, attended_tail)  # the dropped tokens, recomputed
            memo.recomputed_tokens += x.shape[0] * (x.shape[1] - swapped)
            outputs, grads, inputs = [out2], [grad_out[:, swapped:]], [x_tail, attended_tail]
            if swapped:
                head, attended_head, q1, k1, v1, out1 = ctx.head_graph
                outputs.append(out1)
                grads.append(grad_out[:, :swapped])
                inputs += [head, attended_head]
            found = torch.autograd.grad(outputs, inputs + list(params), grads, allow_unused=True)
            d_x_tail, d_att_tail = found[0], found[1]
            d_params = list(found[len(inputs):])
            d_attended = torch.cat([found[3], d_att_tail], dim=2) if swapped else d_att_tail
            d_head = found[2] if swapped else None

            x_tail2 = x[:, swapped:].detach().requires_grad_()
            q2, k2, v2 = layer.attention_inputs(x_tail2, cos, sin)  # again for the dropped tokens
            if swapped:
                q1v, k1v, v1v = (tier.get(h) for h in ctx.qkv_head)
                q, k, v = (torch.cat([a, b.detach()], dim=2) for a, b in ((q1v, q2), (k1v, k2), (v1v, v2)))
            else:
                q, k, v = q2.detach(), k2.detach(), v2.detach()
            heads, groups = q.shape[1], k.shape[1]
            dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                d_attended.contiguous(), q, _expand_kv(k, heads), _expand_kv(v, heads), attended, ctx.lse, 0.0, True)
            dk, dv = _fold_kv(dk, groups), _fold_kv(dv, groups)
            outputs, grads, inputs = [q2, k2, v2], [dq[:, :, swapped:], dk[:, :, swapped:], dv[:, :, swapped:]], \
                [x_tail2]
            if swapped:
                outputs += [q1, k1, v1]
                grads += [dq[:, :, :swapped], dk[:, :, :swapped], dv[:, :, :swapped]]
                inputs.append(head)
            found = torch.autograd.grad(outputs, inputs + list(params), grads, allow_unused=True)
        d_x_tail = d_x_tail + found[0]
        d_params = [_add(a, b) for a, b in zip(d_params, found[len(inputs):])]
        d_x = torch.cat([d_head + found[1], d_x_tail], dim=1) if swapped else d_x_tail
        for handle in memo._pending.pop(ctx.index, ()):
            tier.free(handle)
        ctx.head_graph = None
        return (None, None, None, d_x, None, None, *d_params)


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b
