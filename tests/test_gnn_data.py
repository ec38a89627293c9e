"""Graph generators, the out-of-core CSR builder, the OGB-style loader and what bad input gets."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import scipy.sparse as sp

from seraphim.algorithms.gnn.csr import GraphError
from seraphim.algorithms.gnn.graph_gen import DCSBMSpec, RMATSpec, generate
from seraphim.algorithms.gnn.graph_io import build_csr, convert_ogb, load_graph
from seraphim.algorithms.gnn.graph_source import GraphSourceSpec
from seraphim.algorithms.gnn.graph_source import worker_ranges
from seraphim.algorithms.gnn.job import GNNSpec


def _edge_homophily(data) -> float:
    g = data.graph
    rows = np.repeat(np.arange(g.num_nodes), np.diff(g.indptr))
    return float((data.labels[rows] == data.labels[np.asarray(g.indices)]).mean())


def test_dcsbm_is_deterministic_heavy_tailed_and_homophilous(tmp_path):
    spec = DCSBMSpec(nodes=6000, avg_degree=12, classes=4, feature_dim=8, homophily=0.85, chunk_edges=5000)
    a, b = generate(spec, tmp_path / "a"), generate(spec, tmp_path / "b")
    assert np.array_equal(a.graph.indices, b.graph.indices) and np.array_equal(a.features, b.features)
    c = generate(spec.model_copy(update={"seed": 1}), tmp_path / "c")
    assert not np.array_equal(a.graph.indptr, c.graph.indptr)
    degrees = a.graph.degrees()
    assert degrees.max() > 8 * np.median(degrees)  # power-law propensities: hubs
    assert _edge_homophily(a) > 0.75
    assert a.graph.indices.dtype == np.int64 and a.graph.indptr.dtype == np.int64
    rows = np.repeat(np.arange(a.graph.num_nodes), degrees)
    assert not np.any(rows == a.graph.indices)  # no self-loops: Â adds them
    adj = sp.csr_matrix((np.ones(a.graph.num_edges), a.graph.indices, a.graph.indptr))
    assert (adj != adj.T).nnz == 0  # symmetric


def test_rmat_labels_follow_its_quadrants(tmp_path):
    data = generate(RMATSpec(scale=12, edge_factor=8, classes=2, feature_dim=4), tmp_path / "r")
    assert data.graph.num_nodes == 4096 and _edge_homophily(data) > 0.55


def test_csr_builder_matches_scipy_and_merges_repeats(tmp_path):
    rng = np.random.default_rng(0)
    src, dst = rng.integers(0, 300, 5000), rng.integers(0, 300, 5000)
    chunks = [(src[i:i + 700], dst[i:i + 700]) for i in range(0, 5000, 700)]
    graph = build_csr(chunks, 300, tmp_path)
    keep = src != dst
    ref = sp.csr_matrix((np.ones(keep.sum() * 2), (np.r_[dst[keep], src[keep]], np.r_[src[keep], dst[keep]])),
                        shape=(300, 300))
    ref.sum_duplicates()
    ref.sort_indices()
    assert np.array_equal(graph.indptr, ref.indptr) and np.array_equal(graph.indices, ref.indices)
    assert not (tmp_path / "edges.scratch").exists()


def _ogb_dir(tmp_path, csv: bool):
    base = tmp_path / ("csv" if csv else "npy")
    (base / "split").mkdir(parents=True)
    edges = np.array([[0, 1, 2, 3, 3, 4], [1, 2, 0, 3, 4, 0]])  # a self-loop 3-3; node 5 isolated
    feats = np.arange(12, dtype=np.float32).reshape(6, 2)
    labels = np.array([0, 1, 0, 1, 0, 1])
    if csv:
        with gzip.open(base / "edge_index.csv.gz", "wt") as f:
            f.write("\n".join(f"{s},{d}" for s, d in edges.T))
        np.savetxt(base / "node_feat.csv", feats, delimiter=",")
        np.savetxt(base / "node_label.csv", labels, fmt="%d")
    else:
        np.save(base / "edge_index.npy", edges)
        np.save(base / "node_feat.npy", feats)
        np.save(base / "node_label.npy", labels)
    for name, ids in (("train", [0, 1]), ("valid", [2, 3]), ("test", [4, 5])):
        (base / "split" / f"{name}.csv").write_text("\n".join(map(str, ids)) + "\n")
    return base


@pytest.mark.parametrize("csv", [False, True])
def test_ogb_style_arrays_convert_to_the_csr_directory(tmp_path, csv):
    data = convert_ogb(_ogb_dir(tmp_path, csv), tmp_path / "out")
    assert data.graph.num_nodes == 6 and data.num_classes == 2
    assert np.array_equal(data.graph.indptr, [0, 3, 5, 7, 8, 10, 10])  # node 5 isolated, self-loop 3-3 dropped
    assert list(data.graph.indices[data.graph.indptr[3]:data.graph.indptr[4]]) == [4]
    np.testing.assert_array_equal(data.features[4], [8, 9])
    assert list(data.valid_idx) == [2, 3]
    again = load_graph(tmp_path / "out")
    assert np.array_equal(again.graph.indices, data.graph.indices)


@pytest.mark.parametrize("breakage, message", [
    (lambda b: (b / "edge_index.csv.gz").unlink() or (b / "edge_index.csv").write_text("0,1\n1,x\n"),
     r"edge_index.csv:2: not an integer"),
    (lambda b: (b / "edge_index.csv.gz").unlink() or (b / "edge_index.csv").write_text("0,1\n1\n"),
     r"edge_index.csv:2: expected 2 integer column\(s\), got 1"),
    (lambda b: (b / "edge_index.csv.gz").unlink() or (b / "edge_index.csv").write_text("0,1\n1,9\n"),
     r"edge destination id 9 is out of range: node ids must lie in \[0, 5\]"),
    (lambda b: np.savetxt(b / "node_label.csv", [0, 1, 0], fmt="%d"),
     r"node_feat has 6 rows but node_label has 3 entries"),
    (lambda b: (b / "split" / "test.csv").write_text("3\n5\n"),
     r"node 3 is in both valid and test"),
    (lambda b: (b / "split" / "test.csv").write_text("4\n6\n"),
     r"split test holds node id 6, outside \[0, 5\]"),
])
def test_bad_input_gets_a_precise_error(tmp_path, breakage, message):
    base = _ogb_dir(tmp_path, csv=True)
    breakage(base)
    with pytest.raises(GraphError, match=message):
        convert_ogb(base, tmp_path / "out")


def test_a_job_spec_with_zero_hops_or_two_sources_is_refused():
    graph = {"generate": {"kind": "dcsbm", "nodes": 100}}
    with pytest.raises(ValueError, match="hops must be >= 1"):
        GNNSpec.model_validate({"graph": graph, "propagation": {"hops": 0}})
    with pytest.raises(ValueError, match="exactly one of graph.path, graph.ogb, graph.generate"):
        GraphSourceSpec.model_validate({"path": "/x", **graph})
    with pytest.raises(ValueError, match="set propagation.label_hops"):
        GNNSpec.model_validate({"graph": graph, "rlu": {"stages": 2}})


def test_node_ranges_cover_every_node_once_and_balance_edges(tmp_path):
    data = generate(DCSBMSpec(nodes=5000, avg_degree=10, feature_dim=4), tmp_path / "g")
    ranges = worker_ranges(GraphSourceSpec(path=str(tmp_path / "g")), tmp_path, data, 3)
    assert ranges[0][0] == 0 and ranges[-1][1] == 5000
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    edges = [int(data.graph.indptr[hi] - data.graph.indptr[lo]) for lo, hi in ranges]
    assert max(edges) < 1.2 * min(edges)
