"""The paged step runtime on real PS processes: the same math as plain PyTorch step for step, a working set within
its budget, the recorded trace followed exactly, data-parallel workers whose gradients the PS sums, and errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from seraphim.algorithms.transformer.model import PRESETS, TransformerConfig, build_model
from seraphim.proto.errors import InvalidArgument
from seraphim.scheduler.local_cluster import LocalCluster, PSProcessSpec
from seraphim.worker.client import PSClient
from seraphim.worker.paged import PagedModel, PagingConfig
from seraphim.worker.paged.layout import PageLayout, row_shape
from seraphim.worker.specs import AdamW

LR, WD = 3e-3, 0.1
PAGE = 16 << 10  # small pages: the embedding spans several of them (the gathered path)


@pytest.fixture(scope="module")
def ps_shards(tmp_path_factory):
    """Two PS shards whose 1 MiB RAM budgets are smaller than a model's states (pages spill to LMDB); clocks for two
    workers that never wait (page versions order the updates), so one-worker tests tick them alone."""
    spec = PSProcessSpec(num_ps=2, num_workers=2, staleness=-1, ram_mb=1, page_kb=64)
    with LocalCluster(tmp_path_factory.mktemp("paged"), spec) as cluster:
        yield cluster


def _config(**overrides) -> TransformerConfig:
    return TransformerConfig(**{**PRESETS["lm-tiny"], **overrides})


def _paged(ps: PSClient, config: TransformerConfig, name: str, rank: int = 0, world: int = 1, **paging):
    model = build_model(config, seed=3, device="meta")
    paged = PagedModel(ps, model, name=name, optimizer=AdamW(lr=LR, beta1=0.9, beta2=0.95, weight_decay=WD),
                       config=PagingConfig(page_bytes=PAGE, ps_page_bytes=64 << 10, wait_s=60, **paging),
                       init=model.init_tensor, rank=rank, world_size=world)
    return model, paged


def _reference(config: TransformerConfig):
    model = build_model(config, seed=3)
    return model, torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=WD)


def _batches(config: TransformerConfig, steps: int, rows: int = 4, seq: int = 24) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return [torch.randint(0, config.vocab_size, (rows, seq + 1), generator=g) for _ in range(steps)]


def _schedule(step: int) -> float:
    return min(1.0, (step + 1) / 3)


def test_a_paged_lm_trains_exactly_as_plain_pytorch_within_its_page_budget(ps_shards):
    config = _config()
    batches = _batches(config, 5)
    ref, opt = _reference(config)
    with PSClient(ps_shards.addresses) as ps:
        model, paged = _paged(ps, config, "exact")
        try:
            model_bytes = paged.layout.n_pages * PAGE
            assert paged.budget_bytes < model_bytes and paged.layout.n_pages > 20
            for step, batch in enumerate(batches):
                with paged.step(step, lr_scale=_schedule(step), last_step=len(batches) - 1):
                    loss = model(batch[:, :-1], batch[:, 1:])
                    loss.backward()
                ps.clock()
                for group in opt.param_groups:
                    group["lr"] = LR * _schedule(step)
                opt.zero_grad()
                expected = ref(batch[:, :-1], batch[:, 1:])
                expected.backward()
                opt.step()
                assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
                if step >= 2:  # every later step walks the first step's trace, access for access
                    assert paged.last_trace.pages == paged.trace.pages
                    assert paged.last_trace.phases == paged.trace.phases
            report = paged.report()
            assert report.max_resident_bytes <= paged.budget_bytes
            assert report.trace_misses == 0 and report.prefetch_hits > report.demand_fetches
            assert paged.version_skew == 0
            trained = dict(paged.named_tensors())
            for name, param in ref.named_parameters():
                np.testing.assert_allclose(trained[name].numpy(), param.detach().numpy(), rtol=1e-5, atol=1e-6)
        finally:
            paged.close()


def test_two_workers_gradients_are_summed_on_the_ps_as_one_global_batch(ps_shards):
    config = _config(tie_embeddings=True)
    batches = _batches(config, 3, rows=4)
    ref, opt = _reference(config)
    losses: dict[int, list[float]] = {0: [], 1: []}
    errors: list[BaseException] = []
    ready = threading.Event()

    def worker(rank: int) -> None:
        try:
            with PSClient(ps_shards.addresses, worker_id=rank, num_workers=2) as ps:
                if rank == 1:
                    ready.wait(60)
                model, paged = _paged(ps, config, "dp", rank=rank, world=2, overlap=rank == 0)
                ready.set()
                try:
                    for step, batch in enumerate(batches):
                        rows = batch[rank::2]  # each worker's rows of the global batch
                        with paged.step(step, last_step=len(batches) - 1):
                            loss = model(rows[:, :-1], rows[:, 1:])
                            (loss / 2).backward()
                        ps.clock()
                        losses[rank].append(loss.item())
                finally:
                    paged.close()
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
            ready.set()

    threads = [threading.Thread(target=worker, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for step, batch in enumerate(batches):
        opt.zero_grad()
        halves = [ref(batch[r::2, :-1], batch[r::2, 1:]) for r in (0, 1)]
        assert [losses[0][step], losses[1][step]] == pytest.approx([h.item() for h in halves], rel=1e-5)
        ((halves[0] + halves[1]) / 2).backward()
        opt.step()


def test_a_budget_below_one_layer_and_use_outside_a_step_are_refused(ps_shards):
    config = _config()
    with PSClient(ps_shards.addresses) as ps:
        with pytest.raises(InvalidArgument, match=r"page budget of 16384 bytes is smaller than one layer's pages"):
            _paged(ps, config, "tight", budget_bytes=PAGE)
        model, paged = _paged(ps, config, "misuse")
        try:
            tokens = torch.zeros(1, 4, dtype=torch.int64)
            with pytest.raises(RuntimeError, match="run the model inside one of them"):
                model(tokens)
            with pytest.raises(RuntimeError, match="ended without backward"):
                with paged.step(0):
                    model(tokens, tokens)
            with paged.inference(version=0):
                logits = model(tokens)
            assert logits.shape == (1, 4, config.vocab_size) and torch.isfinite(logits).all()
        finally:
            paged.close()


def test_a_layer_called_inside_unit_weights_gathers_its_weights_once(ps_shards):
    """MEMO measures a layer by calling it inside unit_weights(): the layer's own hooks must not gather its weights a
    second time, or the first gather's pointer outlives its memory, and an activation that lands there later would
    be saved as a reference to the weight."""
    config = _config()
    tokens = torch.arange(10).reshape(2, 5)
    with PSClient(ps_shards.addresses) as ps:
        model, paged = _paged(ps, config, "nested")
        try:
            embed = model.model.embed_tokens
            assert not paged.layout.placement("model.embed_tokens.weight").in_one_page
            with paged.inference(version=0), paged.unit_weights(embed):
                rows = embed(tokens)
                assert len(paged._gathered) == 1  # the one gather of the embedding, in use
            assert not paged._gathered
            torch.testing.assert_close(rows, _reference(config)[0].model.embed_tokens(tokens), rtol=0, atol=0)
        finally:
            paged.close()


class _PairOfLayers(torch.nn.Module):
    """`used` and `skip` share a page; `skip` takes part (and gets a gradient) only when asked."""

    def __init__(self) -> None:
        super().__init__()
        self.used, self.skip = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

    def forward(self, h: torch.Tensor, with_skip: bool) -> torch.Tensor:
        return self.used(h) + self.skip(h) if with_skip else self.used(h)


class _SometimesUnused(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = torch.nn.Linear(8, 8), _PairOfLayers()

    def paged_units(self):
        return [self.first, self.second]

    def forward(self, x: torch.Tensor, with_skip: bool) -> torch.Tensor:
        return self.second(torch.tanh(self.first(x)), with_skip).square().mean()


def test_a_tensor_without_a_gradient_this_step_pushes_zeros_beside_its_page_neighbours(ps_shards):
    """Gradient page buffers are reused from step to step: what a tensor without a gradient leaves in its part of
    the page must be zeros (AdamW of a zero gradient), never a gradient of an earlier page or step."""
    torch.manual_seed(5)
    ref = _SometimesUnused()
    initial = {n: p.detach().clone() for n, p in ref.named_parameters()}
    opt = torch.optim.AdamW(ref.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=WD)
    inputs = [torch.randn(4, 8, generator=torch.Generator().manual_seed(step)) for step in range(4)]
    with PSClient(ps_shards.addresses) as ps:
        model = _SometimesUnused()
        model.load_state_dict(initial)
        paged = PagedModel(ps, model, name="sometimes", optimizer=AdamW(lr=LR, beta1=0.9, beta2=0.95, weight_decay=WD),
                           config=PagingConfig(page_bytes=4096, ps_page_bytes=64 << 10, wait_s=60))
        try:
            assert paged.layout.pages_of(["second.used.weight"]) == paged.layout.pages_of(["second.skip.weight"])
            for step, x in enumerate(inputs):
                with paged.step(step, last_step=len(inputs) - 1):
                    model(x, with_skip=step % 2 == 0).backward()
                ps.clock()
                opt.zero_grad(set_to_none=True)
                ref(x, with_skip=step % 2 == 0).backward()
                for p in ref.parameters():
                    if p.grad is None:  # the PS applies AdamW to a zero gradient
                        p.grad = torch.zeros_like(p)
                opt.step()
            for name, value in paged.named_tensors():
                torch.testing.assert_close(value, dict(ref.named_parameters())[name].detach(), rtol=1e-5, atol=1e-6)
        finally:
            paged.close()


def test_a_frozen_layer_keeps_its_weights_under_weight_decay_and_pages_of_its_own(ps_shards):
    """A frozen tensor (a frozen text encoder) never shares a page with a trainable one; its pages send no gradient
    bytes and sit at a learning rate of 0 on the PS, so weight decay does not reach it (torch's AdamW skips a
    parameter without a gradient)."""
    torch.manual_seed(6)
    ref = _SometimesUnused()
    ref.first.requires_grad_(False)
    initial = {n: p.detach().clone() for n, p in ref.named_parameters()}
    opt = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=LR, betas=(0.9, 0.95),
                            weight_decay=WD)
    inputs = [torch.randn(4, 8, generator=torch.Generator().manual_seed(10 + step)) for step in range(3)]
    with PSClient(ps_shards.addresses) as ps:
        model = _SometimesUnused()
        model.load_state_dict(initial)
        model.first.requires_grad_(False)
        paged = PagedModel(ps, model, name="frozen", optimizer=AdamW(lr=LR, beta1=0.9, beta2=0.95, weight_decay=WD),
                           config=PagingConfig(page_bytes=4096, ps_page_bytes=64 << 10, wait_s=60))
        try:
            frozen_pages = set(paged.layout.pages_of(["first.weight", "first.bias"]))
            assert not frozen_pages & set(paged.layout.pages_of(["second.used.weight", "second.skip.weight"]))
            for step, x in enumerate(inputs):
                with paged.step(step, last_step=len(inputs) - 1):
                    model(x, with_skip=True).backward()
                ps.clock()
                opt.zero_grad(set_to_none=True)
                ref(x, with_skip=True).backward()
                opt.step()
            assert paged.grads.pushed_bytes == 3 * (paged.layout.n_pages - len(frozen_pages)) * 4096
            trained = dict(paged.named_tensors())
            for name in ("first.weight", "first.bias"):
                assert torch.equal(trained[name], initial[name])
            for name, value in trained.items():
                torch.testing.assert_close(value, dict(ref.named_parameters())[name].detach(), rtol=1e-5, atol=1e-6)
        finally:
            paged.close()


def test_pages_pack_small_tensors_whole_and_rows_fill_the_ps_pages():
    layout = PageLayout.pack([("a", (10,)), ("b", (7,)), ("c", (30,)), ("d", (3,))], page_numel=16)
    assert [t.pages for t in layout.tensors] == [(0,), (1,), (1, 2, 3), (3,)]
    assert layout.placement("b").segments[0].page_offset == 0  # b does not fit after a: next page, whole
    assert layout.placement("c").segments[0].page_offset == 7  # a big tensor starts where the cursor is
    assert layout.n_pages == 4 and layout.numel == 50
    frozen = PageLayout.pack([("a", (10,)), ("f", (3,)), ("g", (20,)), ("b", (2,))], page_numel=16, frozen={"f", "g"})
    assert [t.pages for t in frozen.tensors] == [(0,), (1,), (1, 2), (3,)]  # frozen and trainable never share a page
    rows = row_shape(page_numel=262144, ps_page_bytes=256 << 10)
    assert rows.rows_per_page * rows.row_dim == 262144
    assert (256 << 10) // rows.row_bytes() * rows.row_bytes() >= 0.97 * (256 << 10)
    with pytest.raises(ValueError, match="raise storage.page_kb"):
        row_shape(page_numel=1024, ps_page_bytes=8)
