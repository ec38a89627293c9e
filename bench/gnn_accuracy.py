"""Scalable GNNs' test accuracy, mean ± std over seeds: on a generated DC-SBM (GAMLP against SGC and SIGN built from
the same hops, and what RLU adds) or on Cora and CiteSeer (each model with its authors' settings, next to the
published figures, and GAMLP through ``seraphim run`` against the same training in one process).

**DC-SBM (``--data dcsbm``, the default).** ``graph_gen``'s degree-corrected SBM (power-law degrees, class-mean
features under heavy noise), with a fraction ``--mislinked`` of the nodes whose links ignore the classes (every edge
touching such a node gets a uniformly random other end; think spam accounts or cross-topic hubs). That mixture is
where hop attention earns its keep: for most nodes the label lives in 2-6 hop averages, for the mislinked ones only
in their own features, and which is which must be read off each node's hops. On a homogeneous DC-SBM
(``--mislinked 0``) every node wants about the same hops, and SIGN's learned but node-independent hop weighting is
as good (there SIGN led GAMLP by a few tenths of a point). Every model reads the same ``[X^(0..K)]`` (``Â`` with
``r``), the same split, hidden width, dropout, learning rate, epoch budget and early stopping. SGC gets the same MLP
head as SIGN (stronger than its logistic regression). GAMLP is the authors' OGB configuration scaled down: per-hop
2-layer MLP, recursive (or JK) attention with attention dropout, input residual, 4-layer initial-residual output
MLP. GAMLP+RLU adds the label branch (``--label-layers``) over ``--label-hops`` hops of the training labels (stage 0;
``--label-folds`` keeps each seed's own label out of its input, which otherwise returns through ``Â^K`` and is learnt
as a shortcut on training nodes) and then RLU stages (confident valid/test predictions as extra label seeds plus
distillation); its accuracy is that of the stage with the best validation accuracy (every stage is printed). Each
seed draws a new graph, split and initialization.

**Cora and CiteSeer (``--data cora|citeseer``).** The Planetoid public split (20 labels a class, 500 valid, 1000
test) from ``../shared/planetoid/convert.py``: bag-of-words rows divided by their sums, ``Â = D̃^-1/2 (A+I) D̃^-1/2``
(GCN's and every author's preprocessing). Each model runs with its authors' settings and protocol over ``--seeds``
seeds (initialization and dropout; the split is fixed); the models' settings are ``examples/gamlp_<data>.yaml``
(GAMLP-R) with the overrides in ``PLANETOID_OVERRIDES``:

* SGC (Tiiiger/SGC): K = 2, logistic regression, Adam lr 0.2 with its authors' tuned weight decay (Cora 1.30e-5,
  CiteSeer 2.35e-5), 100 (CiteSeer 150) full-batch epochs, the last epoch's weights.
* SIGN, GAMLP-R, GAMLP-JK (PKU-DAIR/SGL's Cora scripts, the GAMLP authors' own library; no Cora settings are
  published elsewhere, and SIGN's are used unchanged on CiteSeer): Adam lr 0.01, weight decay 5e-4, the best
  validation epoch's test accuracy; SIGN and GAMLP-R full batch for 200 epochs. SIGN: the raw hops 0..6
  concatenated into a 2-layer MLP of width 64. GAMLP-R: recursive attention with a sigmoid score over the raw hops
  0..6, a 2-layer head of width 64. GAMLP-JK: JK attention over hops 0..12 (its reference a linear layer of width 32
  over all hops), a 2-layer head of width 32, trained as GBP's Cora script (chennnM/GBP ``transductive.sh``: GAMLP's
  ``layer.py`` adapts GBP's code and its Table 2 prints GBP's figures): mini-batches of 16 training nodes, up to 1000
  epochs, patience 40 on validation accuracy. No batch norm on Cora (SGL's MLP has none).
* GAMLP-R and GAMLP-JK on CiteSeer (``GBP_SETTINGS``; no CiteSeer settings of GAMLP's own are published): GBP's
  CiteSeer line of ``transductive.sh`` and its ``model.py``: ``r = 0.4``, dropout 0.5 on the input, batch norm in
  every hidden layer, Adam weight decay 0.2 (with batch norm it mostly raises the effective step of the normalized
  layers), mini-batches of 64, up to 1000 epochs; patience 100 (``citation.py``'s default) instead of the script's
  20, which stopped one seed in ten inside the unstable first 25 epochs (GAMLP-R seed 9: valid 45.8, test 46.6;
  with patience 100: 73.0, 73.0). GBP's propagation itself (PPR by push, alpha 0.15) is not taken: GAMLP attends
  over the hops.

What each difference from the settings the first ``seraphim run`` used was worth on Cora (test accuracy, 10 seeds,
or 5 where marked; SGC 80.2, SIGN 78.8, GAMLP 79.1-79.5 at the time):

=====================================================================================  ==========================
SGC: the best validation epoch -> the last epoch (SGC's protocol)                      80.0 -> 81.0 ± 0.04
SIGN: per-hop linear layers and a batch-norm MLP (the OGB design) -> raw concat, no BN  79.6 ± 1.4 -> 82.3 ± 0.5
SIGN: the per-hop design without batch norm                                            78.6 ± 0.4 (5)
GAMLP-R (SGL's design): batch norm in the head -> none                                 80.3 ± 0.5 -> 82.4 ± 0.9
GAMLP-R: the OGB design (per-hop 2-layer MLPs, 4-layer initial-residual head) with BN  80.7 ± 1.2
GAMLP-R: the OGB design without batch norm                                             37.8 ± 3.6 (5): diverges
GAMLP-JK: the OGB design with BN -> SGL's                                              80.8 ± 1.2 -> 82.0 ± 0.6
GAMLP-R, one change each from SGL's settings (5 seeds each): K = 10                    82.3
  input dropout 0.5 / attention dropout 0.5 / leaky-ReLU score / width 512              81.8 / 82.1 / 81.7 / 81.6
  label branch over 9 hops of the training labels, as published (own labels leak)      82.4
  + 3 RLU stages (own labels leak) / with 4 label folds                                 81.6 / 82.5
  50 epochs with patience 20 (the job's defaults)                                       81.8
2 workers instead of 1 through ``seraphim run`` (seeds 0, 1)                            81.5, 81.0 -> 82.1, 81.3
GAMLP-JK: full batch, 200 epochs, L2 5e-6 -> GBP's batches of 16, patience 40, L2 5e-4  82.0 ± 0.6 -> 83.0 ± 0.9
  the same with L2 5e-6 (5 seeds) / CiteSeer, L2 5e-6 (5 seeds; full batch 69.5)        83.2 / 70.9
GAMLP-R in GBP's batches of 16 / of 64 (5 seeds) / CiteSeer, batches of 16 (5 seeds)    82.3 / 82.0 / 71.3
GAMLP-R, 200 full-batch epochs in a plain loop (other seeds), the test accuracy of the   81.4 / 81.0 / 80.0 / 83.3
  epoch chosen by: the best validation accuracy / lowest validation loss / last / test
=====================================================================================  ==========================

So SGC's gap was its selection protocol, SIGN's and GAMLP's batch norm (on 140 labelled nodes its batch statistics
are noise), SIGN's per-hop projections and, for GAMLP-JK, full-batch training: in GBP's mini-batches of 16 it
reaches 83.0 ± 0.9 on Cora (published 84.3 ± 0.8; CiteSeer is below). With the authors' settings SGC and SIGN
land on their published figures (Cora 81.0 ± 0.04 vs 81.0; 82.3 ± 0.5 vs 82.1 ± 0.3).
GAMLP-R does not: 82.4 ± 0.9 against 83.9 ± 0.6, and small batches do not move it. The preprocessing, normalization,
split and training loop are the ones that reproduce SGC and SIGN; the model is the authors' (the recursion is tested
against the paper's formula); every change in the authors' search space we tried stays within 82.5; an independent
plain-torch GAMLP-R on the same data gave 82.0.

What is left is the selection protocol. The script behind GAMLP's Cora and CiteSeer figures is not published
(PKU-DAIR/GAMLP and zwt233/Official-GAMLP run OGB, PPI, Reddit and Flickr; Official-GAMLP's ``load_citation`` in
``load_dataset.py`` is called by nothing). The same group's published script for the same table (zwt233/NDLS,
whose Table 2 GAMLP's copies figure for figure, GCN to GBP) keeps, in ``src/train.py`` lines 150-159, the best
*test* accuracy over its post-processing steps, and Official-GAMLP's ``ppi/ppi.py`` (lines 504-510) prints the
test accuracy of the ten lowest validation losses to pick from. With the epoch chosen on the test set
(``test_<model>_chosen_on_test_mean``, from the same runs, 10 seeds) Cora gives GAMLP-R 83.4 (published
83.9 ± 0.6) and GAMLP-JK 84.2 (84.3 ± 0.8), about a point above what the validation set chooses (SGC, whose protocol
has no choice, 81.2 against 81.0): the published GAMLP figures sit where this model lands when the test set chooses.
On CiteSeer (10 seeds): SGC 71.8 ± 0.0 (published 71.9), SIGN 71.8 ± 0.5 (72.4 ± 0.8).

GAMLP on CiteSeer. With SGL's Cora settings (and GBP's Cora batches for JK) GAMLP-R gave 71.3 ± 0.6 and GAMLP-JK
71.7 ± 1.1 (72.2 and 72.8 chosen on test). GBP's CiteSeer regularization is what moves it; test accuracy with the
epoch chosen on validation / on test (``_chosen_on_test``), seeds 0-9 or 0-2 where marked:

=====================================================================  ======================  ======================
CiteSeer                                                               GAMLP-JK                GAMLP-R
=====================================================================  ======================  ======================
SGL's Cora settings (JK: GBP's Cora batches of 16)                     71.7 ± 1.1 / 72.8       71.3 ± 0.6 / 72.2
GBP's CiteSeer settings, its patience 20                               72.3 ± 1.0 / 73.6       70.0 ± 8.2 / 71.0
  (GAMLP-R seed 9 stopped at epoch 23, test 46.6; the other nine 72.6)
GBP's CiteSeer settings, patience 100 (``GBP_SETTINGS``)               72.4 ± 1.1 / 73.8       72.6 ± 0.6 / 74.0
  patience 20, seeds 0-2 only                                          73.4 / 74.2             72.7 / 73.9
  without the input dropout, patience 20 (3 seeds)                     72.8 / 73.5             72.9 / 73.6
  batch norm and batches of 64 with L2 5e-4 instead of 0.2 (3 seeds)   66.4 / 66.8             68.7 / 69.1
Optuna's validation pick (below), patience 20                          71.7 ± 1.0 / 72.6       -
published (GAMLP's Table 2)                                            74.6 ± 0.4              73.9 ± 0.6
=====================================================================  ======================  ======================

Batch norm without the heavy weight decay costs 3-5 points (as on Cora); with it, GBP's settings as a whole gain
0.7 (JK) and 1.3 (R) points over SGL's.
A search selected on validation does not go further: Optuna TPE (GAMLP-JK, objective the mean validation accuracy
of seeds 100 and 101, GBP's settings enqueued as trial 0; L2 1e-3..0.5, batches 16/32/64/120, input dropout 0..0.8,
dropout 0.2..0.8, r 0.4/0.5, 8/12/16 hops, width 32/64/128, batch norm on/off, lr 3e-3..3e-2) ran 4 trials in the
14 minutes it had (1-5 minutes a trial on this shared machine). GBP's settings gave valid 74.1, test 72.8; the
validation winner (valid 74.6: L2 0.126, batches of 32, input dropout 0.62, dropout 0.27, 8 hops, width 64) tested
70.3 on the same seeds; on seeds 0-9 it gives the row above. 500 validation nodes give a setting's validation
accuracy a standard error near 2 points, so validation cannot rank settings a point apart, and a search on it picks
noise as readily as signal.

Where the published CiteSeer figures would have to come from. GAMLP-R's 73.9 ± 0.6 is where this model lands when
the test set chooses the epoch (74.0 over seeds 0-9); the validation set chooses 1.3 points lower (72.6 ± 0.6), the
same gap as on Cora (82.4 against 83.4): the protocol of the group's published script for this table (above).
GAMLP-JK's 74.6 ± 0.4 is 0.8 above even its test-chosen 73.8 and 2.2 above its validation-chosen 72.4 ± 1.1, so it
needs the test-chosen epoch plus settings found with the test set in view (no CiteSeer settings of GAMLP's are
published to check) or luck in the seeds: its best seed here gives 74.5 on validation's choice. Validation cannot
find such settings honestly: on 500 nodes it does not separate settings a point apart (the search above).

The time figure: GAMLP-R through ``seraphim run`` (1 PS, 1 worker that holds its split's hop rows, model and Adam
on the PS) trains the same batches as the in-process run of the same seed (the test accuracy comes out equal) in
``job_train_s_gamlp_r`` seconds, against ``in_memory_train_s_gamlp_r`` (the faster of the in-process runs before
and after the job, Adam's first-step import paid beforehand): ``ratio_time_vs_in_memory``.

    python bench/gnn_accuracy.py [--nodes 30000] [--seeds 3] [--mislinked 0.25] [--models sgc,sign,gamlp,gamlp_jk,rlu]
    python bench/gnn_accuracy.py --data cora [--planetoid DIR] [--seeds 10] [--models sgc,sign,gamlp_jk,gamlp_r]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from common import print_figures
from e2e import run_job
from seraphim.algorithms.gnn import models
from seraphim.algorithms.gnn.csr import CSRGraph
from seraphim.algorithms.gnn.graph_gen import DCSBMSpec, generate
from seraphim.algorithms.gnn.graph_io import GraphData, convert_ogb, csr_from_edges
from seraphim.algorithms.gnn.job import GNNSpec, build_model
from seraphim.algorithms.gnn.operators import LaplacianOp
from seraphim.algorithms.gnn.train import (
    InMemoryHops, RLUConfig, Split, StageResult, TrainConfig, accuracy, fit, graph_label_propagator, predict,
)

REPO = Path(__file__).resolve().parents[1]
MODELS = ("sgc", "sign", "gamlp", "gamlp_jk", "rlu")
PLANETOID = ("cora", "citeseer")
PLANETOID_MODELS = ("sgc", "sign", "gamlp_jk", "gamlp_r")
#: test accuracy (%) on the public split, mean and std: GAMLP's Table 2 (SIGN, GAMLP) and SGC's own README (no std)
PUBLISHED: dict[str, dict[str, tuple[float, float | None]]] = {
    "cora": {"sgc": (81.0, None), "sign": (82.1, 0.3), "gamlp_jk": (84.3, 0.8), "gamlp_r": (83.9, 0.6)},
    "citeseer": {"sgc": (71.9, None), "sign": (72.4, 0.8), "gamlp_jk": (74.6, 0.4), "gamlp_r": (73.9, 0.6)},
}


def mislink(graph: CSRGraph, fraction: float, seed: int) -> CSRGraph:
    """Every undirected edge touching a node of a random ``fraction`` gets a uniformly random other end."""
    if fraction <= 0:
        return graph
    rng = np.random.default_rng([seed, 77])
    n = graph.num_nodes
    bad = rng.random(n) < fraction
    rows = np.repeat(np.arange(n, dtype=np.int64), graph.degrees())
    upper = rows < graph.indices
    s, t = rows[upper], graph.indices[upper]
    t = np.where(bad[s], rng.integers(0, n, len(t)), t)
    s = np.where(~bad[s] & bad[t], rng.integers(0, n, len(s)), s)
    return csr_from_edges(s, t, n)


def make_task(args: argparse.Namespace, seed: int) -> tuple[CSRGraph, np.ndarray, np.ndarray, Split]:
    spec = DCSBMSpec(nodes=args.nodes, classes=args.classes, feature_dim=args.feature_dim, snr=args.snr,
                     avg_degree=args.avg_degree, homophily=args.homophily, degree_exponent=args.degree_exponent,
                     train_fraction=args.train_fraction, valid_fraction=args.valid_fraction, seed=seed)
    with tempfile.TemporaryDirectory(prefix="gnn_accuracy_") as tmp:
        data = generate(spec, tmp)
        graph = CSRGraph(np.array(data.graph.indptr), np.array(data.graph.indices))
        task = (np.array(data.features), np.array(data.labels),
                Split(np.array(data.train_idx), np.array(data.valid_idx), np.array(data.test_idx)))
    return (mislink(graph, args.mislinked, seed), *task)


def builders(args: argparse.Namespace) -> dict[str, Callable[[int], torch.nn.Module]]:
    d, c, k, h = args.feature_dim, args.classes, args.hops, args.hidden
    drop, in_drop, att = args.dropout, args.input_dropout, args.att_dropout

    def gamlp(attention: str, label_layers: int = 0) -> Callable[[int], torch.nn.Module]:
        return lambda _: models.gamlp(d, c, k, attention=attention, hidden=h, dropout=drop, input_dropout=in_drop,
                                      att_dropout=att, residual=True, label_layers=label_layers,
                                      label_dropout=args.label_dropout, r=args.r)

    return {
        "sgc": lambda _: models.sgc(d, c, k, hidden=h, layers=3, dropout=drop, r=args.r),
        "sign": lambda _: models.sign(d, c, k, hidden=h, layers=2, dropout=drop, input_dropout=in_drop, r=args.r),
        "gamlp": gamlp("recursive"),
        "gamlp_jk": gamlp("jk"),
        "rlu": gamlp(args.rlu_attention, label_layers=args.label_layers),
    }


def mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):6.2f} ± {100 * sd:4.2f}"


def paired(name: str, a: list[float], b: list[float]) -> None:
    """Mean and std of the per-seed differences a - b (in points), and whether the mean clears both spreads."""
    diff = [x - y for x, y in zip(a, b)]
    spread = max(statistics.stdev(a), statistics.stdev(b)) if len(a) > 1 else 0.0
    mean = statistics.fmean(diff)
    sd = statistics.stdev(diff) if len(diff) > 1 else 0.0
    print(f"{name}: {100 * mean:+.2f} points (paired std {100 * sd:.2f}; largest model std {100 * spread:.2f}; "
          f"beyond_spread={'yes' if mean > spread and mean > sd else 'no'})")


#: SGL's citation-graph training (SIGN; GAMLP-R on Cora): full batch, Adam lr 0.01, L2 5e-4, 200 epochs, the best
#: validation epoch; the batch size is the dataset's number of training nodes
SGL_TRAINING = {"epochs": 200, "lr": 0.01, "weight_decay": 5e-4, "patience": 200, "select": "best_valid"}
TRAIN_NODES = {"cora": 140, "citeseer": 120}
#: GBP's per-dataset settings (chennnM/GBP ``transductive.sh`` and ``model.py``): ``r`` of the propagation, the
#: training, and the regularization inside the model (batch norm in every hidden layer, dropout on the input).
#: GAMLP-JK takes them on both graphs, GAMLP-R on CiteSeer (``examples/gamlp_citeseer.yaml``).
GBP_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "cora": {"propagation": {"r": 0.5}, "training": {"batch_size": 16, "epochs": 1000, "patience": 40,
                                                     "weight_decay": 5e-4},
             "options": {"batch_norm": False, "input_dropout": 0.0}},
    "citeseer": {"propagation": {"r": 0.4}, "training": {"batch_size": 64, "epochs": 1000, "patience": 100,
                                                         "weight_decay": 0.2},
                 "options": {"batch_norm": True, "input_dropout": 0.5}},
}

#: Each model's settings over the example's ``train`` section (examples/gamlp_<data>.yaml: GAMLP-R as its authors
#: ran it); ``model`` replaces the example's, ``propagation`` and ``training`` entries override its keys.
PLANETOID_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    data: {
        "sgc": {"propagation": {"hops": 2, "r": 0.5}, "model": {"kind": "sgc", "options": {"layers": 1}},
                "training": {**SGL_TRAINING, "batch_size": TRAIN_NODES[data], "epochs": sgc_epochs, "lr": 0.2,
                             "weight_decay": sgc_wd, "select": "last"}},
        "sign": {"propagation": {"r": 0.5}, "training": {**SGL_TRAINING, "batch_size": TRAIN_NODES[data]},
                 "model": {"kind": "sign", "options": {"hidden": 64, "hop_layers": 0, "layers": 2, "dropout": 0.5,
                                                        "batch_norm": False}}},
        "gamlp_jk": {"propagation": {"hops": 12, **GBP_SETTINGS[data]["propagation"]},
                     "model": {"kind": "gamlp", "options": {"attention": "jk", "hidden": 32, "hop_layers": 0,
                                                             "jk_layers": 1, "out_layers": 2, "act": "sigmoid",
                                                             "dropout": 0.5, **GBP_SETTINGS[data]["options"]}},
                     "training": GBP_SETTINGS[data]["training"]},
        "gamlp_r": {},
    }
    for data, sgc_epochs, sgc_wd in (("cora", 100, 1.3027e-5), ("citeseer", 150, 2.3546e-5))
}


def planetoid_source(given: Path | None, tmp: Path) -> Path:
    """The directory holding ``cora/`` and ``citeseer/`` as ``convert.py`` writes them: ``given``, or converted now
    into ``tmp`` by ``../shared/planetoid/convert.py`` beside the repository."""
    if given is not None:
        if not (given / "cora").is_dir() or not (given / "citeseer").is_dir():
            sys.exit(f"--planetoid {given}: expected the folders cora/ and citeseer/ that "
                     f"`python ../shared/planetoid/convert.py --out {given}` writes")
        return given
    script = REPO.parent / "shared" / "planetoid" / "convert.py"
    if not script.exists():
        sys.exit(f"no Planetoid data: pass --planetoid DIR, written by `python ../shared/planetoid/convert.py "
                 f"--out DIR` (looked for {script})")
    subprocess.run([sys.executable, str(script), "--out", str(tmp)], check=True, stdout=sys.stderr)
    return tmp


def model_settings(example_train: dict[str, Any], override: dict[str, dict[str, Any]]) -> GNNSpec:
    """The example's ``train`` section with one model's overrides applied (see PLANETOID_OVERRIDES)."""
    train = copy.deepcopy(example_train)
    for section, values in override.items():
        train[section] = copy.deepcopy(values) if section == "model" else {**train.get(section, {}), **values}
    return GNNSpec.model_validate(train)


def in_memory_runs(spec: GNNSpec, data: GraphData, hops: dict[tuple[int, float], InMemoryHops],
                   seeds: range) -> tuple[list[float], list[float], list[float]]:
    """Test accuracies, training seconds and the best test accuracy of any evaluated epoch (the figure a run
    reports when its epoch is chosen on the test set; its evaluations are not counted in the seconds) of the
    spec's model for each seed, trained in this process on hop matrices computed here (``hops`` caches them by
    (K, r))."""
    p = spec.propagation
    key = (p.hops, p.r)
    if key not in hops:
        graph = CSRGraph(np.asarray(data.graph.indptr), np.asarray(data.graph.indices))
        hops[key] = InMemoryHops(LaplacianOp(p.hops, p.r)(graph, np.asarray(data.features)))
    split = Split(np.asarray(data.train_idx), np.asarray(data.valid_idx), np.asarray(data.test_idx))
    labels, dim = np.asarray(data.labels), data.features.shape[1]
    accs, seconds, chosen_on_test = [], [], []
    for seed in seeds:
        config = TrainConfig(**{**spec.training.model_dump(exclude={"hop_cache_mb"}), "seed": seed})
        built: list[torch.nn.Module] = []
        test_by_epoch: list[float] = []
        peek_s = 0.0

        def build(stage: int) -> torch.nn.Module:
            built.append(build_model(spec, dim, data.num_classes))
            return built[-1]

        def peek(epoch: int, valid_acc: float) -> None:
            nonlocal peek_s
            begin = time.perf_counter()
            test_by_epoch.append(accuracy(predict(built[-1], hops[key], split.test), labels[split.test]))
            peek_s += time.perf_counter() - begin

        start = time.perf_counter()
        result = fit(build, hops[key], labels, split, data.num_classes, config, on_eval=peek)[-1]
        seconds.append(time.perf_counter() - start - peek_s)
        accs.append(result.test_acc)
        chosen_on_test.append(max(test_by_epoch))
    return accs, seconds, chosen_on_test


def warm_up_adam() -> None:
    """torch.optim.Adam's first step imports torch._dynamo (seconds); pay it before anything is timed."""
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([weight])
    weight.sum().backward()
    optimizer.step()


def planetoid_main(args: argparse.Namespace) -> None:
    """Every model on a Planetoid graph over --seeds seeds, next to the published figures; then GAMLP-R through
    ``seraphim run`` (the example job, its seed) against the same run in this process."""
    example = yaml.safe_load((REPO / "examples" / f"gamlp_{args.data}.yaml").read_text())
    chosen = [m for m in args.models.split(",")] if args.models else list(PLANETOID_MODELS)
    unknown = set(chosen) - set(PLANETOID_MODELS)
    if unknown:
        sys.exit(f"unknown models {sorted(unknown)} for --data {args.data}; choose from {PLANETOID_MODELS}")
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="gnn_planetoid_") as tmp_name:
        tmp = Path(tmp_name)
        source = planetoid_source(args.planetoid, tmp / "planetoid") / args.data
        data = convert_ogb(source, tmp / "csr")
        print(f"{args.data}: {data.graph.num_nodes} nodes, {data.graph.num_edges} stored edges, "
              f"{data.features.shape[1]} features, {data.num_classes} classes, split {len(data.train_idx)}/"
              f"{len(data.valid_idx)}/{len(data.test_idx)}; {args.seeds} seeds; torch threads "
              f"{torch.get_num_threads()}", flush=True)
        hops: dict[tuple[int, float], InMemoryHops] = {}
        seconds: dict[str, list[float]] = {}
        warm_up_adam()
        for name in chosen:
            spec = model_settings(example["train"], PLANETOID_OVERRIDES[args.data][name])
            accs, seconds[name], on_test = in_memory_runs(spec, data, hops, range(args.seeds))
            mean, sd = 100 * statistics.fmean(accs), 100 * (statistics.stdev(accs) if len(accs) > 1 else 0.0)
            peeked = 100 * statistics.fmean(on_test)
            pub_mean, pub_sd = PUBLISHED[args.data][name]
            print(f"{name:9s} test {mean:6.2f} ± {sd:4.2f}  published {pub_mean}"
                  + (f" ± {pub_sd}" if pub_sd is not None else "")
                  + f"  epoch chosen on test {peeked:6.2f}  ({statistics.fmean(seconds[name]):.1f} s/seed)  per seed: "
                  + " ".join(f"{100 * a:.1f}" for a in accs), flush=True)
            figures.update({f"test_{name}_mean": mean, f"test_{name}_std": sd, f"published_{name}_mean": pub_mean,
                            f"test_{name}_chosen_on_test_mean": peeked})
        if "gamlp_r" in seconds and not args.skip_job:
            job = {**example, "name": f"{example['name']}-bench",
                   "train": {**example["train"], "graph": {"ogb": str(source)}}}
            (tmp / "runs").mkdir()
            run_dir, _ = run_job(job, tmp / "runs")
            result = json.loads((run_dir / "results.json").read_text())["worker-0"]
            seed = example["train"]["training"].get("seed", 0)
            again = in_memory_runs(model_settings(example["train"], PLANETOID_OVERRIDES[args.data]["gamlp_r"]),
                                   data, hops, range(seed, seed + 1))[1][0]     # once more, right after the job
            in_memory = min(seconds["gamlp_r"][seed], again)
            figures.update({"job_test_gamlp_r": 100 * result["test_acc"], "job_train_s_gamlp_r": result["train_s"],
                            "in_memory_train_s_gamlp_r": in_memory,
                            "ratio_time_vs_in_memory": result["train_s"] / in_memory})
    print_figures(figures)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=("dcsbm", *PLANETOID), default="dcsbm",
                   help="dcsbm: the generated graph below; cora, citeseer: the Planetoid public split")
    p.add_argument("--planetoid", type=Path, help="folder with cora/ and citeseer/ from `python "
                   "../shared/planetoid/convert.py --out DIR` (default: convert now with that script)")
    p.add_argument("--skip-job", action="store_true", help="Planetoid: skip the GAMLP run through seraphim run")
    p.add_argument("--nodes", type=int, default=30000)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--feature-dim", type=int, default=64)
    p.add_argument("--snr", type=float, default=2.0)
    p.add_argument("--avg-degree", type=float, default=8.0)
    p.add_argument("--homophily", type=float, default=0.9)
    p.add_argument("--degree-exponent", type=float, default=2.5)
    p.add_argument("--mislinked", type=float, default=0.25)
    p.add_argument("--train-fraction", type=float, default=0.03)
    p.add_argument("--valid-fraction", type=float, default=0.2)
    p.add_argument("--hops", type=int, default=6)
    p.add_argument("--r", type=float, default=0.5)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--input-dropout", type=float, default=0.2)
    p.add_argument("--att-dropout", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--patience", type=int, default=30)
    p.add_argument("--rlu-stages", type=int, default=3)
    p.add_argument("--rlu-attention", choices=["recursive", "jk"], default="recursive")
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--gamma", type=float, default=1.0)
    p.add_argument("--label-hops", type=int, default=6)
    p.add_argument("--label-layers", type=int, default=1)
    p.add_argument("--label-dropout", type=float, default=0.0)
    p.add_argument("--label-r", type=float, default=0.5, help="r of the label propagation (0: mean of neighbours)")
    p.add_argument("--label-folds", type=int, default=4, help="1: GAMLP's label input as published (own labels "
                   "leak back through Â^K); F > 1: each seed's input comes from the other folds")
    p.add_argument("--seeds", type=int, default=None, help="default: 10 on Planetoid, 3 on dcsbm")
    p.add_argument("--models", default="", help=f"dcsbm: some of {MODELS} (default all); Planetoid: some of "
                   f"{PLANETOID_MODELS} (default all)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (a worker's default, 1; 0: torch's own)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data in PLANETOID:
        args.seeds = args.seeds or 10
        planetoid_main(args)
        return
    args.seeds = args.seeds or 3
    chosen = args.models.split(",") if args.models else list(MODELS)
    unknown = set(chosen) - set(MODELS)
    if unknown:
        sys.exit(f"unknown models {sorted(unknown)}; choose from {MODELS}")
    print(f"DC-SBM nodes={args.nodes} classes={args.classes} d={args.feature_dim} snr={args.snr} "
          f"avg_degree={args.avg_degree} homophily={args.homophily} degree_exponent={args.degree_exponent} "
          f"mislinked={args.mislinked} train/valid={args.train_fraction}/{args.valid_fraction}; hops K={args.hops} "
          f"r={args.r}; hidden={args.hidden} dropout={args.dropout}/{args.input_dropout} lr={args.lr} "
          f"batch={args.batch_size} epochs<={args.epochs} patience={args.patience}; torch threads "
          f"{torch.get_num_threads()}")
    build = builders(args)
    acc: dict[str, list[float]] = {name: [] for name in chosen}
    stage_acc: list[list[float]] = []
    seconds: dict[str, float] = {name: 0.0 for name in chosen}
    for seed in range(args.seeds):
        graph, x, y, split = make_task(args, seed)
        features = InMemoryHops(LaplacianOp(args.hops, args.r)(graph, x))
        config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                             seed=seed)
        for name in chosen:
            start = time.perf_counter()
            if name == "rlu":
                rlu = RLUConfig((args.epochs,) * args.rlu_stages, args.threshold, args.temperature, args.gamma)
                stages: list[StageResult] = fit(build[name], features, y, split, args.classes, config, rlu,
                                                graph_label_propagator(graph, LaplacianOp(args.label_hops,
                                                                                          args.label_r)),
                                                label_folds=args.label_folds)
                stage_acc.append([s.test_acc for s in stages])
                detail = " | ".join(s.line() for s in stages)
                stages = [max(stages, key=lambda s: s.valid_acc)]
            else:
                stages = fit(build[name], features, y, split, args.classes, config)
                detail = stages[0].line()
            seconds[name] += time.perf_counter() - start
            acc[name].append(stages[-1].test_acc)
            print(f"seed {seed} {name:9s} test={stages[-1].test_acc:.4f}  [{detail}]", flush=True)

    print(f"\ntest accuracy (%) over {args.seeds} seeds, mean ± std")
    for name in chosen:
        print(f"  {name:9s} {mean_std(acc[name])}   ({seconds[name] / args.seeds:.1f} s/seed)")
    if stage_acc:
        for m in range(len(stage_acc[0])):
            print(f"  rlu stage {m} {mean_std([s[m] for s in stage_acc])}"
                  + ("   (GAMLP + label input, no pseudo labels)" if m == 0 else ""))
    best_gamlp = "gamlp" if "gamlp" in acc else "gamlp_jk"
    if best_gamlp in acc:
        for base in ("sign", "sgc"):
            if base in acc:
                paired(f"gamlp_minus_{base}", acc[best_gamlp], acc[base])
        if "rlu" in acc:
            paired("rlu_gain", acc["rlu"], acc[best_gamlp])
    if stage_acc and len(stage_acc[0]) > 1:
        paired("rlu_stage_gain", acc["rlu"], [s[0] for s in stage_acc])


if __name__ == "__main__":
    main()
