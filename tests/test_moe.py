"""The mixture-of-experts LM: routing with capacity and recycle routing, the KV cache of GQA and cross-layer
attention against the formula, two workers whose routed experts live on real PS shards training as one process
does, and lm.moe as a job with expert parallelism over gloo (real scheduler, PS and worker processes)."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from seraphim.algorithms.moe.checkpoint import load_moe
from seraphim.algorithms.moe.model import PRESETS, MoECache, MoEConfig, MoELM, expert_shapes, init_expert
from seraphim.algorithms.moe.placement import BankExperts
from seraphim.algorithms.moe.routing import capacity, route
from seraphim.algorithms.transformer.data import TokenData
from seraphim.scheduler.job_spec import JobSpecError, parse_job
from seraphim.scheduler.local_cluster import LocalCluster, PSProcessSpec
from seraphim.worker.client import PSClient
from seraphim.worker.paged import PagedModel, PagingConfig
from seraphim.worker.paged.bank import ParameterBank
from seraphim.worker.specs import AdamW
from test_lm_job import _user_text
from test_scheduler import cli, done, wait_for

LR, WD, EXPERT_LR = 3e-3, 0.1, 0.5


def test_capacity_drops_overflow_and_recycle_routing_gives_it_to_experts_with_room():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 4, generator=g)
    logits[:, 0] += 3.0  # most tokens prefer expert 0
    probs = torch.softmax(logits, -1)
    limit = capacity(64, 4, 1, 1.0)
    plain = route(logits, 1, 1.0, recycle=False)
    assert limit == 16 and plain.counts.max() <= limit and plain.dropped > 20
    assert plain.dropped + int(plain.counts.sum()) == 64 and plain.recycled == 0
    # priority is token order: expert 0 keeps the first 16 tokens that chose it
    chose_0 = torch.nonzero(probs.argmax(-1) == 0).squeeze(1)
    assert plain.token[plain.expert == 0].tolist() == chose_0[:16].tolist()
    recycled = route(logits, 1, 1.0, recycle=True, generator=torch.Generator().manual_seed(1))
    assert recycled.dropped == 0 and recycled.recycled == plain.dropped
    assert (recycled.counts <= limit).all() and int(recycled.counts.sum()) == 64
    moved = ~torch.isin(recycled.token * 4 + recycled.expert, plain.token * 4 + plain.expert)
    assert int(moved.sum()) == plain.dropped
    # a recycled token's weight is the gate probability of the expert it was moved to
    torch.testing.assert_close(recycled.weight[moved], probs[recycled.token[moved], recycled.expert[moved]])
    assert (recycled.expert[1:] >= recycled.expert[:-1]).all()  # grouped by expert
    balanced = route(torch.zeros(32, 8), 1, None, recycle=False)
    assert balanced.aux_loss.item() == pytest.approx(1.0)  # E * sum f_e P_e = 1 when uniform
    top2 = route(logits, 2, None, recycle=False)
    assert top2.assignments == 128 and top2.dropped == 0
    torch.testing.assert_close(torch.zeros(64).index_add(0, top2.token, top2.weight), torch.ones(64))


def test_routed_scale_multiplies_the_routed_experts_sum_and_nothing_else():
    base = MoEConfig(**{**PRESETS["moe-tiny"], "n_experts": 8, "top_k": 4, "capacity_factor": None})
    x = torch.randn(2, 5, base.dim, generator=torch.Generator().manual_seed(0))
    outputs = []
    for scale in (1.0, 4.0):
        mlp = MoELM(replace(base, routed_scale=scale), seed=3).eval().moe_layers()[0]
        with torch.no_grad():
            outputs.append((mlp(x) - mlp.shared_mlp(x), mlp.last_routing.weight.sum()))
    (routed_1, weights_1), (routed_4, weights_4) = outputs
    assert weights_1.item() == pytest.approx(10.0, rel=1e-5)  # top-4 weights renormalized: 1 per token
    torch.testing.assert_close(weights_4, weights_1)  # the routing itself does not change
    torch.testing.assert_close(routed_4, 4.0 * routed_1, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="routed_scale must be > 0"):
        replace(base, routed_scale=0.0)


@pytest.mark.parametrize("heads, cla", [(8, 1), (2, 1), (2, 2)], ids=["mha", "gqa", "gqa+cla"])
def test_the_kv_cache_holds_the_formulas_bytes_and_cached_generation_equals_the_full_forward(heads, cla):
    config = MoEConfig(**{**PRESETS["moe-tiny"], "n_layers": 4, "n_heads": 8, "n_kv_heads": heads,
                          "cla_share": cla, "capacity_factor": None})
    model = MoELM(config, seed=1).eval()
    tokens = torch.randint(0, config.vocab_size, (2, 17))
    cache = MoECache()
    with torch.no_grad():
        full = model(tokens)
        model(tokens[:, :16], cache=cache)
        last = model(tokens[:, 16:], cache=cache)
    torch.testing.assert_close(last[:, 0], full[:, 16], rtol=1e-4, atol=1e-5)
    assert cache.nbytes() / (2 * 17) == config.kv_bytes_per_token(itemsize=4)
    assert config.kv_bytes_per_token(2) == 2 * -(-4 // cla) * heads * config.head_dim * 2


@pytest.fixture(scope="module")
def ps_shards(tmp_path_factory):
    spec = PSProcessSpec(num_ps=2, num_workers=2, staleness=-1, ram_mb=1, page_kb=64)
    with LocalCluster(tmp_path_factory.mktemp("moe"), spec) as cluster:
        yield cluster


def test_two_workers_with_routed_experts_on_the_ps_train_as_one_process(ps_shards):
    """Each worker pulls only its tokens' experts and abstains from the rest; the PS sums both workers' expert
    gradients (zero where a worker's tokens chose none) and updates each expert once a step, at its own rate."""
    config = MoEConfig(**{**PRESETS["moe-tiny"], "n_experts": 16, "capacity_factor": None})
    e, seed = config.n_experts, 5
    g = torch.Generator().manual_seed(2)
    batches = [torch.randint(0, config.vocab_size, (4, 7), generator=g) for _ in range(3)]
    ref = MoELM(config, seed=seed)
    experts = [p for n, p in ref.named_parameters() if ".mlp.experts." in n]
    rest = [p for n, p in ref.named_parameters() if ".mlp.experts." not in n]
    opt = torch.optim.AdamW([{"params": rest}, {"params": experts, "lr": LR * EXPERT_LR}], lr=LR, weight_decay=WD)
    losses: dict[int, list[float]] = {0: [], 1: []}
    stats: dict[int, object] = {}
    errors: list[BaseException] = []

    def worker(rank: int) -> None:
        try:
            with PSClient(ps_shards.addresses, worker_id=rank, num_workers=2) as ps:
                bank = ParameterBank(ps, "experts", expert_shapes(config), config.n_layers * e,
                                     optimizer=AdamW(lr=LR, weight_decay=WD), ps_page_bytes=64 << 10,
                                     init=lambda i, which, t: init_expert(seed, config.init_std, i // e, i % e,
                                                                          which, t),
                                     rank=rank, world_size=2, lr_scale=EXPERT_LR, ready_timeout_s=60)
                with torch.device("meta"):
                    model = MoELM(config, lambda layer: BankExperts(bank, layer, e), seed=seed)
                paged = PagedModel(ps, model, name="dense", optimizer=AdamW(lr=LR, weight_decay=WD),
                                   config=PagingConfig(page_bytes=16 << 10, ps_page_bytes=64 << 10, wait_s=60),
                                   init=model.init_tensor, rank=rank, world_size=2, ready_timeout_s=60)
                try:
                    for step, batch in enumerate(batches):
                        rows = batch[rank::2]
                        with paged.step(step, last_step=len(batches) - 1), bank.step(step):
                            loss = model(rows[:, :-1], rows[:, 1:])
                            (loss / 2).backward()
                        ps.clock()
                        losses[rank].append(loss.item())
                    stats[rank] = bank.stats
                finally:
                    paged.close()
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors, errors
    for step, batch in enumerate(batches):
        opt.zero_grad()
        halves = [ref(batch[r::2, :-1], batch[r::2, 1:]) for r in (0, 1)]
        assert [losses[0][step], losses[1][step]] == pytest.approx([h.item() for h in halves], rel=1e-4)
        ((halves[0] + halves[1]) / 2).backward()
        opt.step()
    for s in stats.values():  # 12 tokens a step cannot choose all 16 experts of a layer
        assert 0 < s.sets_fetched < 3 * config.n_layers * e and s.absent_keys > 0
        assert s.pulled_bytes < 3 * config.n_layers * e * s.pulled_bytes / s.sets_fetched


def moe_job(name: str, text_dir: Path, **train) -> dict:
    return {
        "name": name, "algorithm": "lm.moe",
        "cluster": {"ps": 2, "workers": 2},
        "storage": {"ram_mb": 1, "page_kb": 64, "snapshot_every": 4},
        "train": {"model": {"preset": "moe-tiny", "capacity_factor": 1.0},
                  "experts": {"placement": "all_to_all", "lr": {"rule": "advisor", "b_noise_tokens": 2000}},
                  "data": {"source": "files", "paths": [str(text_dir)], "vocab_size": 512, "max_bytes": 600_000},
                  "paging": {"page_kb": 16}, "seq_len": 48, "batch_size": 4, "steps": 12, "eval_every": 6,
                  "optimizer": {"lr": 0.001, "warmup_steps": 2},
                  "generate": {"prompts": ["def"], "max_new_tokens": 8}, **train},
    }


def surge(b_over_b_noise: float) -> float:
    """Surge eq. 2's best Adam learning rate over its peak, at B / B_noise."""
    return 2 / (b_over_b_noise ** -0.5 + b_over_b_noise ** 0.5)


def test_lm_moe_trains_with_expert_parallelism_over_gloo_and_writes_every_expert(tmp_path, scheduler_factory):
    job = moe_job("moe", _user_text(tmp_path / "text"))
    sched = scheduler_factory()
    with sched.client() as client:
        status = client.submit(yaml.safe_dump(job), "local", str(tmp_path))
        run = Path(status.run_dir)
        status = wait_for(client, status.job_id, done, timeout=300)
    results = [json.loads((run / "results" / f"worker-{r}.json").read_text()) for r in (0, 1)]
    config = MoEConfig(**json.loads((run / "model" / "moe_config.json").read_text()))
    for r in results:
        assert r["placement"] == "all_to_all" and r["val_loss"] < 6.14  # ln(512) = 6.24 is a uniform guess
        assert r["expert_lr_ratio"] == pytest.approx(surge(384 / 4 / 2000) / surge(384 / 2000))  # B = 2*4*48
        assert r["expert_sets_fetched"] >= 12 * config.n_layers * config.n_experts // 2  # its own experts
    metrics = (run / "metrics" / "worker-0.csv").read_text()
    assert all(m in metrics for m in ("drop_rate", "recycle_rate", "train_aux_loss", "trace_sigma", "grad_sq",
                                      "dropped_l1", "recycled_l1"))
    advice = cli("lr-advise", str(run), "--batch", "768")  # the noise scale the job logged, in tokens
    assert advice.returncode == 0, advice.stderr
    assert "trace_sigma / grad_sq, step 11" in advice.stdout and "B0=384, lr0=0.001" in advice.stdout
    model = load_moe(run / "model")  # every expert written, stacked back into the one-process model
    data = TokenData.open(run / "data")
    with torch.no_grad():  # worker 0's evaluation batches: 0 and 2 of 4
        losses = [model(*(torch.from_numpy(a) for a in data.batch("val", b, 0, 1, 4, 48, 0))).item() for b in (0, 2)]
    assert np.mean(losses) == pytest.approx(results[0]["val_loss"], rel=1e-4)
    assert results[0]["samples"][0].startswith("def")


@pytest.mark.parametrize("train, message", [
    ({"model": {"preset": "moe-tiny", "n_experts": 3}, "experts": {"placement": "all_to_all"}},
     r"all_to_all splits the 3 routed experts of a layer over the 2 workers"),
    ({"experts": {"lr": {"rule": "advisor"}}}, r"rule 'advisor' needs b_noise_tokens"),
    ({"model": {"preset": "moe-tiny", "top_k": 5}}, r"top_k 5 must be in 1..n_experts \(4\)"),
])
def test_moe_specs_that_cannot_run_are_refused_before_anything_starts(tmp_path, train, message):
    job = moe_job("bad", tmp_path)
    job["storage"]["dir"] = str(tmp_path)
    job["train"].update(train)
    with pytest.raises(JobSpecError, match=message):
        parse_job(job)


def test_the_moe_example_and_its_dense_twin_differ_only_in_dense_and_share_their_active_parameters():
    examples = Path(__file__).resolve().parents[1] / "examples"
    moe, dense = (yaml.safe_load((examples / name).read_text()) for name in ("moe.yaml", "moe_dense.yaml"))
    assert dense["train"]["model"].pop("dense") is True
    assert {**dense, "name": moe["name"]} == moe
    _, train = parse_job(moe)
    config = train.model.config(4096)
    twin = config.dense_equivalent()
    assert config.n_experts > 0 and twin.n_experts == 0
    routers = config.n_layers * config.dim * config.n_experts
    assert config.active_parameter_count() - routers == twin.active_parameter_count()
