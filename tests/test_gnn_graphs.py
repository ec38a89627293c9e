"""The GNN graph data layer: generators (DC-SBM, R-MAT), the chunked CSR writer, the CSR directory, the OGB-style
converter and its errors, partitions (range, METIS, random) and the DGL import shim."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest
import scipy.sparse as sp

from seraphim.algorithms.gnn.csr import GraphError
from seraphim.algorithms.gnn.graph_gen import DCSBMSpec, RMATSpec, generate
from seraphim.algorithms.gnn.graph_io import (build_csr, convert_ogb, csr_from_edges, load_graph,
                                              write_node_data)
from seraphim.algorithms.gnn.graph_source import GraphSourceSpec, worker_ranges
from seraphim.algorithms.gnn.partition import (edge_cut, from_assignment, load_bounds, metis_partition,
                                               random_partition, range_partition, relabel_graph)
from seraphim.algorithms.gnn.propagation import propagate
from test_gnn_propagation import dense_from_csr, dense_norm


def _rows(graph) -> np.ndarray:
    return np.repeat(np.arange(graph.num_nodes), np.diff(graph.indptr))


def _homophily(data) -> float:
    return float((data.labels[_rows(data.graph)] == data.labels[np.asarray(data.graph.indices)]).mean())


def _hill(degrees: np.ndarray) -> float:
    """Hill estimate of the degree tail exponent (CCDF ~ k^-α) from the top 1%."""
    top = np.sort(degrees)[-max(20, len(degrees) // 100):]
    return float(len(top) / np.log(top / top[0]).sum())


def _mean_hops(data, k: int) -> list[np.ndarray]:
    """X, ÂX, ..., Â^k X with Â = D̃^-1 (A + I), by scipy (an independent reference)."""
    g = data.graph
    a = sp.csr_matrix((np.ones(g.num_edges), np.asarray(g.indices), g.indptr)) + sp.eye(g.num_nodes)
    p = sp.diags(1.0 / np.asarray(a.sum(axis=1)).ravel()) @ a
    hops = [np.asarray(data.features, np.float64)]
    for _ in range(k):
        hops.append(p @ hops[-1])
    return hops


def _centroid_accuracy(x: np.ndarray, data) -> float:
    """Nearest class mean (means from the train split), scored on the test split."""
    means = np.stack([x[data.train_idx][data.labels[data.train_idx] == c].mean(axis=0)
                      for c in range(data.num_classes)])
    test = x[data.test_idx]
    guess = ((test[:, None, :] - means[None]) ** 2).sum(axis=2).argmin(axis=1)
    return float((guess == data.labels[data.test_idx]).mean())


def _int64_everywhere(data) -> None:
    for arr in (data.graph.indptr, data.graph.indices, data.labels, data.train_idx, data.valid_idx, data.test_idx):
        assert arr.dtype == np.int64
    assert data.features.dtype == np.float32


# ------------------------------------------------------------------------------------------ generators
def test_dcsbm_is_deterministic_per_seed_whatever_the_chunk_size(tmp_path):
    spec = DCSBMSpec(nodes=3000, avg_degree=30, classes=4, feature_dim=8, seed=3)
    a = generate(spec, tmp_path / "a")
    b = generate(spec.model_copy(update={"chunk_edges": 1}), tmp_path / "b")  # one 16k-edge block per chunk
    for x, y in ((a.graph.indptr, b.graph.indptr), (a.graph.indices, b.graph.indices), (a.features, b.features),
                 (a.labels, b.labels), (a.train_idx, b.train_idx), (a.test_idx, b.test_idx)):
        assert np.array_equal(x, y)
    c = generate(spec.model_copy(update={"seed": 4}), tmp_path / "c")
    assert not np.array_equal(a.graph.indptr, c.graph.indptr) and not np.array_equal(a.labels, c.labels)
    _int64_everywhere(a)
    assert json.loads((tmp_path / "a" / "meta.json").read_text())["source"]["generate"]["seed"] == 3
    adj = sp.csr_matrix((np.ones(a.graph.num_edges), a.graph.indices, a.graph.indptr))
    assert (adj != adj.T).nnz == 0 and not np.any(_rows(a.graph) == a.graph.indices)  # undirected, no loops
    assert all(np.all(np.diff(a.graph.indices[lo:hi]) > 0) for lo, hi in zip(a.graph.indptr[:-1], a.graph.indptr[1:]))


def test_dcsbm_degrees_follow_the_power_law_asked_for(tmp_path):
    heavy = generate(DCSBMSpec(nodes=20000, avg_degree=10, degree_exponent=2.5, feature_dim=4), tmp_path / "h")
    deg = heavy.graph.degrees()
    assert 1.2 < _hill(deg) < 1.9  # CCDF exponent γ - 1 = 1.5
    assert deg.max() > 50 * np.median(deg)
    flat = generate(DCSBMSpec(nodes=20000, avg_degree=10, degree_exponent=20, feature_dim=4), tmp_path / "f")
    assert _hill(flat.graph.degrees()) > 5 and flat.graph.degrees().max() < 5 * np.median(flat.graph.degrees())


def test_dcsbm_hops_raise_accuracy_well_above_the_features_alone(tmp_path):
    spec = DCSBMSpec(nodes=20000, avg_degree=12, classes=8, feature_dim=16, homophily=0.7, snr=1.0)
    data = generate(spec, tmp_path / "g")
    assert abs(_homophily(data) - spec.homophily) < 0.03
    assert np.all(np.bincount(data.labels) == spec.nodes // spec.classes)
    acc = [_centroid_accuracy(x, data) for x in _mean_hops(data, 2)]
    assert 0.25 < acc[0] < 0.5  # chance is 0.125; Bayes for snr=1 is about 0.39
    assert acc[1] > acc[0] + 0.2 and acc[2] > acc[1] + 0.05, acc


def test_rmat_communities_and_smoothed_labels_carry_signal_hops_can_use(tmp_path):
    plain = generate(RMATSpec(scale=13, edge_factor=8, classes=2, feature_dim=4, homophily=0.0), tmp_path / "p")
    assert plain.graph.num_nodes == 8192 and plain.graph.num_edges <= 2 * 8 * 8192
    assert 0.55 < _homophily(plain) < 0.7  # pure Graph500: top bits agree for about a + d = 0.62 of edges
    assert plain.graph.degrees().max() > 100 * np.median(plain.graph.degrees())  # skewed
    hubs = np.argsort(plain.graph.degrees())[-20:]
    assert np.median(hubs) > 8192 // 8  # scrambled ids: the hubs are not the lowest ids
    planted = generate(RMATSpec(scale=13, edge_factor=8, classes=8, feature_dim=16, homophily=0.6), tmp_path / "c")
    assert _homophily(planted) > 0.55
    acc = [_centroid_accuracy(x, planted) for x in _mean_hops(planted, 2)]
    assert acc[2] > acc[0] + 0.15, acc
    smooth = generate(RMATSpec(scale=13, edge_factor=8, classes=4, feature_dim=16, homophily=0.0,
                               label_rule="smoothed", snr=2.0), tmp_path / "s")
    acc = [_centroid_accuracy(x, smooth) for x in _mean_hops(smooth, 2)]
    assert acc[2] > acc[0] + 0.05, acc


# ------------------------------------------------------------------------------------------ chunked CSR writer
@pytest.mark.parametrize("symmetrize", [True, False])
def test_chunked_csr_writer_equals_a_one_shot_reference(tmp_path, symmetrize):
    rng = np.random.default_rng(0)
    src, dst = rng.integers(0, 300, 5000), rng.integers(0, 300, 5000)  # repeats and self-loops included
    chunks = [(src[i:i + 700], dst[i:i + 700]) for i in range(0, 5000, 700)]
    graph = build_csr(chunks, 310, tmp_path / "chunked", symmetrize)  # nodes 300..309 isolated
    keep = src != dst
    rows, cols = dst[keep], src[keep]
    if symmetrize:
        rows, cols = np.r_[rows, cols], np.r_[cols, rows]
    ref = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(310, 310))
    ref.sum_duplicates()
    ref.sort_indices()
    assert np.array_equal(graph.indptr, ref.indptr) and np.array_equal(graph.indices, ref.indices)
    one_shot = build_csr([(src, dst)], 310, tmp_path / "one", symmetrize)
    assert np.array_equal(one_shot.indices, graph.indices)
    assert sorted(os.listdir(tmp_path / "chunked")) == ["indices.npy", "indptr.npy"]  # scratch files removed
    with pytest.raises(GraphError, match=r"edge chunk 1: edge destination: id 310 at position 2 is out of range: "
                                         r"node ids must lie in \[0, 309\]"):
        build_csr([(src[:3], dst[:3]), (np.array([1, 2, 3]), np.array([4, 5, 310]))], 310, tmp_path / "bad")


def test_in_memory_csr_equals_the_chunked_writers(tmp_path):
    rng = np.random.default_rng(1)
    src, dst = rng.integers(0, 300, 5000), rng.integers(0, 300, 5000)  # repeats and self-loops included
    written, held = build_csr([(src, dst)], 310, tmp_path), csr_from_edges(src, dst, 310)
    assert np.array_equal(held.indptr, written.indptr) and np.array_equal(held.indices, written.indices)
    loops_only = csr_from_edges(np.array([2, 2]), np.array([2, 2]), 3)
    assert np.array_equal(loops_only.indptr, [0, 0, 0, 0]) and loops_only.num_edges == 0
    with pytest.raises(GraphError, match=r"edge destination: id 310 at position 2 is out of range"):
        csr_from_edges(np.array([1, 2, 3]), np.array([4, 5, 310]), 310)


def test_self_loops_are_dropped_and_isolated_nodes_keep_their_features(tmp_path):
    data = convert_ogb(_ogb_dir(tmp_path, "npy"), tmp_path / "out")
    assert list(data.graph.indices[data.graph.indptr[3]:data.graph.indptr[4]]) == [4]  # 3-3 dropped, 3-4 kept
    assert data.graph.indptr[6] == data.graph.indptr[5]  # node 5 isolated, kept
    x = np.asarray(data.features)
    adj = dense_from_csr(data.graph)
    for r in (0.0, 0.5, 1.0):
        out = propagate(data.graph, x, r=r)
        np.testing.assert_allclose(out[5], x[5], rtol=1e-6)  # Â row 5 is the +I alone
        ref = dense_norm(adj, r) @ x  # Ã = A + I: the one self-loop every node gets, node 3 included
        np.testing.assert_allclose(out, ref, rtol=1e-5)


# ------------------------------------------------------------------------------------------ OGB-style converter
EDGES = np.array([[0, 1, 2, 3, 3, 4, 1], [1, 2, 0, 3, 4, 0, 0]])  # 3-3 a self-loop, 1-0 repeats 0-1, 5 isolated
FEATS = np.arange(12, dtype=np.float32).reshape(6, 2)
LABELS = np.array([0, 1, 0, 1, 2, -1])
SPLIT = {"train": [0, 1], "valid": [2, 3], "test": [4]}


def _ogb_dir(tmp_path, style: str):
    """``npy``: OGB's arrays as .npy; ``csv``: plain CSV with a header; ``raw``: OGB's raw names, gzip, NaN label."""
    base = tmp_path / style
    split_dir = base / "split" / ("time" if style == "raw" else "")
    split_dir.mkdir(parents=True)
    if style == "npy":
        np.save(base / "edge_index.npy", EDGES)
        np.save(base / "node_feat.npy", FEATS.astype(np.float64))
        np.save(base / "node_label.npy", LABELS)
        for name, ids in SPLIT.items():
            np.save(split_dir / f"{name}.npy", np.array(ids))
        return base
    gz = style == "raw"
    opener = gzip.open if gz else open
    stem = (lambda s: s.replace("_", "-")) if gz else (lambda s: s)
    suffix = ".csv.gz" if gz else ".csv"
    with opener(base / f"{'edge' if gz else 'edge_index'}{suffix}", "wt") as f:
        f.write(("" if gz else "src,dst\n") + "\n".join(f"{s},{d}" for s, d in EDGES.T) + "\n")
    with opener(base / f"{stem('node_feat')}{suffix}", "wt") as f:
        f.write("\n".join(",".join(f"{v:g}" for v in row) for row in FEATS) + "\n")
    with opener(base / f"{stem('node_label')}{suffix}", "wt") as f:
        f.write("\n".join("nan" if v < 0 and gz else str(v) for v in LABELS) + "\n")
    for name, ids in SPLIT.items():
        with opener(split_dir / f"{name}{suffix}", "wt") as f:
            f.write("\n".join(map(str, ids)) + "\n")
    return base


@pytest.mark.parametrize("style", ["npy", "csv", "raw"])
def test_ogb_style_arrays_convert_to_the_csr_directory(tmp_path, style):
    data = convert_ogb(_ogb_dir(tmp_path, style), tmp_path / "out")
    assert data.graph.num_nodes == 6 and data.num_classes == 3
    assert np.array_equal(data.graph.indptr, [0, 3, 5, 7, 8, 10, 10])
    assert list(data.graph.indices[:3]) == [1, 2, 4]
    assert list(data.graph.indices[data.graph.indptr[3]:data.graph.indptr[4]]) == [4]  # 3-3 dropped in every format
    np.testing.assert_array_equal(data.features, FEATS)
    assert list(data.labels) == list(LABELS) and list(data.valid_idx) == [2, 3]
    _int64_everywhere(data)
    again = load_graph(tmp_path / "out")
    assert np.array_equal(again.graph.indices, data.graph.indices)
    assert isinstance(again.features, np.memmap) and isinstance(again.graph.indices, np.memmap)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["format"] == 1 and meta["num_edges"] == 10 and meta["feature_dim"] == 2
    assert meta["dtypes"]["indices"] == "int64" and meta["dtypes"]["features"] == "float32"


def test_ogb_conversion_can_keep_edge_direction(tmp_path):
    data = convert_ogb(_ogb_dir(tmp_path, "npy"), tmp_path / "out", symmetrize=False)
    assert list(data.graph.indices[:data.graph.indptr[1]]) == [1, 2, 4]  # 0 aggregates from 1 (both ways), 2, 4
    assert list(data.graph.indices[data.graph.indptr[1]:data.graph.indptr[2]]) == [0]  # 1 from 0 only


def test_a_csv_header_is_skipped_but_a_leading_nan_label_is_data(tmp_path):
    base = _ogb_dir(tmp_path, "csv")
    (base / "node_label.csv").write_text("label\nnan\n1\n0\n1\n2\n0\n")
    (base / "split" / "train.csv").write_text("1\n5\n")
    data = convert_ogb(base, tmp_path / "out")
    assert list(data.labels) == [-1, 1, 0, 1, 2, 0]


def _refused_without_a_graph(base, out, message: str) -> None:
    with pytest.raises(GraphError, match=message):
        convert_ogb(base, out)
    assert not (out / "meta.json").exists()  # nothing half-written looks complete


@pytest.mark.parametrize("relpath, text, message", [
    ("edge_index.csv", "src,dst\n0,1\n1,x\n",
     r"edge_index.csv:3: not an integer: 'x'"),
    ("edge_index.csv", "0,1\n\n1,2.5\n",
     r"edge_index.csv:3: not an integer: '2.5'"),
    ("edge_index.csv", "0,1\n1\n",
     r"edge_index.csv:2: expected 2 integer column\(s\), got 1: '1'"),
    ("edge_index.csv", "0,1\n1,2,3\n",
     r"edge_index.csv:2: expected 2 integer column\(s\), got 3: '1,2,3'"),
    ("edge_index.csv", "0,1\n\n1,9\n",
     r"edge_index.csv:3: edge destination id 9 is out of range: node ids must lie in \[0, 5\] "
     r"\(6 nodes have features\)"),
    ("node_label.csv", "0\n1\n0\n",
     r"node_feat has 6 rows but node_label has 3 entries"),
    ("node_label.csv", "0\n1\n0.5\n1\n0\n1\n",
     r"node 2 has label 0.5, not an integer class id"),
    ("node_feat.csv", "0,1\n2,3\n4,nan\n6,7\n8,9\n10,11\n",
     r"node_feat.csv: line 3 holds a NaN or infinite feature"),
    ("node_feat.csv", "0,1\n2,3\n4,five\n6,7\n8,9\n10,11\n",
     r"node_feat.csv:3: not a number: 'five'"),
    ("split/test.csv", "3\n4\n",
     r"the split is not disjoint: 1 node id\(s\) appear more than once across train/valid/test, e.g. node 3 is in "
     r"both valid and test"),
    ("split/test.csv", "4\n6\n",
     r"split test holds node id 6, outside \[0, 5\]"),
    ("split/test.csv", "4\n5\n",
     r"split test holds node 5 whose label -1 is not in \[0, 2\]"),
])
def test_bad_csv_text_gets_a_precise_error_and_no_graph(tmp_path, relpath, text, message):
    base = _ogb_dir(tmp_path, "csv")
    (base / relpath).write_text(text)
    _refused_without_a_graph(base, tmp_path / "out", message)


@pytest.mark.parametrize("breakage, message", [
    (lambda b: (b / "edge_index.csv").unlink() or np.save(b / "edge_index.npy", np.array([[0, 1, -2], [1, 2, 0]])),
     r"edge_index.npy: edge 2: edge source id -2 is out of range: node ids must lie in \[0, 5\]"),
    (lambda b: (b / "edge_index.csv").unlink() or np.save(b / "edge_index.npy", np.zeros((3, 3), np.int64)),
     r"edge_index.npy: expected an integer array of shape \[2, m\], got int64 \(3, 3\)"),
    (lambda b: (b / "node_feat.csv").unlink(),
     r"found none of node_feat.npy, node_feat.csv"),
])
def test_a_bad_array_or_a_missing_file_gets_a_precise_error_and_no_graph(tmp_path, breakage, message):
    base = _ogb_dir(tmp_path, "csv")
    breakage(base)
    _refused_without_a_graph(base, tmp_path / "out", message)


def test_a_damaged_graph_directory_is_refused(tmp_path):
    with pytest.raises(GraphError, match="no meta.json"):
        load_graph(tmp_path)
    convert_ogb(_ogb_dir(tmp_path, "npy"), tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    (tmp_path / "out" / "meta.json").write_text(json.dumps({**meta, "num_edges": 11}))
    with pytest.raises(GraphError, match="says num_edges=11 but the arrays hold 10"):
        load_graph(tmp_path / "out")
    with pytest.raises(GraphError, match=r"features are float32 \(6, 2\) but the graph has 7 nodes"):
        np.save(tmp_path / "out" / "indptr.npy", np.r_[np.load(tmp_path / "out" / "indptr.npy"), 10])
        write_node_data(tmp_path / "out", np.r_[LABELS, 0], 3, SPLIT)


# ------------------------------------------------------------------------------------------ partitions
def test_partitions_cover_every_node_once_and_metis_cuts_fewer_edges(tmp_path):
    data = generate(DCSBMSpec(nodes=6000, avg_degree=10, classes=4, feature_dim=4, homophily=0.9), tmp_path / "g")
    g, workers = data.graph, 4
    rng = range_partition(g, workers)
    cost = np.asarray(g.indptr) + np.arange(g.num_nodes + 1)
    loads = [cost[b] - cost[a] for a, b in rng.ranges()]
    assert rng.ranges()[0][0] == 0 and rng.ranges()[-1][1] == g.num_nodes
    assert max(loads) - min(loads) <= 2 * g.degrees().max() + 2  # balanced up to one row either side
    assert np.array_equal(rng.new_to_old, np.arange(g.num_nodes))
    metis, rand = metis_partition(g, workers), random_partition(g, workers, seed=1)
    for part in (rng, metis, rand):
        covered = np.concatenate([part.nodes(w) for w in range(workers)])
        assert np.array_equal(np.sort(covered), np.arange(g.num_nodes))  # every node exactly once
        assert np.array_equal(part.old_to_new[part.new_to_old], np.arange(g.num_nodes))
        assert part.assignment.dtype == np.int64 and part.new_to_old.dtype == np.int64
    assert np.diff(metis.bounds).min() > 0.8 * g.num_nodes / workers
    assert edge_cut(g, metis) < 0.4 * edge_cut(g, rand)  # homophilous blocks: METIS finds them
    moved = relabel_graph(data, metis, tmp_path / "metis")
    assert load_bounds(tmp_path / "metis") == metis.ranges() and load_bounds(tmp_path / "g") is None
    contiguous = from_assignment(np.repeat(np.arange(workers), np.diff(metis.bounds)), workers)
    assert edge_cut(moved.graph, contiguous) == edge_cut(g, metis)  # same cut, now as contiguous ranges
    np.testing.assert_array_equal(moved.features, np.asarray(data.features)[metis.new_to_old])
    np.testing.assert_array_equal(moved.labels[metis.old_to_new[data.test_idx]], data.labels[data.test_idx])
    v = 17  # neighbours follow their node
    assert sorted(metis.old_to_new[g.indices[g.indptr[v]:g.indptr[v + 1]]]) == \
        list(moved.graph.indices[moved.graph.indptr[metis.old_to_new[v]]:moved.graph.indptr[metis.old_to_new[v] + 1]])
    with pytest.raises(GraphError, match=r"num_parts must lie in \[1, 6000\]"):
        range_partition(g, 0)


def test_worker_node_ranges_cover_every_node_once_and_balance_edges(tmp_path):
    data = generate(DCSBMSpec(nodes=5000, avg_degree=10, feature_dim=4), tmp_path / "g")
    ranges = worker_ranges(GraphSourceSpec(path=str(tmp_path / "g")), tmp_path, data, 3)
    assert ranges[0][0] == 0 and ranges[-1][1] == 5000
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    edges = [int(data.graph.indptr[hi] - data.graph.indptr[lo]) for lo, hi in ranges]
    assert max(edges) < 1.2 * min(edges)


def test_import_dgl_skips_only_graphbolt_and_runs_message_passing():
    import torch

    from seraphim.algorithms.gnn.dgl_compat import import_dgl

    exists = os.path.exists
    dgl = import_dgl()
    assert dgl.__version__.startswith("2.1") and os.path.exists is exists  # the shim is undone
    import dgl.function as fn

    g = dgl.graph((torch.tensor([0, 1, 2]), torch.tensor([1, 2, 1])), num_nodes=3)
    g.ndata["h"] = torch.tensor([[1.0], [2.0], [4.0]])
    g.update_all(fn.copy_u("h", "m"), fn.sum("m", "h"))
    assert g.ndata["h"].ravel().tolist() == [0.0, 5.0, 2.0]
    assert import_dgl() is dgl
