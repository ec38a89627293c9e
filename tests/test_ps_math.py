"""PS math: row layouts, initializers, optimizers (against torch.optim) and PS functions merged on the client."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
import torch

from seraphim.ps import psf
from seraphim.ps.initializers import (
    Constant,
    Normal,
    TruncatedNormal,
    Uniform,
    Zeros,
    initializer_from_spec,
    initializer_to_spec,
)
from seraphim.ps.optimizers import SGD, Adagrad, Adam, AdamW, optimizer_from_spec, optimizer_to_spec
from seraphim.ps.row_layout import RowLayout, from_bfloat16_bits, to_bfloat16_bits
from seraphim.worker.psf_merge import MERGES as CLIENT_MERGES
from seraphim.worker.psf_merge import merge_partials

# ---------------------------------------------------------------- optimizers vs torch.optim

# (ours, torch constructor taking (params, lr)); ours carries the same base lr.
OPT_CASES: dict[str, tuple[object, Callable]] = {
    "sgd": (SGD(lr=0.1), lambda p, lr: torch.optim.SGD(p, lr=lr)),
    "sgd_momentum_wd": (SGD(lr=0.05, momentum=0.9, weight_decay=0.01),
                        lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=0.01)),
    "sgd_nesterov": (SGD(lr=0.05, momentum=0.8, nesterov=True),
                     lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.8, nesterov=True)),
    "adagrad_torch_default": (Adagrad(lr=0.1, initial_accumulator=0.0),
                              lambda p, lr: torch.optim.Adagrad(p, lr=lr)),
    "adagrad_init_wd": (Adagrad(lr=0.1, weight_decay=0.02),
                        lambda p, lr: torch.optim.Adagrad(p, lr=lr, initial_accumulator_value=0.1, weight_decay=0.02)),
    "adam": (Adam(lr=0.01), lambda p, lr: torch.optim.Adam(p, lr=lr)),
    "adam_l2_betas": (Adam(lr=0.01, beta1=0.6, beta2=0.99, eps=1e-6, weight_decay=0.05),
                      lambda p, lr: torch.optim.Adam(p, lr=lr, betas=(0.6, 0.99), eps=1e-6, weight_decay=0.05)),
    "adam_amsgrad": (Adam(lr=0.01, amsgrad=True), lambda p, lr: torch.optim.Adam(p, lr=lr, amsgrad=True)),
    "adamw": (AdamW(lr=0.01, weight_decay=0.1), lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=0.1)),
}
RTOL = ATOL = 1e-6  # weights are O(1); differences seen are 1-2 float32 ulps (torch's vector kernels fuse multiply-adds)


def _grads(rng: np.random.Generator, steps: int, n: int, dim: int) -> list[np.ndarray]:
    # Grads of varied scale per row, so Adam's and Adagrad's per-element normalisation matters.
    return [(rng.standard_normal((n, dim)) * rng.uniform(0.01, 3.0, (n, 1))).astype(np.float32) for _ in range(steps)]


@pytest.mark.parametrize("case", sorted(OPT_CASES))
def test_optimizer_matches_torch_dense_with_row_scales(case: str) -> None:
    ours, make_torch = OPT_CASES[case]
    rng = np.random.default_rng(1)
    n, dim, half = 24, 12, 10
    w0 = rng.standard_normal((n, dim)).astype(np.float32)
    grads = _grads(rng, 5, n, dim)

    # lr_scale == 1: one torch parameter holding the whole matrix.
    w = w0.copy()
    state = np.zeros((n, ours.state_cols(dim)), np.float32)
    for g in grads:
        ours.apply(w, state, g, np.ones(n, np.float32))
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = make_torch([p], ours.lr)
    for g in grads:
        p.grad = torch.from_numpy(g.copy())
        opt.step()
    np.testing.assert_allclose(w, p.detach().numpy(), rtol=RTOL, atol=ATOL)
    assert not np.allclose(w, w0, atol=1e-4)

    # Row-group learning-rate scales (0.5 and 3.0) against torch param groups with the scaled lr.
    scale = np.where(np.arange(n) < half, 0.5, 3.0).astype(np.float32)
    w = w0.copy()
    state = np.zeros((n, ours.state_cols(dim)), np.float32)
    for g in grads:
        ours.apply(w, state, g, scale)
    pa, pb = (torch.nn.Parameter(torch.from_numpy(w0[s].copy())) for s in (slice(0, half), slice(half, n)))
    opt = make_torch([{"params": [pa], "lr": ours.lr * 0.5}, {"params": [pb], "lr": ours.lr * 3.0}], ours.lr)
    for g in grads:
        pa.grad, pb.grad = torch.from_numpy(g[:half].copy()), torch.from_numpy(g[half:].copy())
        opt.step()
    np.testing.assert_allclose(w, np.concatenate([pa.detach().numpy(), pb.detach().numpy()]), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case", ["sgd_momentum_wd", "adagrad_init_wd", "adam_amsgrad", "adamw"])
def test_optimizer_sparse_touches_through_row_layout(case: str) -> None:
    """Rows live packed as [weights | state]; each step touches a random subset. Untouched rows keep every byte,
    and each row equals a torch parameter that was stepped only when touched (its own Adam step count)."""
    ours, make_torch = OPT_CASES[case]
    rng = np.random.default_rng(2)
    n, dim = 16, 5
    layout = RowLayout("float32", dim, ours.state_cols(dim))
    w0 = rng.standard_normal((n, dim)).astype(np.float32)
    rows = layout.pack(w0, None)
    params = [torch.nn.Parameter(torch.from_numpy(w0[i].copy())) for i in range(n)]
    ref = make_torch(params, ours.lr)
    touches = np.zeros(n, int)
    for _ in range(6):
        idx = np.sort(rng.choice(n, size=rng.integers(3, 9), replace=False))
        g = _grads(rng, 1, len(idx), dim)[0]
        before = rows.copy()
        touched = rows[idx]
        weights, state = layout.weights_f32(touched), layout.state(touched)
        ours.apply(weights, state, g, np.ones(len(idx), np.float32))
        rows[idx] = layout.pack(weights, state)
        untouched = np.setdiff1d(np.arange(n), idx)
        np.testing.assert_array_equal(rows[untouched], before[untouched])
        for i, p in enumerate(params):
            p.grad = None
        for j, i in enumerate(idx):
            params[i].grad = torch.from_numpy(g[j].copy())
        ref.step()
        touches[idx] += 1
    expected = np.stack([p.detach().numpy() for p in params])
    np.testing.assert_allclose(layout.weights_f32(rows), expected, rtol=RTOL, atol=ATOL)
    if isinstance(ours, (Adam, AdamW)):
        np.testing.assert_array_equal(layout.state(rows)[:, -1], touches)


def test_optimizer_apply_validates_arrays() -> None:
    opt = Adam(lr=0.1)
    w = np.zeros((3, 4), np.float32)
    g = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"state must be \[3, 9\]"):
        opt.apply(w, np.zeros((3, 8), np.float32), g, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="grads must be a float32"):
        opt.apply(w, np.zeros((3, 9), np.float32), g.astype(np.float64), np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"lr_scale must be \[3\]"):
        opt.apply(w, np.zeros((3, 9), np.float32), g, np.ones(2, np.float32))


# ---------------------------------------------------------------- row layouts


def test_bfloat16_rounding_matches_torch() -> None:
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)
    ties = (rng.integers(0x0080, 0x7F00, 200, dtype=np.uint32) << 16) | np.uint32(0x8000)  # exact halfway, odd+even
    specials = np.array([0.0, -0.0, np.inf, -np.inf, 3.4028235e38, 1e-40, -1e-40, 1e-45, 1.0 + 2**-8, 1.0 + 3 * 2**-8],
                        np.float32)
    x = np.concatenate([bits.view(np.float32), ties.view(np.float32), specials])
    x_finite = x[~np.isnan(x)]
    ours = to_bfloat16_bits(x_finite)
    theirs = torch.from_numpy(x_finite).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, theirs)
    assert np.isnan(from_bfloat16_bits(to_bfloat16_bits(x[np.isnan(x)]))).all()
    back = from_bfloat16_bits(ours)
    np.testing.assert_array_equal(back, torch.from_numpy(ours.view(np.int16)).view(torch.bfloat16).float().numpy())
    assert to_bfloat16_bits(np.float32([1.0 + 2**-8]))[0] == 0x3F80  # tie to even (down)
    assert to_bfloat16_bits(np.float32([1.0 + 3 * 2**-8]))[0] == 0x3F82  # tie to even (up)


@pytest.mark.parametrize("dtype,torch_dtype", [("float32", torch.float32), ("float16", torch.float16),
                                               ("bfloat16", torch.bfloat16)])
def test_float_layouts_round_trip(dtype: str, torch_dtype: torch.dtype) -> None:
    rng = np.random.default_rng(4)
    dim, state_cols = 5, 3
    layout = RowLayout(dtype, dim, state_cols)
    assert layout.row_bytes % 4 == 0 and layout.state_offset % 4 == 0
    w = rng.standard_normal((7, dim)).astype(np.float32)
    s = rng.standard_normal((7, state_cols)).astype(np.float32)
    rows = layout.pack(w, s)
    assert rows.dtype == np.uint8 and rows.shape == (7, layout.row_bytes)
    expected = torch.from_numpy(w).to(torch_dtype).float().numpy()
    np.testing.assert_array_equal(layout.weights_f32(rows), expected)
    np.testing.assert_array_equal(layout.state(rows), s)
    # state() is a view: writes land in the rows
    layout.state(rows)[2, 1] = 42.0
    assert layout.state(rows)[2, 1] == 42.0
    raw = layout.weights_raw(rows)
    assert raw.dtype == layout.wire_dtype and raw.shape == (7, dim) and raw.flags.c_contiguous
    round_trip = layout.from_raw(raw)
    np.testing.assert_array_equal(layout.weights_f32(round_trip), expected)
    np.testing.assert_array_equal(layout.state(round_trip), 0.0)
    np.testing.assert_array_equal(layout.state(layout.pack(w, None)), 0.0)


def test_half_precision_padding_keeps_state_aligned() -> None:
    assert RowLayout("float16", 3, 2).row_bytes == 8 + 8  # 6 bytes of weights padded to 8
    assert RowLayout("bfloat16", 3, 0).row_bytes == 6  # no state: no padding
    assert RowLayout("float32", 3, 7).row_bytes == 12 + 28


def test_int64_and_bytes_layouts() -> None:
    ints = np.array([[0, -1, 2**62], [7, 2**40, -(2**63)]], np.int64)
    layout = RowLayout("int64", 3)
    rows = layout.pack(ints, None)
    assert layout.row_bytes == 24
    np.testing.assert_array_equal(layout.weights_raw(rows), ints)
    np.testing.assert_array_equal(layout.from_raw(ints), rows)
    with pytest.raises(ValueError, match="weights_f32 needs a float table dtype"):
        layout.weights_f32(rows)
    with pytest.raises(ValueError, match="must be integers"):
        layout.pack(ints.astype(np.float32), None)

    blobs = np.random.default_rng(5).integers(0, 256, (4, 33), dtype=np.uint8)
    layout = RowLayout("bytes", 33)
    rows = layout.pack(blobs, None)
    assert layout.row_bytes == 33
    np.testing.assert_array_equal(layout.weights_raw(rows), blobs)
    np.testing.assert_array_equal(layout.from_raw(blobs), rows)


def test_layout_validation_messages() -> None:
    with pytest.raises(ValueError, match=r"unknown table dtype 'float64'; allowed: \['float32', 'float16'"):
        RowLayout("float64", 4)
    with pytest.raises(ValueError, match="dim must be a positive integer; got 0"):
        RowLayout("float32", 0)
    with pytest.raises(ValueError, match="int64 table cannot hold optimizer state"):
        RowLayout("int64", 4, 2)
    with pytest.raises(ValueError, match="bytes table cannot hold optimizer state"):
        RowLayout("bytes", 4, 1)
    layout = RowLayout("float32", 4, 1)
    with pytest.raises(ValueError, match=r"rows must be uint8 \[n, 20\]"):
        layout.weights_f32(np.zeros((2, 16), np.uint8))
    with pytest.raises(ValueError, match=r"weights must be \[n, 4\]"):
        layout.pack(np.zeros((2, 3), np.float32), None)
    with pytest.raises(ValueError, match=r"state must be float32 \[2, 1\]"):
        layout.pack(np.zeros((2, 4), np.float32), np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"raw weights of a bfloat16 table must be uint16 \[n, 4\]; got float32"):
        RowLayout("bfloat16", 4).from_raw(np.zeros((1, 4), np.float32))


# ---------------------------------------------------------------- PS functions


class FakePartition:
    """One table's partition on one fake PS, over numpy arrays (stands in for paged storage)."""

    def __init__(self, shard: dict[str, FakePartition], name: str, keys: np.ndarray, weights: np.ndarray,
                 kind: str, dtype: str = "float32", chunk: int = 4) -> None:
        self.shard, self.name, self.kind, self.dtype, self.chunk = shard, name, kind, dtype, chunk
        self.keys, self.weights, self.dim = keys.copy(), weights.copy(), weights.shape[1]
        self.index = {int(k): i for i, k in enumerate(keys)}
        shard[name] = self

    def scan(self):
        for s in range(0, len(self.keys), self.chunk):
            yield self.keys[s:s + self.chunk].copy(), self.weights[s:s + self.chunk].copy()

    def update_all(self, fn) -> None:
        for s in range(0, len(self.keys), self.chunk):
            new = fn(self.keys[s:s + self.chunk].copy(), self.weights[s:s + self.chunk].copy())
            assert new.shape == self.weights[s:s + self.chunk].shape and new.dtype == np.float32
            self.weights[s:s + self.chunk] = new

    def read(self, keys: np.ndarray) -> np.ndarray:
        out = np.zeros((len(keys), self.dim), np.float32)
        for j, k in enumerate(keys):  # test fake: a dict lookup per key is fine here
            if int(k) in self.index:
                out[j] = self.weights[self.index[int(k)]]
        return out

    def other(self, table: str) -> FakePartition:
        return self.shard[table]


def _table(keys: np.ndarray, weights: np.ndarray) -> dict[int, np.ndarray]:
    return {int(k): w for k, w in zip(keys, weights)}


class Cluster:
    """Tables A and B hash-partitioned by key % 3 (sparse) or in row ranges (dense) over three fake PS shards."""

    def __init__(self, kind: str, seed: int = 6) -> None:
        rng = np.random.default_rng(seed)
        n, dim = 37, 6
        if kind == "sparse":
            self.keys_a = rng.choice(10**12, n, replace=False).astype(np.int64)
            self.keys_b = np.concatenate([self.keys_a[::2], rng.choice(10**12, 9, replace=False)]).astype(np.int64)
            part = lambda keys: keys % 3  # noqa: E731
        else:
            self.keys_a = self.keys_b = np.arange(n, dtype=np.int64)
            part = lambda keys: np.minimum(keys // 13, 2)  # noqa: E731
        self.a = rng.standard_normal((n, dim)).astype(np.float32)
        self.a[rng.random((n, dim)) < 0.2] = 0.0
        self.b = rng.standard_normal((len(self.keys_b), dim)).astype(np.float32)
        self.shards: list[dict[str, FakePartition]] = [{} for _ in range(3)]
        for p, shard in enumerate(self.shards):
            ma, mb = part(self.keys_a) == p, part(self.keys_b) == p
            FakePartition(shard, "A", self.keys_a[ma], self.a[ma], kind)
            FakePartition(shard, "B", self.keys_b[mb], self.b[mb], kind)
        b_by_key = _table(self.keys_b, self.b)
        self.b_on_a = np.stack([b_by_key.get(int(k), np.zeros(dim, np.float32)) for k in self.keys_a])

    def call(self, name: str, args: dict, tensors: list[np.ndarray] | None = None, table: str = "A") -> list[np.ndarray]:
        results = [psf.run_psf(name, shard[table], args, tensors or []) for shard in self.shards]
        assert len({r.merge for r in results}) == 1
        return merge_partials(results[0].merge, [r.tensors for r in results], args)

    def weights_a(self) -> np.ndarray:
        """Table A gathered from all shards, in the order of keys_a."""
        merged = {}
        for shard in self.shards:
            merged.update(_table(shard["A"].keys, shard["A"].weights))
        return np.stack([merged[int(k)] for k in self.keys_a])


@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_reduction_psfs_match_numpy(kind: str) -> None:
    c = Cluster(kind)
    a64 = c.a.astype(np.float64)
    expected = {
        "sum": (a64.sum(), a64.sum(0)),
        "max": (a64.max(), a64.max(0)),
        "min": (a64.min(), a64.min(0)),
        "norm": (np.sqrt((a64**2).sum()), np.sqrt((a64**2).sum(0))),
        "nnz": (np.count_nonzero(c.a), np.count_nonzero(c.a, axis=0)),
    }
    for name, (whole, per_col) in expected.items():
        got_whole, got_col = c.call(name, {})
        assert got_whole.shape == () and got_col.shape == (6,)
        np.testing.assert_allclose(got_whole, whole, rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(got_col, per_col, rtol=1e-12, err_msg=name)
    assert c.call("nnz", {})[0].dtype == np.int64
    dot_whole, dot_col = c.call("dot", {"other": "B"})
    prod = a64 * c.b_on_a.astype(np.float64)
    np.testing.assert_allclose(dot_whole, prod.sum(), rtol=1e-12)
    np.testing.assert_allclose(dot_col, prod.sum(0), rtol=1e-12)


@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_topk_psf_matches_numpy(kind: str) -> None:
    c = Cluster(kind)
    norms = np.linalg.norm(c.a.astype(np.float64), axis=1)
    keys, scores = c.call("topk", {"k": 5, "by": "norm"})
    order = np.argsort(-norms)[:5]
    np.testing.assert_array_equal(keys, c.keys_a[order])
    np.testing.assert_allclose(scores, norms[order], rtol=1e-12)
    keys, scores = c.call("topk", {"k": 3.0, "by": "col:2"})  # integral floats are accepted for k
    order = np.argsort(-c.a[:, 2])[:3]
    np.testing.assert_array_equal(keys, c.keys_a[order])
    keys, _ = c.call("topk", {"k": 100})
    assert sorted(keys.tolist()) == sorted(c.keys_a.tolist())
    keys, _ = c.call("topk", {"k": "3", "by": "col:2"})  # args as text, the way they travel on the wire
    np.testing.assert_array_equal(keys, c.keys_a[order])


def test_topk_ties_are_broken_by_key_whatever_the_partitioning() -> None:
    c = Cluster("sparse")
    for shard in c.shards:
        shard["A"].weights[:] = 1.0  # every row ties
    keys, scores = c.call("topk", {"k": 4})
    np.testing.assert_array_equal(keys, np.sort(c.keys_a)[:4])
    np.testing.assert_allclose(scores, np.sqrt(6.0))


@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_update_psfs_match_numpy(kind: str) -> None:
    c = Cluster(kind)
    assert c.call("axpy", {"a": -0.5, "other": "B"}) == []
    expected = c.a - np.float32(0.5) * c.b_on_a
    np.testing.assert_allclose(c.weights_a(), expected, rtol=1e-6)
    c.call("scale", {"a": "3"})  # text, as on the wire
    np.testing.assert_allclose(c.weights_a(), expected * 3, rtol=1e-6)
    c.call("copy", {"other": "B"})
    np.testing.assert_array_equal(c.weights_a(), c.b_on_a)  # keys absent from B became zeros
    c.call("fill", {"value": 0.25})
    np.testing.assert_array_equal(c.weights_a(), np.full_like(c.a, 0.25))


def test_user_registered_psf() -> None:
    @psf.register_psf("test.row_dot", "concat", params=())
    def row_dot(view, args, tensors):
        keys, vals = [], []
        for k, w in view.scan():
            keys.append(k)
            vals.append(w @ tensors[0])
        return [np.concatenate(keys), np.concatenate(vals)]

    assert "test.row_dot" in psf.registered_psfs()
    c = Cluster("sparse")
    x = np.arange(6, dtype=np.float32)
    keys, vals = c.call("test.row_dot", {}, [x])
    got = dict(zip(keys.tolist(), vals.tolist()))
    assert sorted(got) == sorted(c.keys_a.tolist())
    np.testing.assert_allclose([got[int(k)] for k in c.keys_a], c.a @ x, rtol=1e-5)
    with pytest.raises(ValueError, match="already registered"):
        psf.register_psf("test.row_dot", "concat")(row_dot)
    with pytest.raises(ValueError, match=r"unknown merge 'avg'; allowed: \['sum', 'max'"):
        psf.register_psf("test.avg", "avg")


def test_psf_errors_name_the_problem() -> None:
    c = Cluster("sparse")
    view = c.shards[0]["A"]
    with pytest.raises(KeyError, match=r"unknown PSF 'nrm2'; registered: \[.*'norm'"):
        psf.run_psf("nrm2", view, {}, [])
    with pytest.raises(ValueError, match=r"PSF 'topk': arg 'k' must be an integer >= 1; got 0"):
        psf.run_psf("topk", view, {"k": 0}, [])
    with pytest.raises(ValueError, match=r"arg 'k' must be an integer >= 1; got '2.5'"):
        psf.run_psf("topk", view, {"k": "2.5"}, [])
    with pytest.raises(ValueError, match=r"arg 'a' must be a finite number; got 'inf'"):
        psf.run_psf("scale", view, {"a": "inf"}, [])
    with pytest.raises(ValueError, match=r"arg 'by' must be 'norm' or 'col:<j>' with 0 <= j < 6; got 'col:6'"):
        psf.run_psf("topk", view, {"k": 2, "by": "col:6"}, [])
    with pytest.raises(ValueError, match=r"PSF 'axpy': unknown arg\(s\) \['b'\]; allowed: \['a', 'other'\]"):
        psf.run_psf("axpy", view, {"b": 1.0, "other": "B"}, [])
    with pytest.raises(ValueError, match=r"PSF 'fill': arg 'value' must be a finite number; got None"):
        psf.run_psf("fill", view, {}, [])
    with pytest.raises(KeyError):
        psf.run_psf("dot", view, {"other": "missing"}, [])
    FakePartition(c.shards[0], "C", np.arange(3), np.zeros((3, 2), np.float32), "sparse")
    with pytest.raises(ValueError, match="table 'A' has dim 6 but other table 'C' has dim 2"):
        psf.run_psf("dot", view, {"other": "C"}, [])
    ids = FakePartition({}, "ids", np.arange(3), np.zeros((3, 2), np.float32), "sparse", dtype="int64")
    with pytest.raises(ValueError, match="PSF 'sum' needs a float table"):
        psf.run_psf("sum", ids, {}, [])


def test_merge_partials_rules_and_errors() -> None:
    assert set(CLIENT_MERGES) == set(psf.MERGES)
    parts = [[np.array([1.0, 4.0])], [np.array([3.0, 0.0])]]
    np.testing.assert_array_equal(merge_partials("sum", parts, {})[0], [4.0, 4.0])
    np.testing.assert_array_equal(merge_partials("max", parts, {})[0], [3.0, 4.0])
    np.testing.assert_array_equal(merge_partials("min", parts, {})[0], [1.0, 0.0])
    np.testing.assert_array_equal(merge_partials("norm", parts, {})[0], [2.0, 2.0])
    np.testing.assert_array_equal(merge_partials("concat", parts, {})[0], [1.0, 4.0, 3.0, 0.0])
    assert merge_partials("none", [[], []], {}) == []
    with pytest.raises(ValueError, match=r"unknown PSF merge 'avg'; allowed: \['sum'"):
        merge_partials("avg", parts, {})
    with pytest.raises(ValueError, match="different shapes across partitions"):
        merge_partials("sum", [[np.zeros(2)], [np.zeros(3)]], {})
    with pytest.raises(ValueError, match="topk merge needs arg 'k'"):
        merge_partials("topk", [[np.zeros(1, np.int64), np.zeros(1)]], {})
    keys, scores = merge_partials("topk", [[np.array([5, 9]), np.array([1.0, 3.0])], [np.array([2]), np.array([3.0])]],
                                  {"k": "2"})
    np.testing.assert_array_equal(keys, [2, 9])  # tie at 3.0 broken by key


def test_worker_merge_does_not_import_the_ps() -> None:
    code = ("import sys, seraphim.worker.psf_merge; "
            "bad = [m for m in sys.modules if m.startswith('seraphim.ps')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- initializers and specs


def test_initializers_shapes_and_distributions() -> None:
    rng = np.random.default_rng(7)
    n, dim = 2000, 16
    for init in (Zeros(), Constant(0.5), Normal(0.1, 0.02), Uniform(-0.3, 0.2), TruncatedNormal(0.0, 0.5)):
        out = init(n, dim, rng)
        assert out.dtype == np.float32 and out.shape == (n, dim)
    assert (Zeros()(3, 2, rng) == 0).all() and (Constant(0.5)(3, 2, rng) == 0.5).all()
    x = Normal(0.1, 0.02)(n, dim, rng)
    assert abs(x.mean() - 0.1) < 1e-3 and abs(x.std() - 0.02) < 1e-3
    x = Uniform(-0.3, 0.2)(n, dim, rng)
    assert x.min() >= -0.3 and x.max() < 0.2 and abs(x.mean() + 0.05) < 5e-3
    x = TruncatedNormal(1.0, 0.5)(n, dim, rng)
    assert x.min() >= 0.0 and x.max() <= 2.0 and abs(x.mean() - 1.0) < 5e-3
    assert abs(x.std() - 0.5 * 0.8796) < 5e-3  # std of a normal truncated at 2 sigma
    np.testing.assert_array_equal(Normal()(4, 3, np.random.default_rng(8)), Normal()(4, 3, np.random.default_rng(8)))


def test_initializer_specs_round_trip_and_errors() -> None:
    for init in (Zeros(), Constant(-2.0), Normal(0.0, 0.1), Uniform(-1.0, 1.0), TruncatedNormal(0.5, 0.01)):
        name, params = initializer_to_spec(init)
        assert initializer_from_spec(name, params) == init
    assert initializer_from_spec("normal", {"std": 3}) == Normal(0.0, 3.0)
    with pytest.raises(ValueError, match=r"unknown initializer 'gaussian'; allowed: \['constant', 'normal'"):
        initializer_from_spec("gaussian", {})
    with pytest.raises(ValueError, match=r"unknown param\(s\) \['sigma'\] for initializer 'normal'; allowed: \['mean', 'std'\]"):
        initializer_from_spec("normal", {"sigma": 1.0})
    with pytest.raises(ValueError, match=r"initializer 'constant' needs param\(s\) \['value'\]"):
        initializer_from_spec("constant", {})
    with pytest.raises(ValueError, match="normal: std must be > 0; got -1.0"):
        initializer_from_spec("normal", {"std": -1.0})
    with pytest.raises(ValueError, match="uniform: low must be < high"):
        initializer_from_spec("uniform", {"low": 1.0, "high": 1.0})
    with pytest.raises(ValueError, match="param 'value' must be finite"):
        initializer_from_spec("constant", {"value": float("nan")})
    with pytest.raises(ValueError, match="cannot describe"):
        initializer_to_spec(lambda n, dim, rng: np.zeros((n, dim), np.float32))


def test_optimizer_specs_round_trip_and_errors() -> None:
    for opt, _ in OPT_CASES.values():
        name, params = optimizer_to_spec(opt)
        assert all(isinstance(v, float) for v in params.values())
        assert optimizer_from_spec(name, params) == opt
    assert optimizer_from_spec("adam", {"lr": 1e-3, "amsgrad": 1.0}) == Adam(lr=1e-3, amsgrad=True)
    with pytest.raises(ValueError, match=r"unknown optimizer 'rmsprop'; allowed: \['adagrad', 'adam', 'adamw', 'sgd'\]"):
        optimizer_from_spec("rmsprop", {"lr": 0.1})
    with pytest.raises(ValueError, match=r"unknown param\(s\) \['betas'\] for optimizer 'adam'"):
        optimizer_from_spec("adam", {"lr": 0.1, "betas": 0.9})
    with pytest.raises(ValueError, match=r"optimizer 'sgd' needs param\(s\) \['lr'\]"):
        optimizer_from_spec("sgd", {})
    with pytest.raises(ValueError, match="adam: lr must be a finite number > 0; got 0.0"):
        optimizer_from_spec("adam", {"lr": 0.0})
    with pytest.raises(ValueError, match=r"adamw: beta2 must be in \[0.0, 1.0\); got 1.0"):
        optimizer_from_spec("adamw", {"lr": 0.1, "beta2": 1.0})
    with pytest.raises(ValueError, match="sgd: nesterov needs momentum > 0"):
        optimizer_from_spec("sgd", {"lr": 0.1, "nesterov": 1.0})
    with pytest.raises(ValueError, match="param 'amsgrad' must be a bool"):
        optimizer_from_spec("adam", {"lr": 0.1, "amsgrad": 0.5})
    with pytest.raises(ValueError, match="param 'lr' must be a number; got 'fast'"):
        optimizer_from_spec("sgd", {"lr": "fast"})
