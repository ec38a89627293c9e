"""BeamVQ against the backbone alone and against BeamVQ without the physics filter, per dataset and backbone.

Datasets: 2-D Kolmogorov-forced Navier–Stokes (velocity, 32×32 from a 64×64 pseudo-spectral run) and 2-D rotating
shallow water (h, u, v at 32×32), simulated once each (``--trajectories`` of ``--frames`` frames); every seed draws
its own split of those trajectories into train / pool / test. Backbones: SimVP and FNO (``backbones.PRESETS``).

Per dataset, backbone and seed, three variants see the same split, the same initial backbone weights (same torch
seed), the same number of optimizer steps (``--steps``, batch ``--batch-size``, Adam with the same schedule):

- ``backbone``: the forecaster alone, every batch from the training pairs;
- ``beamvq_nofilter``: the code bank beside the forecaster; after ``--warmup`` of the steps, ``--rounds``
  self-training rounds add every beam-search candidate to the training set (the public script's choice);
- ``beamvq_nonudge``: the same, keeping only each input's cheapest candidate per rollout step by the physics cost
  (plus the MSE against the truth where it is known);
- ``beamvq``: that, with each kept candidate given the energy spectrum of its real input (``nudging.py``).

With ``--commitment 0 --branch-weight 0`` (the default) the code bank does not train the forecaster, so the three
BeamVQ variants are the backbone, bit for bit, until the first round.

Scored on the test trajectories by a ``--eval-steps`` rollout: ``mse`` (standardized fields), ``skill`` (1 − mse /
the MSE of holding the last input frame: persistence), each physics metric against the truth (``physics_*``, lower
is better) and their mean ``physics``, each as ``<dataset>_<backbone>_<metric>_<variant>: mean (sd ...)`` over the
seeds. At the end:
``pairs_total`` (dataset × backbone), ``pairs_physics_improved`` and ``pairs_skill_improved`` (BeamVQ's mean better
than the backbone's), ``pair_metrics_improved`` of ``pair_metrics_total`` (each physics metric of each pair on its
own), the same two counts for the filter against no filter, and the wall time.

    nice -n 10 python bench/beamvq.py [--seeds 3] [--steps 300] [--datasets navier_stokes,shallow_water]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from seraphim.algorithms.beamvq.backbones import PRESETS, build_backbone
from seraphim.algorithms.beamvq.beam_search import BeamConfig
from seraphim.algorithms.beamvq.codebank import CodeBank, LocalStore
from seraphim.algorithms.beamvq.data import LAYOUT_OF_KIND, Fields, GenerateSpec, generate_fields
from seraphim.algorithms.beamvq.model import BeamVQModel
from seraphim.algorithms.beamvq.physics import METRICS
from seraphim.algorithms.beamvq.train import (
    ForecastData, LocalStepper, SplitSpec, TrainConfig, WindowSpec, evaluate, fit,
)

VARIANTS = ("backbone", "beamvq_nofilter", "beamvq_nonudge", "beamvq")
DATASETS = ("navier_stokes", "shallow_water")


def run_variant(variant: str, backbone: str, data: ForecastData, args: argparse.Namespace,
                seed: int) -> tuple[dict[str, float], float]:
    """Train one variant from the seed's initial weights; its test scores and its seconds."""
    torch.manual_seed(seed)
    model_backbone = build_backbone(backbone, data.shape)
    bank = None if variant == "backbone" else CodeBank(LocalStore(args.codes, args.code_dim),
                                                       commitment=args.commitment)
    model = BeamVQModel(model_backbone, bank, args.branch_weight)
    beam = None
    if bank is not None:
        with torch.no_grad():
            bank.initialize(model_backbone.encode(data.train_x[:64]), seed)
        beam = BeamConfig(args.width, args.top_k, args.horizon, args.keep, filter=variant != "beamvq_nofilter",
                          spread=args.spread, nudge=variant == "beamvq")
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, rounds=args.rounds, warmup=args.warmup,
                         beam_inputs=args.beam_inputs, pool_inputs=args.pool_inputs, seed=seed)
    start = time.perf_counter()
    fit(model, LocalStepper(model, args.lr, args.steps), data, config, beam)
    return evaluate(model, data), time.perf_counter() - start


def seed_split(fields: Fields, split: SplitSpec, seed: int) -> Fields:
    """The trajectories in a seed's own order, so each seed trains and tests on a different split."""
    order = np.random.default_rng([seed, 7]).permutation(len(fields.data))
    return Fields(fields.data[order], fields.layout, f"{fields.source}, split {seed}")


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--backbones", default=",".join(PRESETS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--trajectories", type=int, default=32)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--split", default="16,8,8", help="train,pool,test trajectories")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--codes", type=int, default=256)
    p.add_argument("--code-dim", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--width", type=int, default=2)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--horizon", type=int, default=3)
    p.add_argument("--keep", type=int, default=1)
    p.add_argument("--spread", type=float, default=0.1)
    p.add_argument("--commitment", type=float, default=0.0)
    p.add_argument("--branch-weight", type=float, default=0.0)
    p.add_argument("--beam-inputs", type=int, default=16)
    p.add_argument("--pool-inputs", type=int, default=16)
    p.add_argument("--eval-steps", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    bench_start = time.perf_counter()
    split = SplitSpec(*(int(v) for v in args.split.split(",")))
    windows = WindowSpec(horizon=args.horizon, eval_steps=args.eval_steps)
    print(f"{args.seeds} seeds; {args.trajectories} trajectories x {args.frames} frames per dataset, split "
          f"{args.split}; {args.steps} steps x batch {args.batch_size}, lr {args.lr}; code bank {args.codes} x "
          f"{args.code_dim} (commitment {args.commitment}, branch weight {args.branch_weight}); {args.rounds} rounds "
          f"after {args.warmup:.0%} of the steps, beam width {args.width}, top-K {args.top_k}, spread {args.spread}, "
          f"horizon {args.horizon}, keep {args.keep}, {args.beam_inputs} + {args.pool_inputs} inputs per round; test "
          f"rollout {args.eval_steps} steps", flush=True)
    table: dict[tuple[str, str], dict[str, dict[str, tuple[float, float]]]] = {}
    for dataset in args.datasets.split(","):
        start = time.perf_counter()
        fields = generate_fields(GenerateSpec(kind=dataset, trajectories=args.trajectories, frames=args.frames))
        print(f"{dataset}_generate_s: {time.perf_counter() - start:.1f}", flush=True)
        for backbone in args.backbones.split(","):
            runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
            seconds = {v: 0.0 for v in VARIANTS}
            for seed in range(args.seeds):
                data = ForecastData.build(seed_split(fields, split, seed), split, windows)
                for variant in VARIANTS:
                    scores, took = run_variant(variant, backbone, data, args, seed)
                    runs[variant].append(scores)
                    seconds[variant] += took
                    print(f"# {dataset} {backbone} seed {seed} {variant:16s} skill {scores['skill']:.4f} "
                          f"physics {scores['physics']:.4f} ({took:.0f}s)", flush=True)
            names = ["mse", "skill", "physics"] + [f"physics_{m}" for m in METRICS[fields.layout]]
            summary = {v: {n: mean_sd([r[n] for r in runs[v]]) for n in names} for v in VARIANTS}
            table[dataset, backbone] = summary
            for name in names:
                for variant in VARIANTS:
                    mean, sd = summary[variant][name]
                    print(f"{dataset}_{backbone}_{name}_{variant}: {mean:.4f} (sd {sd:.4f})")
            for variant in VARIANTS:
                print(f"{dataset}_{backbone}_seconds_{variant}: {seconds[variant] / args.seeds:.1f}")
            print(f"{dataset}_{backbone}_beamvq_vs_backbone_skill_ratio: "
                  f"{summary['beamvq']['skill'][0] / summary['backbone']['skill'][0]:.3f}", flush=True)
    pairs = list(table.values())
    layouts = [LAYOUT_OF_KIND[dataset] for dataset, _ in table]
    better = lambda s, a, b, n, sign: sign * (s[a][n][0] - s[b][n][0]) > 0  # noqa: E731
    print(f"pairs_total: {len(pairs)}")
    print(f"pairs_physics_improved: {sum(better(s, 'beamvq', 'backbone', 'physics', -1) for s in pairs)}")
    print(f"pairs_skill_improved: {sum(better(s, 'beamvq', 'backbone', 'skill', 1) for s in pairs)}")
    metric_pairs = [(s, f"physics_{m}") for s, layout in zip(pairs, layouts) for m in METRICS[layout]]
    print(f"pair_metrics_total: {len(metric_pairs)}")
    print(f"pair_metrics_improved: {sum(better(s, 'beamvq', 'backbone', n, -1) for s, n in metric_pairs)}")
    print(f"pairs_filter_beats_nofilter_physics: {sum(better(s, 'beamvq', 'beamvq_nofilter', 'physics', -1) for s in pairs)}")
    print(f"pairs_filter_beats_nofilter_skill: {sum(better(s, 'beamvq', 'beamvq_nofilter', 'skill', 1) for s in pairs)}")
    print(f"pairs_nonudge_physics_improved: "
          f"{sum(better(s, 'beamvq_nonudge', 'backbone', 'physics', -1) for s in pairs)}")
    print(f"pairs_nonudge_skill_improved: {sum(better(s, 'beamvq_nonudge', 'backbone', 'skill', 1) for s in pairs)}")
    print(f"pairs_nonudge_beats_nofilter_physics: "
          f"{sum(better(s, 'beamvq_nonudge', 'beamvq_nofilter', 'physics', -1) for s in pairs)}")
    print(f"wall_s: {time.perf_counter() - bench_start:.0f}")
    columns = ["mse", "skill", "physics"] + [f"physics_{m}" for m in METRICS["velocity"] + ("mass",)]
    print("\n| dataset | backbone | variant | " + " | ".join(columns) + " |")
    print("|" + " --- |" * (6 + len(columns) - 3))
    for (dataset, backbone), summary in table.items():
        for variant in VARIANTS:
            cells = [f"{summary[variant][n][0]:.4f} ± {summary[variant][n][1]:.4f}" if n in summary[variant] else "-"
                     for n in columns]
            print(f"| {dataset} | {backbone} | {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
