"""The step runtime for layered models whose states live in pages on the PS (Angel-PTM's pages and unified step).

Usage::

    model = build_on_meta()                         # an ordinary nn.Module; its layers are listed as units
    paged = PagedModel(ps, model, name="lm", optimizer=AdamW(lr=3e-4), config=PagingConfig(page_bytes=1 << 20),
                       init=init_tensor, rank=rank, world_size=world)
    for step in range(start, steps):
        with paged.step(step, lr_scale=schedule(step)):
            loss = model(tokens, targets) / world
            loss.backward()                         # each page's gradient is pushed as soon as it is complete
        ps.clock()
    with paged.inference():
        logits = model(prompt)

What it does:

- **Pages.** The model's parameters, in the order its units (layers) first use them, are packed into fixed-size
  pages (``layout.py``); the PS keeps each page's fp32 weights and Adam moments in a versioned table, spilling to
  LMDB past its RAM budget, and applies AdamW per page (``ps/versions.py``). The worker keeps a budget of pages
  in the compute precision (``page_cache.py``), never the whole model: a parameter's ``.data`` is a view of its
  page while its unit runs and a one-element placeholder otherwise.
- **Weights saved for backward** are not kept: saved-tensor hooks turn a saved weight (or any view of a page) into
  a reference to its page, fetched again when backward reads it. Activations stay as autograd saved them (MEMO's
  swapping plugs in there).
- **The trace.** The first training step fetches on demand and records the order of page accesses, forward and
  backward, and the saved-activation bytes at each (``trace.py``); every later step follows it: it prefetches the
  pages of what comes next, at most ``max_in_flight`` at once, and evicts the page whose next use is farthest.
- **Gradients** are pushed per page as soon as autograd has produced every tensor's gradient in it
  (``gradients.py``), while earlier layers still run backward.
- **Versions.** A page's version is the number of updates it holds. The forward of step t reads version t (or
  t - 1 with ``staleness=1``, the one-step-delayed update, which changes the math), backward reads the version
  its forward read, and step t's gradients update version t. A page of the next step is prefetched as soon as its
  gradient has been pushed: the PS answers once the update has landed. Nothing waits for a global barrier.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from seraphim.proto.errors import InvalidArgument
from seraphim.worker.client import DenseTable, PSClient
from seraphim.worker.paged.activations import ActivationPlan, SavedActivations, SavedTensor
from seraphim.worker.paged.gradients import PageGradients
from seraphim.worker.paged.layout import PageLayout, RowShape, page_keys, row_shape
from seraphim.worker.paged.page_cache import PageCache
from seraphim.worker.paged.policy import EvictionPolicy, FarthestNextUse, LeastRecentlyUsed
from seraphim.worker.paged.trace import BACKWARD, FORWARD, StepTrace, TraceCursor
from seraphim.worker.paged.transfer import PageTransfer
from seraphim.worker.specs import AdamW, Zeros

NEVER = 1 << 62  # a next use past any other: the page is not needed again (or its copy will be stale)
InitTensor = Callable[[str, torch.Tensor], None]  # fills a parameter's fresh tensor in place, by parameter name


@dataclass(frozen=True)
class PagingConfig:
    """How a paged model moves its states.

    page_bytes: a page in the compute precision. budget_bytes: the worker's resident pages and fetches in flight
    (None: two of the largest layer's page sets). ps_page_bytes: the PS's storage page (the job's storage.page_kb),
    which decides how a page is cut into PS rows. overlap False fetches on demand and pushes all gradients after
    backward (the baseline the overlap is measured against).
    """

    page_bytes: int = 1 << 20
    budget_bytes: int | None = None
    max_in_flight: int = 4
    overlap: bool = True
    staleness: int = 0
    compute_dtype: torch.dtype = torch.float32
    device: str = "cpu"
    ps_page_bytes: int = 256 << 10
    wait_s: float = 600.0

    def __post_init__(self) -> None:
        if self.staleness not in (0, 1):
            raise InvalidArgument(f"staleness must be 0 (exact) or 1 (one-step-delayed update), got {self.staleness}")
        if self.max_in_flight < 1:
            raise InvalidArgument(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        itemsize = torch.empty(0, dtype=self.compute_dtype).element_size()
        if self.page_bytes < itemsize or self.page_bytes % itemsize:
            raise InvalidArgument(f"page_bytes {self.page_bytes} must be a positive multiple of the compute dtype's "
                                  f"{itemsize} bytes")

    @property
    def page_numel(self) -> int:
        return self.page_bytes // torch.empty(0, dtype=self.compute_dtype).element_size()


@dataclass(frozen=True)
class _PageRef:
    """A saved tensor that views a page: re-read from the page when backward needs it."""

    page: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int


@dataclass(frozen=True)
class _ParamRef:
    """A saved tensor that views a parameter spanning several pages (gathered into a tensor of its own)."""

    name: str
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int


@dataclass
class StepReport:
    """What one step moved and waited for (cumulative counters of the PagedModel at the step's end)."""

    pulled_bytes: int
    pushed_bytes: int
    pages_in_flight: float
    stall_s: float
    prefetch_hits: int
    demand_fetches: int
    trace_misses: int
    max_resident_bytes: int
    activation_peak_bytes: int


class PagedModel:
    """An nn.Module whose parameters and Adam states live in pages on the PS (see the module docstring)."""

    def __init__(self, client: PSClient, model: nn.Module, *, name: str, optimizer: AdamW, config: PagingConfig,
                 units: Sequence[nn.Module] | None = None, init: InitTensor | None = None,
                 policy: EvictionPolicy | None = None, rank: int = 0, world_size: int = 1, seed: int = 0,
                 ready_timeout_s: float = 600.0) -> None:
        self.client, self.model, self.name, self.config = client, model, name, config
        self.device = torch.device(config.device)
        self.units = list(units if units is not None else _declared_units(model))
        self._unit_params, owned = _unit_parameters(model, self.units)
        self._param_name = {id(p): n for n, p in model.named_parameters()}
        self._params = dict(model.named_parameters())
        frozen = {n for n in owned if not self._params[n].requires_grad}
        self.layout = PageLayout.pack(((n, tuple(self._params[n].shape)) for n in owned), config.page_numel,
                                      frozen=frozen)
        self._placement = {t.name: t for t in self.layout.tensors}
        self._unit_pages = {id(u): self.layout.pages_of(self._unit_params[id(u)]) for u in self.units}
        self.largest_unit_bytes = max(len(p) for p in self._unit_pages.values()) * config.page_bytes
        self.budget_bytes = config.budget_bytes or 2 * self.largest_unit_bytes
        if self.budget_bytes < self.largest_unit_bytes:
            raise InvalidArgument(
                f"paged model {name!r}: the worker's page budget of {self.budget_bytes} bytes is smaller than one "
                f"layer's pages ({self.largest_unit_bytes} bytes: {self.largest_unit_bytes // config.page_bytes} "
                f"pages of {config.page_bytes}); raise the budget to at least that, or use smaller pages")
        self.rows: RowShape = row_shape(config.page_numel, config.ps_page_bytes)
        self.table = self._open_table(optimizer, rank, world_size, seed, init, ready_timeout_s,
                                      self.layout.pages_of(frozen))
        self._transfer = PageTransfer.for_device(self.device, config.compute_dtype)
        self._policy = policy or FarthestNextUse()
        self.cache = PageCache(self.table, self.rows.rows_per_page, config.page_numel, self._transfer,
                               self.budget_bytes, config.max_in_flight, LeastRecentlyUsed(), self, config.wait_s)
        self.grads = PageGradients(self.layout, self.table, self.rows.rows_per_page, self._transfer, self.device,
                                   set(owned) - frozen)
        self.grads.on_push = lambda page: self._schedule()
        self.activations = SavedActivations(self.device)
        self._placeholders = {n: _placeholder(p, config.compute_dtype, self.device) for n, p in self._params.items()}
        _rehome_parameters(model, self._placeholders)
        self._params = dict(model.named_parameters())
        self._param_name = {id(p): n for n, p in self._params.items()}
        for p in self._params.values():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(self._grad_ready)
        self._gathered: dict[int, str] = {}  # storage pointer of a parameter gathered from several pages -> its name
        # units whose weights are in place, and how deeply (a unit called inside unit_weights() is entered twice:
        # gathering its weights again would orphan the first gather's pointer in _gathered, and once that memory
        # held an activation, the activation would be saved as a reference to the weight)
        self._entered: dict[int, int] = {}
        self._backward_params: dict[str, torch.Tensor] = {}
        self._mode: str | None = None
        self._phase = FORWARD
        self._step = 0
        self._last_step: int | None = None
        self._infer_version = 0
        self._fwd_version: dict[int, int] = {}
        self.trace: StepTrace | None = None  # recorded by the first training step, followed by the later ones
        self.last_trace = StepTrace()  # what the latest training step did, to compare with the trace
        self._cursor: TraceCursor | None = None
        self.version_skew = 0
        for unit in self.units:
            unit.register_forward_pre_hook(self._enter)
            unit.register_forward_hook(self._exit)

    # -- the PS table ------------------------------------------------------------------------------------------
    def _open_table(self, optimizer: AdamW, rank: int, world_size: int, seed: int, init: InitTensor | None,
                    ready_timeout_s: float, frozen_pages: Sequence[int]) -> DenseTable:
        """Worker 0 creates the versioned table and writes the initial pages; the others wait for its marker. The
        frozen tensors' pages get a learning rate of 0: no step and no weight decay moves them."""
        shards = self.client.num_shards
        pages = -(-self.layout.n_pages // shards) * shards  # whole pages per shard: a page is one shard's rows
        rpp = self.rows.rows_per_page
        shape = (pages * rpp, self.rows.row_dim)
        frozen_rows = [(p * rpp, (p + 1) * rpp, 0.0) for p in frozen_pages]
        return self.client.open_initialized(
            self.name, lambda: self.client.dense_table(self.name, shape, init=Zeros(), optimizer=optimizer, seed=seed,
                                                       lr_scales=frozen_rows, sum_workers=world_size),
            lambda table: self._write_initial_pages(table, init), writer=rank == 0, timeout_s=ready_timeout_s)

    def _write_initial_pages(self, table: DenseTable, init: InitTensor | None) -> None:
        """Fill the pages tensor by tensor in packing order, pushing each page once the cursor has passed it, so at
        most a page and one tensor are materialized at a time."""
        page_numel, rpp = self.config.page_numel, self.rows.rows_per_page
        buffers: dict[int, np.ndarray] = {}

        def flush(page: int) -> None:
            values = buffers.pop(page)
            table.push(page_keys(page, rpp), values.reshape(rpp, -1), mode="assign")

        for placement in self.layout.tensors:
            param = self._params[placement.name]
            if param.device.type == "meta":
                if init is None:
                    raise InvalidArgument(f"paged model {self.name!r}: parameter {placement.name!r} is on the meta "
                                          f"device; pass init= to fill parameters by name")
                value = torch.empty(param.shape, dtype=torch.float32)
                init(placement.name, value)
            else:
                value = param.detach().to(torch.float32).cpu()
            flat = value.reshape(-1).numpy()
            for s in placement.segments:
                for done in [p for p in buffers if p < s.page]:
                    flush(done)
                buf = buffers.setdefault(s.page, np.zeros(page_numel, dtype=np.float32))
                buf[s.page_offset:s.page_offset + s.numel] = flat[s.tensor_offset:s.tensor_offset + s.numel]
        for page in sorted(buffers):
            flush(page)

    # -- steps -------------------------------------------------------------------------------------------------
    @contextmanager
    def step(self, step: int, lr_scale: float = 1.0, last_step: int | None = None) -> Iterator[None]:
        """Run one training step's forward and backward inside; the gradients are in flight when it ends (the
        client's clock() waits for them). last_step: no prefetch reaches past it (the run's final step)."""
        if self._mode is not None:
            raise RuntimeError(f"paged model {self.name!r} is already inside a {self._mode} context")
        self._mode, self._phase, self._step, self._last_step = "train", FORWARD, step, last_step
        self._fwd_version = {}
        self.grads.begin(step, lr_scale, early=self.config.overlap)
        following = self.trace is not None and self.config.overlap
        self.last_trace = StepTrace()
        self.activations.begin_step(record=self.trace is None)
        self._cursor = TraceCursor(self.trace) if following else None
        self.cache.policy = self._policy if following else LeastRecentlyUsed()
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
                if following:
                    self._schedule()
                yield
            self._end_step()
        finally:
            self._mode = None
            self._release_all()

    def _end_step(self) -> None:
        if self._phase != BACKWARD and self.grads.missing_pages:
            raise RuntimeError(f"paged model {self.name!r}: step {self._step} ended without backward(); call "
                               f"loss.backward() inside paged.step(), or use paged.inference() for a forward pass")
        self.grads.finish()
        self.activations.end_step()
        if self.trace is None:
            self.trace = self.last_trace
        self._infer_version = self._step + 1

    @contextmanager
    def inference(self, version: int | None = None) -> Iterator[None]:
        """Forward passes without gradients inside, on pages at `version` or later (default: the version the last
        step's updates produce)."""
        if self._mode is not None:
            raise RuntimeError(f"paged model {self.name!r} is already inside a {self._mode} context")
        self._mode, self._phase = "inference", FORWARD
        self._infer_version = self._infer_version if version is None else version
        self.cache.policy = LeastRecentlyUsed()
        try:
            with torch.no_grad():
                yield
        finally:
            self._mode = None
            self._release_all()

    def named_tensors(self, version: int | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Every parameter's values (float32, CPU), in packing order, at `version` or later (default: what the last
        step's update produces), fetched page by page within the budget: for writing the model out."""
        if self._mode is not None:
            raise RuntimeError(f"paged model {self.name!r}: named_tensors() reads pages outside a step")
        need = self._infer_version if version is None else version
        self.cache.policy = LeastRecentlyUsed()
        for placement in self.layout.tensors:
            parts = [self.cache.get(s.page, need)[0][s.page_offset:s.page_offset + s.numel]
                     for s in placement.segments]
            yield placement.name, torch.cat(parts).view(placement.shape).to("cpu", torch.float32, copy=True)

    def report(self) -> StepReport:
        s = self.cache.stats
        return StepReport(pulled_bytes=s.pulled_bytes, pushed_bytes=self.grads.pushed_bytes,
                          pages_in_flight=s.mean_in_flight, stall_s=s.stall_s, prefetch_hits=s.prefetch_hits,
                          demand_fetches=s.demand_fetches,
                          trace_misses=self._cursor.misses if self._cursor is not None else 0,
                          max_resident_bytes=s.max_resident_bytes, activation_peak_bytes=self.activations.stats.peak_bytes)

    def close(self) -> None:
        self.cache.close()

    # -- units -------------------------------------------------------------------------------------------------
    def _enter(self, unit: nn.Module, args: Any) -> None:
        if self._mode is None:
            raise RuntimeError(f"paged model {self.name!r}: its layers hold no weights outside paged.step() or "
                               f"paged.inference(); run the model inside one of them")
        depth = self._entered.get(id(unit), 0)
        self._entered[id(unit)] = depth + 1
        if depth:  # the unit runs inside unit_weights(): its weights are in place already
            return
        pages = {p: self._access(p, pin=True) for p in self._unit_pages[id(unit)]}
        for name in self._unit_params[id(unit)]:
            self._params[name].data = self._materialize(name, pages)
        if self._mode == "inference":
            self._prefetch_next_unit(unit)

    def _exit(self, unit: nn.Module, args: Any, output: Any) -> None:
        depth = self._entered.pop(id(unit), 1) - 1
        if depth:
            self._entered[id(unit)] = depth
            return
        for name in self._unit_params[id(unit)]:
            self._release(name)
        for page in self._unit_pages[id(unit)]:
            self.cache.unpin(page)

    def _materialize(self, name: str, pages: dict[int, torch.Tensor]) -> torch.Tensor:
        """A parameter's tensor: a view of its page, or its pages' pieces gathered into one tensor."""
        placement = self._placement[name]
        if placement.in_one_page:
            s = placement.segments[0]
            return pages[s.page][s.page_offset:s.page_offset + s.numel].view(placement.shape)
        value = torch.cat([pages[s.page][s.page_offset:s.page_offset + s.numel]
                           for s in placement.segments]).view(placement.shape)
        self._gathered[value.untyped_storage().data_ptr()] = name
        return value

    def _release(self, name: str) -> None:
        param = self._params[name]
        pointer = param.data.untyped_storage().data_ptr()
        if self._gathered.get(pointer) == name:
            del self._gathered[pointer]
        param.data = self._placeholders[name]

    def _release_all(self) -> None:
        self._entered.clear()
        for unit in self.units:
            for name in self._unit_params[id(unit)]:
                self._release(name)
        self._backward_params.clear()
        self.cache.unpin_all()

    # -- page accesses -----------------------------------------------------------------------------------------
    def _needed_version(self, page: int, phase: str, step: int) -> int:
        if self._mode == "inference":
            return self._infer_version
        if phase == BACKWARD and step == self._step and page in self._fwd_version:
            return self._fwd_version[page]
        return max(0, step - self.config.staleness)

    def _access(self, page: int, pin: bool) -> torch.Tensor:
        need = self._needed_version(page, self._phase, self._step)
        data, version = self.cache.get(page, need, pin=pin)
        if self._mode == "train":
            if self._phase == FORWARD:
                self._fwd_version.setdefault(page, version)
            elif version != self._fwd_version.get(page, version):
                self.version_skew += 1  # delayed updates: backward reads a newer version than forward did
            self.last_trace.record(page, self._phase, self.activations.stats.bytes)
            if self._cursor is not None:
                self._cursor.advance(page, self._phase)
                self._schedule()
        return data

    def _schedule(self) -> None:
        """Prefetch along the trace from the cursor, in order of need, while fetch slots and room last."""
        if self._cursor is None or self._mode != "train":
            return
        trace, start = self.trace, self._cursor.position
        length = len(trace)
        for j in range(start, start + length):
            step, i = self._step + j // length, j % length
            if self._last_step is not None and step > self._last_step:
                return
            page, phase = trace.pages[i], trace.phases[i]
            need = self._needed_version(page, phase, step)
            resident, fetching = self.cache.resident_version(page), self.cache.fetching_version(page)
            if (resident is not None and resident >= need) or (fetching is not None and fetching >= need):
                continue
            if need > self._step and page not in self.grads.pushed:
                return  # that version needs our gradient of this step first
            if not self.cache.prefetch(page, need, use_position=j):
                return

    # AccessHistory, for the eviction policy
    def next_use(self, page: int) -> int:
        if self._cursor is None:
            return NEVER
        position = self.trace.next_use(page, self._cursor.position)
        step, i = divmod(position, len(self.trace))
        if step:
            resident = self.cache.resident_version(page)
            need = self._needed_version(page, self.trace.phases[i], self._step + step)
            if resident is None or resident < need:
                return NEVER  # its next use needs a newer version: this copy is dead weight
        return position

    def last_use(self, page: int) -> int:
        return self.cache.last_use(page)

    def _prefetch_next_unit(self, unit: nn.Module) -> None:
        index = next(i for i, u in enumerate(self.units) if u is unit)
        for later in self.units[index + 1:index + 2]:
            for page in self._unit_pages[id(later)]:
                resident = self.cache.resident_version(page)
                if (resident is None or resident < self._infer_version) and self.cache.fetching_version(page) is None:
                    if not self.cache.prefetch(page, self._infer_version, use_position=None):
                        return

    # -- autograd hooks ----------------------------------------------------------------------------------------
    def saved_ref(self, t: torch.Tensor) -> _PageRef | _ParamRef | None:
        """A saved tensor that views a weight, as a reference to its page (or gathered parameter); None for
        anything else. The cache maps only tensors it holds, so a pointer it knows is not freed (reused) memory."""
        if t.layout != torch.strided or t.device.type == "meta":
            return None
        page = self.cache.page_of(t)
        if page is not None:
            return _PageRef(page, tuple(t.size()), tuple(t.stride()), t.storage_offset())
        name = self._gathered.get(t.untyped_storage().data_ptr())
        if name is not None:
            base = self._params[name].data
            return _ParamRef(name, tuple(t.size()), tuple(t.stride()), t.storage_offset() - base.storage_offset())
        return None

    def unpack_ref(self, saved: _PageRef | _ParamRef) -> torch.Tensor:
        """A weight's tensor again, from its page at the version its forward read."""
        if self._mode == "train":
            self._phase = BACKWARD
        if isinstance(saved, _PageRef):
            page = self._access(saved.page, pin=False)
            return page.as_strided(saved.size, saved.stride, saved.offset)
        value = self._backward_params.get(saved.name)
        if value is None:
            placement = self._placement[saved.name]
            pages = {p: self._access(p, pin=False) for p in placement.pages}
            value = self._backward_params[saved.name] = torch.cat(
                [pages[s.page][s.page_offset:s.page_offset + s.numel] for s in placement.segments])
        return value.as_strided(saved.size, saved.stride, value.storage_offset() + saved.offset)

    @contextmanager
    def unit_weights(self, unit: nn.Module) -> Iterator[None]:
        """A layer's weights in its parameters while a backward recomputes part of its forward (MEMO)."""
        self._enter(unit, ())
        try:
            yield
        finally:
            self._exit(unit, (), None)

    def install_activation_plan(self, plan: ActivationPlan) -> None:
        """Place later steps' saved activations at the plan's offsets in one buffer (worker/paged/activations.py)."""
        self.activations.install(plan)

    def _pack(self, t: torch.Tensor) -> Any:
        ref = self.saved_ref(t)
        if ref is not None:
            return ref
        if t.layout != torch.strided or t.device.type == "meta":
            return t
        return self.activations.pack(t)

    def _unpack(self, saved: Any) -> torch.Tensor:
        if isinstance(saved, SavedTensor):
            return saved.tensor
        if isinstance(saved, (_PageRef, _ParamRef)):
            return self.unpack_ref(saved)
        return saved

    def _grad_ready(self, param: torch.Tensor) -> None:
        name = self._param_name[id(param)]
        if self._mode != "train":
            raise RuntimeError(f"paged model {self.name!r}: a gradient of {name!r} arrived outside paged.step()")
        self._phase = BACKWARD
        grad = param.grad
        param.grad = None
        self._backward_params.pop(name, None)
        self.grads.add(name, grad)


def _declared_units(model: nn.Module) -> list[nn.Module]:
    units = getattr(model, "paged_units", None)
    if units is None:
        raise InvalidArgument(f"{type(model).__name__} does not declare its layers: pass units=[...] in forward "
                              f"order, or give the model a paged_units() method")
    return list(units())


def _unit_parameters(model: nn.Module, units: list[nn.Module]) -> tuple[dict[int, list[str]], list[str]]:
    """Each unit's parameter names (a tied parameter in every unit that uses it), and every parameter once, in
    the units' order (the packing order)."""
    names = {id(p): n for n, p in model.named_parameters()}
    per_unit: dict[int, list[str]] = {}
    order: list[str] = []
    for unit in units:
        if id(unit) in per_unit:
            raise InvalidArgument(f"unit {type(unit).__name__} is listed twice")
        per_unit[id(unit)] = [names[id(p)] for p in unit.parameters()]
        order.extend(n for n in per_unit[id(unit)] if n not in order)
    missing = [n for n in names.values() if n not in order]
    if missing:
        raise InvalidArgument(f"parameters {missing} belong to no unit; every parameter must be in a listed layer")
    for a in units:
        for b in units:
            if a is not b and any(m is b for m in a.modules()):
                raise InvalidArgument(f"unit {type(b).__name__} is inside unit {type(a).__name__}; units must not nest")
    return per_unit, order


def _rehome_parameters(model: nn.Module, placeholders: dict[str, torch.Tensor]) -> None:
    """Give every parameter its placeholder as data: in place where the device allows it, else (a model built on
    the meta device) as a new Parameter put wherever the old one was registered, tied ones included."""
    replaced: dict[int, nn.Parameter] = {}
    for name, param in model.named_parameters():
        try:
            param.data = placeholders[name]
        except RuntimeError:  # meta -> cpu/cuda: set_data refuses a tensor of another device type
            replaced[id(param)] = nn.Parameter(placeholders[name], requires_grad=param.requires_grad)
    if replaced:
        for module in model.modules():
            for key, param in list(module._parameters.items()):
                if param is not None and id(param) in replaced:
                    module._parameters[key] = replaced[id(param)]


def _placeholder(param: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A tensor of the parameter's shape backed by one element: what the parameter holds between its uses."""
    return torch.zeros(1, dtype=dtype, device=device).expand(param.shape)
