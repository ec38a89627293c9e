"""Long-sequence training memory: MEMO's token-wise swapping and recomputation against no checkpointing, full
per-layer recomputation (``torch.utils.checkpoint``) and PyTorch's selective activation checkpointing, on the LM of
``lm.transformer`` at a long sequence, in one run.

For each method, over one training step (forward and backward, after a warm-up step):

- ``saved_bytes_*``: the peak of activation memory on the compute side: the bytes of distinct tensor storages that
  ops create during the step and that are alive at once, weights and their gradients excluded (a
  ``TorchDispatchMode`` sees every op's outputs; a finalizer on each storage sees its free). This counts what
  autograd saves and what backward recomputes alike; tensors MEMO hands to its tier are freed from the compute side
  once written (the tier spills to disk here, as the bench gives it no memory).
- ``recompute_flops_*``: the FLOPs a method's backward runs beyond no checkpointing's backward, by the formulas of
  ``torch.utils.flop_counter`` (FlopCounterMode's own registry; the mode itself tracks modules through hooks that
  refuse the nested ``autograd.grad`` MEMO's backward runs, so a bare dispatch mode applies the same formulas).
- ``tier_bytes_memo``: the bytes MEMO moved to the tier and back; ``alpha``: MEMO's α from its LP, with the
  measured disk bandwidth of the tier and the measured forward time of a layer.
- ``step_s_*`` (median of --steps) and ``overhead_*`` = step time over no checkpointing's, minus 1.

Targets (the issue's): saved_bytes_memo <= saved_bytes_full_recompute, and overhead_memo <= overhead_full_recompute
/ 2. MEMO never swaps the last two layers, and in backward it holds one layer's fetched and recomputed tensors while
the next layer's are prefetched: its saved peak is a few layers' activations whatever the depth, while full
recomputation keeps every layer's input, about a twentieth of a layer's activations here. MEMO holds less only past a
depth, printed as ``layers_where_memo_saves_less`` (from the measured peaks and the bytes of one layer input).

    python bench/memo.py [--seq 8192] [--layers 24] [--steps 2] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import tempfile
import time
import weakref
from pathlib import Path

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts
from torch.utils.flop_counter import flop_registry
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from common import print_figures
from seraphim.algorithms.transformer.model import TransformerConfig, build_model, rope_tables
from seraphim.worker.memo.alpha import alpha_closed_form, measure_bandwidth, measure_layer
from seraphim.worker.memo.tier import ActivationTier
from seraphim.worker.memo.tokenwise import TokenwiseMemo

SAVE_IN_SELECTIVE = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default,
                     torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default}


class LiveStorages(TorchDispatchMode):
    """Bytes of the storages ops create, alive over time; `exclude` removes storages known to be weights' grads."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.bytes = 0
        self.events: list[tuple[int, int]] = []  # (storage pointer, +bytes or -bytes) in order

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key in inputs or key in self.live or not storage.nbytes():
                    continue
                self.live[key] = storage.nbytes()
                self.events.append((key, storage.nbytes()))
                weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key: int) -> None:
        nbytes = self.live.pop(key, 0)
        if nbytes:
            self.events.append((key, -nbytes))

    def peak(self, exclude: set[int]) -> int:
        current = peak = 0
        for key, delta in self.events:
            if key not in exclude:
                current += delta
                peak = max(peak, current)
        return peak


class Flops(TorchDispatchMode):
    """FLOPs of the ops run inside, by torch.utils.flop_counter's formulas."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def _checkpointed(model, mode: str) -> None:
    """Route every layer's training forward through torch.utils.checkpoint (mode full or selective)."""
    for layer in model.model.layers:
        original = layer.forward

        def forward(x, cos, sin, cache=None, _original=original):
            if not torch.is_grad_enabled():
                return _original(x, cos, sin, cache)
            if mode == "full":
                return checkpoint(_original, x, cos, sin, use_reentrant=False)
            policy = create_selective_checkpoint_contexts(
                lambda ctx, op, *a, **k: CheckpointPolicy.MUST_SAVE if op in SAVE_IN_SELECTIVE
                else CheckpointPolicy.PREFER_RECOMPUTE)
            return checkpoint(_original, x, cos, sin, use_reentrant=False, context_fn=lambda: policy)

        layer.forward = forward


def measure(model, tokens: torch.Tensor, steps: int) -> dict[str, float]:
    """Peak live activation bytes and backward FLOPs of one step, then the median time of `steps` steps."""
    params = list(model.parameters())
    x, y = tokens[:, :-1], tokens[:, 1:]
    model(x, y).backward()  # warm-up: kernels, lazily built state
    for p in params:
        p.grad = None
    tracker = LiveStorages()
    flops = Flops()
    with tracker:
        loss = model(x, y)
        with flops:
            loss.backward()
    grads = {p.grad.untyped_storage().data_ptr() for p in params if p.grad is not None}
    result = {"saved_bytes": tracker.peak(grads), "backward_flops": flops.total}
    times = []
    for _ in range(steps):
        for p in params:
            p.grad = None
        started = time.perf_counter()
        model(x, y).backward()
        times.append(time.perf_counter() - started)
    result["step_s"] = statistics.median(times)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq", type=int, default=8192)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="sequence 2048, 20 layers: a check in a few minutes")
    a = p.parse_args()
    if a.quick:
        a.seq, a.layers = 2048, 20
    torch.set_num_threads(a.threads)
    config = TransformerConfig(vocab_size=512, dim=a.dim, n_layers=a.layers, n_heads=4, n_kv_heads=2,
                               ffn_dim=int(a.dim * 8 / 3) // 16 * 16, max_seq_len=a.seq)
    base = build_model(config, seed=0)
    tokens = torch.randint(0, config.vocab_size, (1, a.seq + 1), generator=torch.Generator().manual_seed(0))
    print(f"# LM: {a.layers} layers of width {a.dim}, {config.parameter_count() / 1e6:.1f}M parameters, sequence "
          f"{a.seq}, batch 1; {a.threads} torch threads", flush=True)
    results = {"none": measure(base, tokens, a.steps)}
    for mode in ("full", "selective"):
        model = copy.deepcopy(base)
        _checkpointed(model, mode)
        results[mode] = measure(model, tokens, a.steps)
    with tempfile.TemporaryDirectory(prefix="memo-tier-") as spill:
        tier = ActivationTier(budget_bytes=0, spill_dir=Path(spill))
        layer = base.model.layers[0]
        with torch.no_grad():
            hidden = base.model.embed_tokens(tokens[:, :-1])
        cos, sin = rope_tables(config.head_dim, 0, a.seq, config.rope_theta)
        acts = measure_layer(layer, hidden, cos, sin)
        choice = alpha_closed_form(acts, measure_bandwidth(spill), tier_bytes=64 << 30, n_layers=a.layers)
        model = copy.deepcopy(base)
        memo = TokenwiseMemo(tier, alpha=choice.alpha)
        memo.wrap(model.model.layers)
        results["memo"] = measure(model, tokens, a.steps)
        tier_bytes = tier.stats.spilled_bytes + tier.stats.read_back_bytes
        tier.close()
    none = results["none"]
    figures = {"alpha": choice.alpha, "alpha_overlap_bound": choice.overlap_bound,
               "tier_bandwidth_bytes_per_s": choice.bandwidth_bytes_per_s, "layer_forward_s": acts.forward_s}
    names = {"none": "none", "full": "full_recompute", "selective": "selective", "memo": "memo"}
    for key, name in names.items():
        r = results[key]
        figures[f"saved_bytes_{name}"] = r["saved_bytes"]
        figures[f"recompute_flops_{name}"] = r["backward_flops"] - none["backward_flops"]
        figures[f"step_s_{name}"] = r["step_s"]
        if key != "none":
            figures[f"overhead_{name}"] = r["step_s"] / none["step_s"] - 1
    figures["tier_bytes_memo"] = tier_bytes
    figures["saved_memo_over_full_recompute"] = figures["saved_bytes_memo"] / figures["saved_bytes_full_recompute"]
    # full recomputation keeps every layer's input, MEMO's peak does not grow with depth: the depth where they meet
    layer_input_bytes = a.seq * a.dim * 4
    figures["layers_where_memo_saves_less"] = a.layers + math.ceil(
        (figures["saved_bytes_memo"] - figures["saved_bytes_full_recompute"]) / layer_input_bytes)
    figures["overhead_memo_over_full_recompute"] = (figures["overhead_memo"] / figures["overhead_full_recompute"]
                                                     if figures["overhead_full_recompute"] > 0 else float("nan"))
    print_figures(figures)


if __name__ == "__main__":
    main()
