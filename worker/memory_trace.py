"""Record the tensor memory of a step: every storage allocated and freed while a callable runs, on CPU.

    trace = record_memory(lambda: model(x).sum().backward(), layers=dict(model.layers.named_children()))
    trace.buffers        # TraceBuffer(id, lower, upper, size, op, scope): lifetimes [lower, upper) in events
    trace.windows        # TraceWindow(layer, phase, lower, upper): each layer's forward and backward pass
    trace.write_csv("trace.csv")                                  # id,lower,upper,size: `seraphim plan-memory` input

A ``TorchDispatchMode`` sees every aten op's outputs, backward included. An output whose storage is not one of the
op's inputs' storages (views and in-place ops share their input's) and is not already tracked is a new
allocation; a ``weakref.finalize`` on its untyped storage (torch keeps one Python object per live storage) marks
the free. Time is an event counter: each allocation and each free takes the next tick, so lifetimes keep the real
order, and a buffer freed before another is allocated never overlaps it. Storages alive when the callable returns
end at the final tick. Memory that never surfaces as an op output (kernel scratch space, storages created before
recording) is not seen.

`layers` (name -> module) adds windows: forward pre/post hooks and full backward pre/post hooks mark the ticks at
which each layer's forward and backward start and end, and every buffer carries the scope (layer, phase) that was
open when it was allocated. The planner's bi-level mode takes these windows. This module only records: the worker
never imports the planner.
"""

from __future__ import annotations

import csv
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

FORWARD, BACKWARD = "forward", "backward"


class TraceBuffer(NamedTuple):
    id: str
    lower: int
    upper: int
    size: int
    op: str  #: the aten op that allocated it
    scope: str  #: "layer/phase" open at allocation, "" outside every layer


class TraceWindow(NamedTuple):
    layer: str
    phase: str
    lower: int
    upper: int


@dataclass(frozen=True)
class MemoryTrace:
    buffers: list[TraceBuffer]
    windows: list[TraceWindow]

    def write_csv(self, path: str | Path) -> None:
        """The DSA CSV (id,lower,upper,size) that `seraphim plan-memory` reads."""
        with Path(path).open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(("id", "lower", "upper", "size"))
            writer.writerows((b.id, b.lower, b.upper, b.size) for b in self.buffers)


class _Recorder(TorchDispatchMode):
    """The dispatch mode that tracks storages; one per recording."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = 0
        self.scope = ""
        self.live: dict[int, TraceBuffer] = {}  # storage key -> its buffer, upper still unknown
        self.done: list[TraceBuffer] = []
        self.allocated = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in inputs or key in self.live or storage.nbytes() == 0:
                continue
            self.live[key] = TraceBuffer(str(self.allocated), self.tick(), -1, storage.nbytes(),
                                         func.overloadpacket.__name__, self.scope)
            self.allocated += 1
            weakref.finalize(storage, self.freed, key)
        return out

    def tick(self) -> int:
        self.clock += 1
        return self.clock - 1

    def freed(self, key: int) -> None:
        if key in self.live:  # a storage freed after recording ended is already closed
            self.close(key, self.tick())

    def close(self, key: int, upper: int) -> None:
        self.done.append(self.live.pop(key)._replace(upper=upper))


def record_memory(step: Callable[[], Any], layers: Mapping[str, torch.nn.Module] | None = None) -> MemoryTrace:
    """Run `step()` once under the recorder; see the module docstring."""
    recorder = _Recorder()
    windows: list[TraceWindow] = []
    open_at: dict[tuple[str, str], int] = {}

    def opener(name: str, phase: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            open_at[(name, phase)] = recorder.clock
            recorder.scope = f"{name}/{phase}"
        return hook

    def closer(name: str, phase: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            windows.append(TraceWindow(name, phase, open_at.pop((name, phase)), recorder.clock))
            recorder.scope = ""
        return hook

    handles = []
    for name, module in (layers or {}).items():
        handles += [module.register_forward_pre_hook(opener(name, FORWARD)),
                    module.register_forward_hook(closer(name, FORWARD)),
                    module.register_full_backward_pre_hook(opener(name, BACKWARD)),
                    module.register_full_backward_hook(closer(name, BACKWARD))]
    try:
        with warnings.catch_warnings():
            # the first layer's backward hook fires with its output gradients when its input needs no gradient
            warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
            with recorder:
                step()
    finally:
        for handle in handles:
            handle.remove()
    end = recorder.tick()
    for key in list(recorder.live):
        recorder.close(key, end)
    buffers = sorted(recorder.done, key=lambda b: int(b.id))
    return MemoryTrace(buffers, sorted(windows, key=lambda w: w.lower))
