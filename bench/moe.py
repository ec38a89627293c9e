"""The mixture-of-experts LM (lm.moe): routing, KV-cache bytes, expert bytes pulled and throughput on the platform.

Usage: ``python bench/moe.py [--quick] [--seeds 3] [--steps 150]``

What it measures, each against a peer in the same run:

1. **Routing**: the same MoE trained in one process on the standard library's sources at capacity factors 1.0 and
   1.25, with and without Hunyuan-Large's recycle routing (seeds: mean and spread), against the dense model with the
   same active parameters: the share of token assignments no expert took (``drop_rate_*``) and the held-out loss
   after the same steps (``loss_*``).
2. **The example against its dense twin**: ``examples/moe.yaml``'s MoE and the dense model with the same active
   parameters trained in one process at the example's global batch, steps, schedule and routed-expert learning rate
   (seeds: mean and spread), with Hunyuan-Large's top-1 routing of the same total width beside them, at the
   advisor's rate for the routed experts and at the example's (``example_loss_*``).
3. **KV cache**: bytes per token of a bf16 KV cache measured from generation, for MHA, GQA and GQA with cross-layer
   attention, against the formula 2 * kv_layers * kv_heads * head_dim * 2.
4. **Experts pulled**: a worker whose routed experts live on real PS shards pulls only the chosen ones; the bytes
   pulled per training step and per generated token against pulling every expert (``expert_pull_bytes_ratio``).
5. **Throughput**: ``seraphim run`` of the MoE job on 2 PS shards and 2 workers, experts on the PS and with
   all-to-all expert parallelism, against the same model and global batch trained in one process with torch's
   AdamW (``ratio_vs_single_process``: global tokens/s over the single process's).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

from common import print_figures
from e2e import run_job
from seraphim.algorithms.moe.job import ExpertLRSpec, MoESpec
from seraphim.algorithms.moe.model import PRESETS, MoECache, MoEConfig, MoELM, expert_shapes, init_expert
from seraphim.algorithms.moe.placement import BankExperts
from seraphim.algorithms.transformer.data import TextSourceSpec, TokenData, prepare_corpus
from seraphim.scheduler.local_cluster import LocalCluster, PSProcessSpec
from seraphim.worker.client import PSClient
from seraphim.worker.paged.bank import ParameterBank
from seraphim.worker.specs import AdamW

REPO = Path(__file__).resolve().parents[1]
LR, WD, WARMUP = 2e-3, 0.1, 20
SEQ, BATCH = 128, 8


#: the routing study's model: moe-small's layer at half the width and depth, so 3 seeds x 5 arms fit in minutes
STUDY = dict(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, expert_ffn_dim=256, shared_ffn_dim=256)


def bench_config(vocab: int, **overrides) -> MoEConfig:
    return MoEConfig(**{**PRESETS["moe-small"], "vocab_size": vocab, **STUDY, **overrides})


def example_spec() -> MoESpec:
    return MoESpec(**yaml.safe_load((REPO / "examples" / "moe.yaml").read_text())["train"])


def example_config(vocab: int, **overrides) -> MoEConfig:
    """examples/moe.yaml's model."""
    return replace(example_spec().model.config(vocab), **overrides)


def train_in_process(config: MoEConfig, data: TokenData, steps: int, seed: int, batch: int = BATCH,
                     eval_batches: int = 8, schedule: Callable[[int], float] | None = None,
                     expert_lr_ratio: float = 1.0) -> dict[str, float]:
    """Train with torch's AdamW in this process (warm-up then constant, or `schedule`: step -> lr multiplier; the
    routed experts at `expert_lr_ratio` times the rest's rate); drop rate over steps, final held-out loss and steady
    tokens/s."""
    torch.manual_seed(seed)
    model = MoELM(config, seed=seed)
    model.set_routing_seed(seed)
    routed = [p for name, p in model.named_parameters() if ".mlp.experts." in name]
    rest = [p for name, p in model.named_parameters() if ".mlp.experts." not in name]
    groups = [{"params": rest, "ratio": 1.0}] + ([{"params": routed, "ratio": expert_lr_ratio}] if routed else [])
    opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.95), weight_decay=WD)
    schedule = schedule or (lambda step: min(1.0, (step + 1) / WARMUP))
    dropped = assigned = 0
    times = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = LR * schedule(step) * group["ratio"]
        x, y = data.batch("train", step, 0, 1, batch, SEQ, seed)
        started = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model(torch.from_numpy(x), torch.from_numpy(y)).backward()
        opt.step()
        times.append(time.perf_counter() - started)
        counts = model.routing_counts()
        dropped, assigned = dropped + counts["dropped"], assigned + counts["assignments"]
    model.eval()
    with torch.no_grad():
        losses = [model(*(torch.from_numpy(a) for a in data.batch("val", b, 0, 1, batch, SEQ, 0))).item()
                  for b in range(eval_batches)]
    steady = times[min(5, steps - 1):]
    return {"drop_rate": dropped / assigned if assigned else 0.0, "val_loss": float(np.mean(losses)),
            "tokens_per_s": batch * SEQ * len(steady) / sum(steady)}


def example_study(data: TokenData, vocab: int, seeds: int, steps: int | None = None) -> dict[str, float]:
    """examples/moe.yaml's MoE against its dense twin (examples/moe_dense.yaml) in one process at the example's
    global batch (2 workers x batch_size), steps (or `steps`), schedule and routed-expert learning rate; and
    Hunyuan-Large's own routing (top-1 of E/k experts k times as wide: the same active and total parameters) with
    the advisor's rate (B_noise 8192 tokens) and with the example's."""
    spec = example_spec()
    config, o = example_config(vocab), spec.optimizer
    if (o.lr, o.weight_decay, spec.seq_len) != (LR, WD, SEQ):
        raise ValueError("examples/moe.yaml changed lr, weight_decay or seq_len; update LR, WD and SEQ here")
    batch, steps = 2 * spec.batch_size, steps or spec.steps
    top1 = replace(config, n_experts=config.n_experts // config.top_k, top_k=1, routed_scale=1.0,
                   expert_ffn_dim=config.expert_ffn_dim * config.top_k)  # same parameters, Hunyuan-Large's gate
    advisor = ExpertLRSpec(rule="advisor", b_noise_tokens=8192).ratio_for(batch * SEQ, 1, top1.n_experts, o.lr)
    ratio = spec.experts.lr.ratio_for(batch * SEQ, config.top_k, config.n_experts, o.lr)
    arms = {"dense": (config.dense_equivalent(), 1.0), "example": (config, ratio),
            "top1_advisor": (top1, advisor), "top1_example_lr": (top1, ratio)}
    figures: dict[str, float] = {}
    for tag, (arm, expert_lr_ratio) in arms.items():
        losses = [train_in_process(arm, data, steps, seed, batch=batch, schedule=lambda s: o.scale(s, steps),
                                   expert_lr_ratio=expert_lr_ratio)["val_loss"] for seed in range(seeds)]
        figures.update({f"example_loss_{tag}": float(np.mean(losses)),
                        f"example_loss_{tag}_std": float(np.std(losses))})
        print(f"# example, {tag}: val loss {np.mean(losses):.4f} ± {np.std(losses):.4f} over {seeds} seeds x {steps} "
              f"steps of {batch} x {SEQ} tokens (routed experts' lr x{expert_lr_ratio:.2f})", file=sys.stderr,
              flush=True)
    figures["example_loss_moe_minus_dense"] = figures["example_loss_example"] - figures["example_loss_dense"]
    return figures


def routing_study(data: TokenData, vocab: int, steps: int, seeds: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    runs = {"dense": bench_config(vocab).dense_equivalent()}
    for cf in (1.0, 1.25):
        for recycle in (False, True):
            tag = f"{'recycle' if recycle else 'no_recycle'}_cf{cf:g}"
            runs[tag] = bench_config(vocab, capacity_factor=cf, recycle=recycle)
    for tag, config in runs.items():
        results = [train_in_process(config, data, steps, seed) for seed in range(seeds)]
        losses = [r["val_loss"] for r in results]
        drops = [r["drop_rate"] for r in results]
        if tag == "dense":
            figures.update(loss_dense_same_active=float(np.mean(losses)),
                           loss_dense_same_active_std=float(np.std(losses)))
        else:
            figures.update({f"drop_rate_{tag}": float(np.mean(drops)), f"drop_rate_{tag}_std": float(np.std(drops)),
                            f"loss_{tag}": float(np.mean(losses)), f"loss_{tag}_std": float(np.std(losses))})
        print(f"# {tag}: val loss {np.mean(losses):.4f} ± {np.std(losses):.4f}, drop rate {np.mean(drops):.4f} "
              f"over {seeds} seeds x {steps} steps", file=sys.stderr, flush=True)
    figures["drop_rate_no_recycle"] = figures["drop_rate_no_recycle_cf1"]
    figures["drop_rate_recycle"] = figures["drop_rate_recycle_cf1"]
    figures["loss_moe_minus_dense"] = figures["loss_recycle_cf1.25"] - figures["loss_dense_same_active"]
    return figures


def kv_study(vocab: int) -> dict[str, float]:
    """Measured bf16 KV-cache bytes per token against the formula, for MHA, GQA and GQA+CLA."""
    figures: dict[str, float] = {}
    base = example_config(vocab)
    variants = {"mha": dict(n_kv_heads=base.n_heads, cla_share=1), "gqa": dict(cla_share=1),
                "gqa_cla": dict(cla_share=2)}
    tokens = torch.randint(0, vocab, (1, 64))
    for tag, overrides in variants.items():
        config = example_config(vocab, capacity_factor=None, **overrides)
        model = MoELM(config).to(torch.bfloat16).eval()
        cache = MoECache()
        with torch.no_grad():
            model(tokens[:, :63], cache=cache)
            model(tokens[:, 63:], cache=cache)
        figures[f"kv_bytes_per_token_{tag}"] = cache.nbytes() / tokens.shape[1]
        figures[f"kv_bytes_per_token_{tag}_formula"] = config.kv_bytes_per_token(itemsize=2)
    figures["kv_saving_gqa_cla_vs_mha"] = 1 - figures["kv_bytes_per_token_gqa_cla"] / figures["kv_bytes_per_token_mha"]
    return figures


def pull_study(data: TokenData, vocab: int, root: Path, steps: int) -> dict[str, float]:
    """One worker, experts on 2 real PS shards: bytes pulled per training step and per generated token."""
    config = example_config(vocab)
    e = config.n_experts
    with LocalCluster(root / "pull", PSProcessSpec(num_ps=2, num_workers=1, ram_mb=64, page_kb=256)) as cluster, \
            PSClient(cluster.addresses) as ps:
        bank = ParameterBank(ps, "experts", expert_shapes(config), config.n_layers * e, optimizer=AdamW(lr=LR),
                             ps_page_bytes=256 << 10,
                             init=lambda i, which, t: init_expert(0, config.init_std, i // e, i % e, which, t))
        model = MoELM(config, lambda layer: BankExperts(bank, layer, e))
        model.set_routing_seed(0)
        all_bytes = config.n_layers * e * bank.set_bytes
        for step in range(steps):
            x, y = data.batch("train", step, 0, 1, BATCH, SEQ, 0)
            with bank.step(step):
                model(torch.from_numpy(x), torch.from_numpy(y)).backward()
            ps.clock()
        train_ratio = bank.stats.pulled_bytes / (steps * all_bytes)
        model.eval()
        generated = 16
        cache = MoECache()
        with bank.inference(), torch.no_grad():
            ids = torch.from_numpy(data.batch("val", 0, 0, 1, 1, SEQ, 0)[0][:, :8])
            model(ids, cache=cache)
            before = bank.stats.pulled_bytes
            for _ in range(generated):
                ids = model(ids[:, -1:], cache=cache)[:, -1].argmax(-1, keepdim=True)
        generation_ratio = (bank.stats.pulled_bytes - before) / (generated * all_bytes)
    return {"expert_pull_bytes_ratio": train_ratio, "expert_pull_bytes_ratio_generation": generation_ratio,
            "expert_bytes_all_per_step_mb": all_bytes / 1e6, "tokens_per_worker_step": BATCH * SEQ}


def platform_study(vocab: int, root: Path, steps: int, reference_tps: float) -> dict[str, float]:
    figures: dict[str, float] = {}
    job = yaml.safe_load((REPO / "examples" / "moe.yaml").read_text())
    (root / "runs").mkdir(parents=True, exist_ok=True)
    job["storage"]["dir"] = str(root / "runs")
    job["train"].update(steps=steps, eval_every=steps + 1, eval_batches=2, generate={"prompts": ["def"],
                                                                                      "max_new_tokens": 4})
    for placement in ("ps", "all_to_all"):
        run = {**job, "name": f"moe-bench-{placement.replace('_', '-')}",
               "train": {**job["train"], "experts": {**job["train"]["experts"], "placement": placement}}}
        run_dir, wall = run_job(run, root / "runs")
        results = [json.loads((run_dir / "results" / f"worker-{r}.json").read_text()) for r in (0, 1)]
        tps = sum(r["tokens_per_s"] for r in results)
        figures[f"tokens_per_s_{placement}"] = tps
        figures[f"ratio_vs_single_process_{placement}"] = tps / reference_tps
        figures[f"expert_pulled_mb_per_worker_{placement}"] = results[0]["expert_pulled_mb"]
        print(f"# {placement}: {tps:.0f} tok/s over 2 workers, run {wall:.0f}s, {run_dir}", file=sys.stderr,
              flush=True)
    figures["tokens_per_s_single_process"] = reference_tps
    figures["ratio_vs_single_process"] = figures["ratio_vs_single_process_ps"]
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 seed, 30 steps: a smoke run")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=150, help="training steps of each routing-study run")
    p.add_argument("--platform-steps", type=int, default=40)
    a = p.parse_args(argv)
    seeds, steps, platform_steps = (1, 30, 12) if a.quick else (a.seeds, a.steps, a.platform_steps)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="moe-bench-") as tmp:
        root = Path(tmp)
        meta = prepare_corpus(TextSourceSpec(source="stdlib", max_bytes=4_000_000, vocab_size=4096), root / "data")
        data = TokenData.open(root / "data")
        vocab = 4096
        print(f"# corpus: {meta['tokens']['train']} training tokens, vocabulary {meta['vocab_size']}",
              file=sys.stderr, flush=True)
        figures = routing_study(data, vocab, steps, seeds)
        figures.update(example_study(data, vocab, seeds, steps=10 if a.quick else None))
        figures.update(kv_study(vocab))
        figures.update(pull_study(data, vocab, root, steps=5))
        reference = train_in_process(example_config(vocab), data, platform_steps, 0, batch=2 * BATCH, eval_batches=1)
        figures.update(platform_study(vocab, root, platform_steps, reference["tokens_per_s"]))
    print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
