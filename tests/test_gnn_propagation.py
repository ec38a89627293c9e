"""Propagation kernels against dense numpy references of D̃^(r-1) (A+I) D̃^(-r), row and block variants included."""

from __future__ import annotations

import math

import numpy as np
import pytest

from seraphim.algorithms.gnn.csr import CSRGraph, GraphError
from seraphim.algorithms.gnn.propagation import (
    heat_kernel, hops, label_hops, label_seed, needed_sources, normalization, partition_block, ppr, propagate,
    propagate_block, propagate_rows, s2gc,
)
from seraphim.algorithms.gnn.source_tiles import source_tiles


def csr_from_dense(adj: np.ndarray) -> CSRGraph:
    """CSR whose row i lists j adj[i, j] times (so repeated edges survive)."""
    counts = adj.astype(np.int64)
    indptr = np.concatenate([[0], np.cumsum(counts.sum(1))]).astype(np.int64)
    rows, cols = np.nonzero(counts)
    return CSRGraph(indptr, np.repeat(cols, counts[rows, cols]).astype(np.int64))


def dense_from_csr(graph: CSRGraph) -> np.ndarray:
    """The inverse of ``csr_from_dense``: adj[i, j] = how often row i lists j."""
    adj = np.zeros((graph.num_nodes, graph.num_nodes), np.int64)
    np.add.at(adj, (np.repeat(np.arange(graph.num_nodes), graph.degrees()), np.asarray(graph.indices)), 1)
    return adj


def dense_norm(adj: np.ndarray, r: float) -> np.ndarray:
    """D̃^(r-1) Ã D̃^(-r) with Ã = A and its diagonal set to 1 (a self-loop in A counts once), D̃ = row sums of Ã."""
    tilde = adj.astype(np.float64).copy()
    np.fill_diagonal(tilde, 1.0)
    deg = tilde.sum(1)
    return (deg ** (r - 1))[:, None] * tilde * (deg ** -r)[None, :]


def random_adj(n: int, p: float, seed: int, isolated: int = 3) -> np.ndarray:
    """Undirected 0/1 adjacency with the last `isolated` nodes isolated, a hub (node 0) and one self-loop."""
    rng = np.random.default_rng(seed)
    upper = np.triu(rng.random((n, n)) < p, 1)
    adj = (upper | upper.T).astype(np.int64)
    adj[0, : n - isolated] = adj[: n - isolated, 0] = 1
    adj[n - isolated:, :] = adj[:, n - isolated:] = 0
    np.fill_diagonal(adj, 0)
    adj[1, 1] = 1
    return adj


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, CSRGraph, np.ndarray]:
    adj = random_adj(40, 0.15, seed=1)
    x = np.random.default_rng(2).standard_normal((40, 7)).astype(np.float32)
    return adj, csr_from_dense(adj), x


@pytest.mark.parametrize("r", [0.0, 0.5, 1.0])
def test_one_hop_matches_dense_reference(small, r):
    adj, graph, x = small
    np.testing.assert_allclose(propagate(graph, x, r), dense_norm(adj, r) @ x, rtol=1e-5, atol=1e-6)
    row_scale, col_scale = normalization(graph, r)
    deg = np.maximum(adj, np.eye(40, dtype=np.int64)).sum(1)
    assert row_scale.dtype == col_scale.dtype == np.float32
    np.testing.assert_allclose(row_scale, deg ** (r - 1.0), rtol=1e-6)
    np.testing.assert_allclose(col_scale, deg ** -r, rtol=1e-6)


def test_isolated_nodes_keep_their_features(small):
    _, graph, x = small
    np.testing.assert_array_equal(propagate(graph, x, 0.5)[-3:], x[-3:])


@pytest.mark.parametrize("d", [1, 5, 17, 64])
def test_directed_graph_with_repeated_edges_and_many_chunks(d):
    """A directed multigraph big enough for many parallel chunks and a prefetch window that crosses rows."""
    rng = np.random.default_rng(d)
    n = 600
    adj = rng.poisson(0.05, size=(n, n)).astype(np.int64)
    adj[5] = rng.poisson(2.0, size=n)
    adj[n - 10:] = 0
    x = rng.standard_normal((n, d)).astype(np.float32)
    graph = csr_from_dense(adj)
    for r in (0.0, 0.5, 1.0):
        np.testing.assert_allclose(propagate(graph, x, r), dense_norm(adj, r) @ x, rtol=1e-4, atol=1e-5)


def test_out_buffer_is_filled_and_aliasing_rejected(small):
    adj, graph, x = small
    out = np.full_like(x, np.nan)
    assert propagate(graph, x, 0.5, out=out) is out
    np.testing.assert_allclose(out, dense_norm(adj, 0.5) @ x, rtol=1e-5, atol=1e-6)
    with pytest.raises(GraphError, match="overlap"):
        propagate(graph, x, 0.5, out=x)
    with pytest.raises(GraphError, match="shape"):
        propagate(graph, x, 0.5, out=np.empty((40, 6), np.float32))


def test_rows_variant_equals_rows_of_the_full_hop(small):
    _, graph, x = small
    full = propagate(graph, x, 0.5)
    np.testing.assert_array_equal(propagate_rows(graph, x, slice(10, 25)), full[10:25])
    np.testing.assert_array_equal(propagate_rows(graph, x, slice(3, 40, 4)), full[3:40:4])
    rows = np.array([39, 0, 7, 7, 1], np.int64)
    np.testing.assert_array_equal(propagate_rows(graph, x, rows), full[rows])
    assert propagate_rows(graph, x, slice(40, 40)).shape == (0, 7)
    with pytest.raises(GraphError, match="rows must lie in"):
        propagate_rows(graph, x, np.array([40], np.int64))
    with pytest.raises(GraphError, match="int64"):
        propagate_rows(graph, x, np.array([1], np.int32))


@pytest.mark.parametrize("lo,hi", [(0, 40), (0, 13), (13, 29), (29, 40), (20, 21), (15, 15), (37, 40)])
def test_partition_block_from_gathered_sources(small, lo, hi):
    adj, graph, x = small
    block = partition_block(graph, lo, hi, 0.5)
    halo = sorted({int(j) for j in np.nonzero(adj[lo:hi])[1]} - set(range(lo, hi)))
    np.testing.assert_array_equal(block.sources, np.concatenate([np.arange(lo, hi), halo]).astype(np.int64))
    np.testing.assert_array_equal(needed_sources(graph, lo, hi), block.sources)
    np.testing.assert_array_equal(block.sources[block.indices], graph.indices[graph.indptr[lo]:graph.indptr[hi]])
    full = propagate(graph, x, 0.5)
    np.testing.assert_allclose(propagate_block(block, x[block.sources]), full[lo:hi], rtol=1e-6, atol=1e-7)


def test_partitions_reassemble_two_hops(small):
    """Workers owning [0,13), [13,29), [29,40) pull their sources hop by hop and rebuild X^(2) exactly."""
    _, graph, x = small
    blocks = [partition_block(graph, lo, hi, 1.0) for lo, hi in ((0, 13), (13, 29), (29, 40))]
    current = x
    for _ in range(2):
        current = np.concatenate([propagate_block(b, current[b.sources]) for b in blocks])
    np.testing.assert_allclose(current, hops(graph, x, 2, 1.0)[2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lo,hi,tile_rows", [(0, 40, 7), (13, 29, 1), (13, 29, 64), (37, 40, 16), (15, 15, 8)])
def test_source_tiles_stream_the_previous_level_and_rebuild_the_rows_exactly(small, lo, hi, tile_rows):
    adj, graph, x = small
    tiles = source_tiles(graph, lo, hi, tile_rows, r=0.5)
    acc = tiles.accumulator(x.shape[1])
    read = []
    for t in tiles.nonempty():
        sources = tiles.sources(t)
        assert np.all((sources >= t * tile_rows) & (sources < (t + 1) * tile_rows))
        read.append(sources)
        tiles.add(t, x[sources], acc)
    listed = {int(j) for j in np.nonzero(adj[lo:hi])[1]} | set(range(lo, hi))     # the +I reads the own rows
    assert sorted(np.concatenate(read).tolist() if read else []) == sorted(listed)    # each source read once
    np.testing.assert_allclose(tiles.finish(acc), propagate(graph, x, 0.5)[lo:hi], rtol=1e-5, atol=1e-6)


def test_source_tiles_count_repeated_edges_and_reject_bad_rows():
    adj = np.array([[0, 2, 0], [2, 0, 1], [0, 1, 1]])            # a repeated edge and a self-loop in row 2
    graph = csr_from_dense(adj)
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    tiles = source_tiles(graph, 0, 3, 2, r=1.0)
    acc = tiles.accumulator(2)
    for t in tiles.nonempty():
        tiles.add(t, x[tiles.sources(t)], acc)
    np.testing.assert_allclose(tiles.finish(acc), dense_norm(adj, 1.0) @ x, rtol=1e-6)
    with pytest.raises(GraphError, match="tile 0 needs float32 rows of shape"):
        tiles.add(0, np.zeros((5, 2), np.float32), acc)
    with pytest.raises(GraphError, match="partition range"):
        source_tiles(graph, 2, 4, 2)


def test_partition_errors(small):
    _, graph, x = small
    with pytest.raises(GraphError, match="partition range"):
        partition_block(graph, 30, 41)
    block = partition_block(graph, 0, 10)
    with pytest.raises(GraphError, match="rows but"):
        propagate_block(block, x[:10])


def test_hops_match_powers_of_the_dense_matrix(small):
    adj, graph, x = small
    result = hops(graph, x, 3, 0.5)
    assert len(result) == 4 and result[0] is x
    norm = dense_norm(adj, 0.5)
    expected = x.astype(np.float64)
    for level in range(1, 4):
        expected = norm @ expected
        np.testing.assert_allclose(result[level], expected, rtol=1e-4, atol=1e-5)


def test_hop_count_zero_is_rejected(small):
    _, graph, x = small
    with pytest.raises(GraphError, match=r"^hop count must be >= 1, got 0$"):
        hops(graph, x, 0, 0.5)
    with pytest.raises(GraphError, match="hop count must be >= 1, got -2"):
        label_hops(graph, np.zeros(40, np.int64), np.arange(3), 2, -2)


def test_label_propagation_matches_reference(small):
    adj, graph, _ = small
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, size=40)
    labels[-5:] = -1                                    # unlabeled nodes outside the training split
    train_idx = np.array([0, 3, 8, 9, 21, 30], np.int64)
    result = label_hops(graph, labels, train_idx, 4, 2, 0.0)
    seed = np.zeros((40, 4))
    seed[train_idx, labels[train_idx]] = 1.0
    np.testing.assert_array_equal(result[0], seed)
    norm = dense_norm(adj, 0.0)
    np.testing.assert_allclose(result[1], norm @ seed, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result[2], norm @ norm @ seed, rtol=1e-5, atol=1e-6)
    transition = label_hops(graph, labels, train_idx, 4, 3, 1.0)             # r=1: columns sum to 1, mass is kept
    np.testing.assert_allclose([hop.sum() for hop in transition], [len(train_idx)] * 4, rtol=1e-5)


def test_label_seed_rejects_bad_labels():
    with pytest.raises(GraphError, match=r"training labels must lie in \[0, 3\)"):
        label_seed(np.array([0, 5, 1]), np.array([1]), 3)
    with pytest.raises(GraphError, match="train_idx must lie"):
        label_seed(np.array([0, 1, 1]), np.array([3]), 3)


def test_ppr_s2gc_heat_match_dense_formulas(small):
    adj, graph, x = small
    norm, x64 = dense_norm(adj, 0.5), x.astype(np.float64)
    iterates = ppr(graph, x, alpha=0.2, iters=4, r=0.5)
    z = x64
    for t in range(1, 5):
        z = 0.8 * norm @ z + 0.2 * x64
        np.testing.assert_allclose(iterates[t], z, rtol=1e-4, atol=1e-5)
    powers = [x64]
    for _ in range(5):
        powers.append(norm @ powers[-1])
    expected_s2gc = sum(0.9 * powers[level] + 0.1 * x64 for level in range(1, 6)) / 5
    np.testing.assert_allclose(s2gc(graph, x, 5, alpha=0.1, r=0.5), expected_s2gc, rtol=1e-4, atol=1e-5)
    expected_heat = sum(math.exp(-2.0) * 2.0 ** level / math.factorial(level) * powers[level] for level in range(6))
    np.testing.assert_allclose(heat_kernel(graph, x, t=2.0, k=5, r=0.5), expected_heat, rtol=1e-4, atol=1e-5)


def test_int64_only_and_bad_inputs_are_rejected(small):
    _, graph, x = small
    with pytest.raises(GraphError, match="int64"):
        CSRGraph(graph.indptr.astype(np.int32), graph.indices)
    assert graph.indptr.dtype == graph.indices.dtype == np.int64
    with pytest.raises(GraphError, match="outside"):
        normalization(CSRGraph(np.array([0, 1, 2], np.int64), np.array([1, 2], np.int64)))
    with pytest.raises(GraphError, match="float32"):
        propagate(graph, x.astype(np.float64))
    with pytest.raises(GraphError, match=r"r must lie in \[0, 1\]"):
        propagate(graph, x, 1.5)
