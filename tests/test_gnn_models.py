"""PasCa operators, GAMLP and the SGAP baselines, the mini-batch trainer and RLU, on hand-made tensors and small graphs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seraphim.algorithms.gnn import models
from seraphim.algorithms.gnn.csr import CSRGraph, GraphError
from seraphim.algorithms.gnn.graph_gen import DCSBMSpec, generate
from seraphim.algorithms.gnn.graph_io import csr_from_edges
from seraphim.algorithms.gnn.operators import (
    ConcatMessage, CorrectAndSmooth, GateMessage, HeatOp, JKAttention, LabelPropagationPost, LaplacianOp,
    LastMessage, LearnableWeightedMessage, MaxMessage, MeanMessage, PPROp, ProjectedMessage, RecursiveAttention,
    SumMessage, WeightedMessage,
)
from seraphim.algorithms.gnn.train import (
    CachedHops, FoldedLabels, InMemoryHops, RLUConfig, Split, TrainConfig, fit, folded_label_input,
    graph_label_propagator, predict,
)
from test_gnn_propagation import dense_from_csr, dense_norm

SMALL = dict(n=2400, classes=4, dim=16)


@pytest.fixture(scope="module")
def small_task(tmp_path_factory):
    """A degree-corrected SBM whose own features are weak: hops are needed to classify well."""
    spec = DCSBMSpec(nodes=SMALL["n"], classes=SMALL["classes"], feature_dim=SMALL["dim"], snr=1.2, avg_degree=8,
                     homophily=0.85, train_fraction=0.1, valid_fraction=0.2, seed=3)
    data = generate(spec, tmp_path_factory.mktemp("sbm"))
    graph = CSRGraph(np.array(data.graph.indptr), np.array(data.graph.indices))
    split = Split(np.array(data.train_idx), np.array(data.valid_idx), np.array(data.test_idx))
    return graph, np.array(data.features), np.array(data.labels), split


@pytest.fixture(scope="module")
def tiny_graph() -> CSRGraph:
    rng = np.random.default_rng(0)
    return csr_from_edges(rng.integers(0, 12, 30), rng.integers(0, 12, 30), 12)


# ------------------------------------------------------------------------------------------------ graph operators
def test_graph_operators_match_dense_references(tiny_graph):
    x = np.random.default_rng(1).standard_normal((12, 3)).astype(np.float32)
    p = dense_norm(dense_from_csr(tiny_graph), 0.5)
    lap = LaplacianOp(hops=3)(tiny_graph, x)
    assert len(lap) == LaplacianOp(3).levels == 4
    np.testing.assert_allclose(lap[3], np.linalg.matrix_power(p, 3) @ x, rtol=1e-4, atol=1e-5)
    z = x.astype(np.float64)
    for _ in range(4):
        z = 0.8 * p @ z + 0.2 * x
    np.testing.assert_allclose(PPROp(hops=4, alpha=0.2)(tiny_graph, x)[4], z, rtol=1e-4, atol=1e-5)
    heat = HeatOp(hops=2, t=2.0, terms=20)(tiny_graph, x)
    evals, evecs = np.linalg.eigh(p)  # symmetric for r = 0.5
    for level, t in [(0, 0.0), (1, 1.0), (2, 2.0)]:
        kernel = evecs @ np.diag(np.exp(-t * (1 - evals))) @ evecs.T
        np.testing.assert_allclose(heat[level], kernel @ x, rtol=1e-4, atol=1e-5)
    with pytest.raises(GraphError, match="hops >= 1"):
        LaplacianOp(hops=0)
    with pytest.raises(GraphError, match="alpha"):
        PPROp(hops=2, alpha=1.5)


# ---------------------------------------------------------------------------------------------- message operators
def test_fixed_message_operators_on_hand_made_tensors():
    hops = [torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 0.0]]), torch.tensor([[-1.0, 4.0]])]
    assert torch.equal(LastMessage()(hops), torch.tensor([[-1.0, 4.0]]))
    assert torch.allclose(MeanMessage()(hops), torch.tensor([[1.0, 2.0 / 3.0]]))
    assert torch.equal(SumMessage()(hops), torch.tensor([[3.0, 2.0]]))
    assert torch.equal(MaxMessage()(hops), torch.tensor([[3.0, 4.0]]))
    assert torch.equal(ConcatMessage(3)(hops), torch.tensor([[1.0, -2.0, 3.0, 0.0, -1.0, 4.0]]))
    assert ConcatMessage(3).out_dim(2) == 6
    assert torch.allclose(WeightedMessage([0.5, 0.25, 0.25])(hops), torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(WeightedMessage.s2gc(2, alpha=0.2).weights, torch.tensor([0.2, 0.4, 0.4]))
    assert torch.allclose(WeightedMessage.gbp(2, beta=0.5).weights, torch.tensor([0.5, 0.25, 0.125]))
    assert torch.allclose(LearnableWeightedMessage(3)(hops), MeanMessage()(hops))    # θ = 0 starts uniform
    with pytest.raises(ValueError, match="built for 2 hop levels"):
        WeightedMessage([0.5, 0.5])(hops)


def _hops(batch: int = 5, levels: int = 4, dim: int = 6, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, dim, generator=g) for _ in range(levels)]


@pytest.mark.parametrize("make", [
    lambda: GateMessage(6, 4),
    lambda: RecursiveAttention(6, 4, act="sigmoid"),
    lambda: JKAttention(6, 4, hidden=8),
])
def test_adaptive_weights_are_a_softmax_over_hops_per_node(make):
    torch.manual_seed(0)
    op = make().eval()
    hops = _hops()
    w = op.weights(hops)
    assert w.shape == (5, 4)
    assert torch.all(w > 0)
    assert torch.allclose(w.sum(1), torch.ones(5), atol=1e-6)
    assert w.std(0).sum() > 0                       # node-adaptive: rows differ
    expected = sum(w[:, l:l + 1] * hops[l] for l in range(4))
    assert torch.allclose(op(hops), expected, atol=1e-6)


def test_recursive_attention_matches_the_paper_recursion():
    torch.manual_seed(1)
    op = RecursiveAttention(3, 4, act="leaky_relu").eval()
    hops = _hops(batch=2, levels=4, dim=3, seed=2)
    s, b = op.score.weight[0].detach(), op.score.bias.detach()[0]
    delta = torch.nn.functional.leaky_relu
    for i in range(2):
        x = [h[i] for h in hops]
        scores = [delta(torch.dot(s, torch.cat([x[0], x[0]])) + b, 0.2)]
        for l in range(1, 4):
            w = torch.softmax(torch.stack(scores), 0)
            history = sum(w[k] * x[k] for k in range(l))
            scores.append(delta(torch.dot(s, torch.cat([x[l], history])) + b, 0.2))
        assert torch.allclose(op.weights(hops)[i], torch.softmax(torch.stack(scores), 0), atol=1e-6)


def test_jk_attention_scores_each_hop_against_one_reference():
    torch.manual_seed(2)
    op = JKAttention(3, 3, hidden=4, ref_layers=2).eval()
    hops = _hops(batch=2, levels=3, dim=3, seed=3)
    ref = op.reference(torch.cat(hops, dim=1))
    scores = torch.cat([op.act(op.score(torch.cat([h, ref], dim=1))) for h in hops], dim=1)
    assert torch.allclose(op.weights(hops), torch.softmax(scores, 1), atol=1e-6)


def test_projected_concat_is_sign_and_keeps_widths():
    op = ProjectedMessage(6, 10, 4, ConcatMessage(4))
    assert op.out_dim(6) == 40
    assert op(_hops()).shape == (5, 40)


# ------------------------------------------------------------------------------------------------------ builders
@pytest.mark.parametrize("build", [
    lambda: models.sgc(6, 3, 3),
    lambda: models.sign(6, 3, 3, hidden=8),
    lambda: models.s2gc(6, 3, 3),
    lambda: models.gbp(6, 3, 3, hidden=8),
    lambda: models.gamlp(6, 3, 3, hidden=8),
    lambda: models.gamlp(6, 3, 3, hidden=8, attention="jk"),
    lambda: models.gamlp(6, 3, 3, hidden=8, hop_layers=0, out_layers=3, label_layers=2),
])
def test_builders_run_forward_and_backward(build):
    torch.manual_seed(0)
    model = build()
    hops = _hops(batch=7, levels=4, dim=6)
    labels_in = torch.rand(7, 3) if model.uses_labels else None
    out = model(hops, labels_in)
    assert out.shape == (7, 3)
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 0, 1, 2, 0])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_gamlp_label_branch_requires_label_input():
    model = models.gamlp(6, 3, 2, hidden=8, label_layers=1)
    with pytest.raises(ValueError, match="label_input"):
        model(_hops(levels=3))
    with pytest.raises(ValueError, match="'recursive' or 'jk'"):
        models.gamlp(6, 3, 2, attention="gat")


# -------------------------------------------------------------------------------------------------------- training
def test_gamlp_learns_a_planted_partition_well_above_chance(small_task):
    graph, x, y, split = small_task
    features = InMemoryHops(LaplacianOp(4)(graph, x))
    raw = InMemoryHops([x])
    config = TrainConfig(epochs=40, batch_size=128, lr=5e-3, patience=10, seed=0)
    gamlp = fit(lambda _: models.gamlp(16, 4, 4, hidden=32, dropout=0.2), features, y, split, 4, config)[0]
    mlp = fit(lambda _: models.sgc(16, 4, 1, hidden=32, layers=2), raw, y, split, 4, config)[0]
    assert gamlp.test_acc > 0.25 + 0.45                  # chance is 1/4
    assert gamlp.test_acc > mlp.test_acc + 0.1           # the hops carry the label signal the features lack


def test_training_is_deterministic_for_a_seed(small_task):
    graph, x, y, split = small_task
    features = InMemoryHops(LaplacianOp(2)(graph, x))
    config = TrainConfig(epochs=3, batch_size=256, seed=7)
    runs = [fit(lambda _: models.gamlp(16, 4, 2, hidden=16), features, y, split, 4, config)[0] for _ in range(2)]
    np.testing.assert_array_equal(runs[0].eval_logits, runs[1].eval_logits)


def test_rlu_stage_two_seeds_labels_with_confident_pseudo_labels(small_task):
    graph, x, y, split = small_task
    features = InMemoryHops(LaplacianOp(3)(graph, x))
    seeds: list[np.ndarray] = []
    propagate = graph_label_propagator(graph, LaplacianOp(3))

    def recording(ids: np.ndarray, rows: np.ndarray):
        seed = np.zeros((graph.num_nodes, 4), np.float32)
        seed[ids] = rows
        seeds.append(seed)
        return propagate(ids, rows)

    rlu = RLUConfig(stage_epochs=(25, 8), threshold=0.9, temperature=0.5, gamma=1.0)
    config = TrainConfig(batch_size=128, lr=5e-3, patience=8, seed=1)
    stages = fit(lambda _: models.gamlp(16, 4, 3, hidden=32, dropout=0.2, label_layers=2), features, y, split, 4,
                 config, rlu, recording)
    assert len(stages) == len(seeds) == 2
    first, second = stages
    teacher = second.teacher
    assert first.teacher is None and teacher is not None and len(teacher.ids) > 0
    assert np.isin(teacher.ids, split.evaluated).all()
    assert (teacher.probs.max(1) > 0.9).all()
    scaled = first.eval_logits / 0.5                      # the teacher is stage 1's best model at temperature T
    expected = np.exp(scaled - scaled.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    position = {int(v): i for i, v in enumerate(split.evaluated)}
    np.testing.assert_allclose(teacher.probs, expected[[position[int(i)] for i in teacher.ids]], rtol=1e-5)
    changed = np.nonzero(np.any(seeds[1] != seeds[0], axis=1))[0]
    np.testing.assert_array_equal(np.sort(changed), np.sort(teacher.ids))       # only the confident rows changed
    np.testing.assert_array_equal(seeds[1][teacher.ids], teacher.probs)
    np.testing.assert_array_equal(seeds[1][split.train], np.eye(4, dtype=np.float32)[y[split.train]])
    assert second.pseudo_acc > 0.8


def test_folded_label_input_keeps_each_seed_out_of_its_own_input(tiny_graph):
    propagate = graph_label_propagator(tiny_graph, LaplacianOp(2))
    ids = np.array([0, 2, 3, 5, 7, 9], np.int64)
    rows = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]]
    source = folded_label_input(propagate, ids, rows, 12, 3, np.random.default_rng(0))
    assert isinstance(source, FoldedLabels)
    p2 = np.linalg.matrix_power(dense_norm(dense_from_csr(tiny_graph), 0.5), 2)
    out = source.fetch(np.arange(12, dtype=np.int64))[0]
    for node, row in zip(ids, rows):
        others = source.fold_of[ids] != source.fold_of[node]
        seed = np.zeros((12, 3))
        seed[ids[others]] = rows[others]
        np.testing.assert_allclose(out[node], (p2 @ seed)[node], rtol=1e-4, atol=1e-6)
    full = np.zeros((12, 3))
    full[ids] = rows
    rest = np.setdiff1d(np.arange(12), ids)
    np.testing.assert_allclose(out[rest], (2 / 3) * (p2 @ full)[rest], rtol=1e-4, atol=1e-6)
    assert folded_label_input(propagate, ids, rows, 12, 1, np.random.default_rng(0)).fetch(ids)[0].shape == (6, 3)


def test_fit_with_label_folds_propagates_once_per_fold_and_stage(small_task):
    graph, x, y, split = small_task
    features = InMemoryHops(LaplacianOp(2)(graph, x))
    propagate = graph_label_propagator(graph, LaplacianOp(2))
    calls: list[int] = []

    def counting(ids: np.ndarray, rows: np.ndarray):
        calls.append(len(ids))
        return propagate(ids, rows)

    rlu = RLUConfig(stage_epochs=(3, 2), threshold=0.5)
    stages = fit(lambda _: models.gamlp(16, 4, 2, hidden=16, label_layers=1), features, y, split, 4,
                 TrainConfig(batch_size=256, seed=0), rlu, counting, label_folds=3)
    assert len(calls) == 6
    assert sum(calls[:3]) == 2 * len(split.train)          # every seed sits out exactly one of the three folds
    assert sum(calls[3:]) == 2 * (len(split.train) + len(stages[1].teacher.ids))
    with pytest.raises(ValueError, match="label_folds"):
        fit(lambda _: models.gamlp(16, 4, 2, hidden=16), features, y, split, 4, TrainConfig(epochs=1), None,
            counting, label_folds=0)


def test_predict_reads_the_label_branch_input(small_task):
    graph, x, y, split = small_task
    features = InMemoryHops(LaplacianOp(2)(graph, x))
    torch.manual_seed(0)
    model = models.gamlp(16, 4, 2, hidden=16, label_layers=1)
    ids = split.valid[:50]
    zero = InMemoryHops([np.zeros((graph.num_nodes, 4), np.float32)])
    ones = InMemoryHops([np.ones((graph.num_nodes, 4), np.float32)])
    assert not np.allclose(predict(model, features, ids, zero), predict(model, features, ids, ones))


def test_select_last_keeps_the_final_epoch_and_never_stops_early(small_task):
    graph, x, y, split = small_task
    features = InMemoryHops(LaplacianOp(2)(graph, x))
    config = TrainConfig(epochs=6, batch_size=512, lr=0.05, patience=1, seed=3, select="last")
    torch.manual_seed(0)
    model = models.sgc(16, 4, 2)
    result = fit(lambda _: model, features, y, split, 4, config)[0]
    assert result.epochs_run == result.best_epoch == 6                # patience 1 did not stop it
    np.testing.assert_allclose(result.eval_logits, predict(model, features, split.evaluated), rtol=1e-6)
    with pytest.raises(ValueError, match="select must be one of"):
        TrainConfig(select="best_test")


class CountingHops:
    """A HopSource that records which ids it was asked for (the cache must ask once per id)."""

    def __init__(self, inner: InMemoryHops) -> None:
        self.inner, self.asked = inner, []

    def fetch(self, node_ids: np.ndarray) -> list[np.ndarray]:
        self.asked.append(np.array(node_ids))
        return self.inner.fetch(node_ids)


def test_cached_hops_pull_their_ids_once_and_answer_any_id_like_the_source(small_task):
    graph, x, y, split = small_task
    levels = LaplacianOp(2)(graph, x)
    source = CountingHops(InMemoryHops(levels))
    kept = np.concatenate([split.valid, split.train, split.train[:9]])      # any order, repeats
    cache = CachedHops.pull(source, kept, rows_per_fetch=100)
    unique = len(split.train) + len(split.valid)
    assert cache.nbytes == unique * 3 * 16 * 4
    assert len(source.asked) == -(-unique // 100)
    np.testing.assert_array_equal(np.concatenate(source.asked), np.union1d(split.train, split.valid))
    source.asked.clear()
    batch = np.random.default_rng(0).choice(split.train, 100)
    for got, want in zip(cache.fetch(batch), levels):
        np.testing.assert_array_equal(got, want[batch])
    assert source.asked == []                                                 # answered from RAM
    mixed = np.concatenate([split.test[:7], split.valid[:5], [graph.num_nodes - 1]])
    for got, want in zip(cache.fetch(mixed), levels):
        np.testing.assert_array_equal(got, want[mixed])
    misses = mixed[~np.isin(mixed, kept)]
    np.testing.assert_array_equal(np.concatenate(source.asked), misses)       # only the misses went to the source


def test_split_and_sources_reject_bad_inputs():
    with pytest.raises(GraphError, match="disjoint"):
        Split(np.array([0, 1]), np.array([1, 2]), np.array([3]))
    with pytest.raises(GraphError, match="int64"):
        Split(np.array([0.0]), np.array([1]), np.array([2]))
    with pytest.raises(GraphError, match="same 2-D"):
        InMemoryHops([np.zeros((3, 2), np.float32), np.zeros((4, 2), np.float32)])
    with pytest.raises(ValueError, match="threshold"):
        RLUConfig(threshold=1.0)


# ------------------------------------------------------------------------------------------------ post-processing
def test_label_propagation_post_resets_training_rows_then_propagates(tiny_graph):
    logits = np.random.default_rng(5).standard_normal((12, 3)).astype(np.float32)
    labels = np.arange(12) % 3
    train = np.array([0, 4, 8], np.int64)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probs[train] = np.eye(3)[labels[train]]
    p = dense_norm(dense_from_csr(tiny_graph), 0.5)
    out = LabelPropagationPost(LaplacianOp(2))(tiny_graph, logits, labels, train)
    np.testing.assert_allclose(out, p @ p @ probs, rtol=1e-4, atol=1e-5)
    mean = LabelPropagationPost(LaplacianOp(2), MeanMessage())(tiny_graph, logits, labels, train)
    np.testing.assert_allclose(mean, (probs + p @ probs + p @ p @ probs) / 3, rtol=1e-4, atol=1e-5)


def test_post_processing_improves_a_weak_classifier(small_task):
    graph, x, y, split = small_task
    rng = np.random.default_rng(0)
    logits = (np.eye(4)[y] * 1.0 + rng.standard_normal((len(y), 4)) * 1.2).astype(np.float32)   # ~60% right
    before = float((logits[split.test].argmax(1) == y[split.test]).mean())
    model = models.SGAPModel(LaplacianOp(2), LastMessage(), torch.nn.Identity(),
                             post=LabelPropagationPost(LaplacianOp(3)))
    lp = model.postprocess(graph, logits, y, split.train)
    cs = CorrectAndSmooth(correct_iters=20, smooth_iters=20)(graph, logits, y, split.train)
    for scores in (lp, cs):
        assert scores.shape == logits.shape
        assert float((scores[split.test].argmax(1) == y[split.test]).mean()) > before + 0.15
    assert math.isfinite(float(cs.sum()))
    assert models.SGAPModel(LaplacianOp(2), LastMessage(), torch.nn.Identity()).postprocess(
        graph, logits, y, split.train) is logits
