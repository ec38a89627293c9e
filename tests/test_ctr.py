"""CTR workload: the click-log generator, AUC, the CSV loader, config validation, the single-process reference,
and sparse LR / wide-and-deep trained by two workers on two real PS processes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
import torch
from pydantic import ValidationError
from sklearn.metrics import roc_auc_score

from seraphim.algorithms.ctr.data import (ClickLogSpec, CSVFormatError, bayes_auc, eval_batch, generate_batch,
                                          iter_batches, read_csv, roc_auc, worker_batch, write_csv, zipf_ranks)
from seraphim.algorithms.ctr.reference import train_reference
from seraphim.algorithms.ctr.train import CTRConfig, train_worker
from seraphim.worker import PSClient

@pytest.fixture(autouse=True)
def one_torch_thread():
    """These models are tiny: torch's intra-op threads only fight the PS processes for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SMALL = ClickLogSpec(num_fields=6, vocab_sizes=(5, 10, 20, 50, 100, 200), key_space=1 << 16)


def _same(a, b) -> None:
    np.testing.assert_array_equal(a.keys, b.keys)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.true_prob, b.true_prob)


def _concat(batches):
    return type(batches[0])(*(np.concatenate([getattr(b, f) for b in batches]) for f in ("keys", "labels", "true_prob")))


def test_rows_do_not_depend_on_chunking_order_or_process():
    spec = ClickLogSpec(seed=7)
    whole = generate_batch(spec, 1000, 900)
    _same(whole, _concat([generate_batch(spec, 1000, 300), generate_batch(spec, 1300, 600)]))
    _same(whole, _concat(list(iter_batches(spec, 1000, 1900, chunk_rows=256))))
    later_first = [generate_batch(spec, 1450, 450), generate_batch(spec, 1000, 450)]
    _same(whole, _concat(later_first[::-1]))
    other = generate_batch(ClickLogSpec(seed=8), 1000, 900)
    assert (other.keys != whole.keys).mean() > 0.3
    assert whole.keys.dtype == np.int64 and whole.keys.shape == (900, 16)
    assert whole.keys.min() >= 0 and whole.keys.max() < spec.key_space
    assert set(np.unique(whole.labels)) == {0.0, 1.0}


def test_worker_shards_are_disjoint_blocks_of_one_stream():
    b = 64
    stream = generate_batch(SMALL, 0, 6 * b)
    for step in range(3):
        for w in range(2):
            _same(worker_batch(SMALL, step, b, w, 2), generate_batch(SMALL, (2 * step + w) * b, b))
    _same(_concat([worker_batch(SMALL, s, b, w, 2) for s in range(3) for w in range(2)]), stream)
    with pytest.raises(ValueError, match=r"worker_id must be in \[0, num_workers=2\), got 2"):
        worker_batch(SMALL, 0, b, 2, 2)


def test_zipf_sampler_matches_the_bounded_power_law():
    u = (np.arange(400_000) + 0.5) / 400_000
    for exponent in (1.0, 1.1, 1.5):
        vocab = np.float64(1000)
        ranks = zipf_ranks(u, vocab, exponent)
        assert ranks.max() == 999 and ranks.min() == 0
        counts = np.bincount(ranks.astype(np.int64), minlength=1000) / len(u)
        edges = np.arange(1, 1002, dtype=np.float64)
        cdf = np.log(edges) / np.log(1001) if exponent == 1.0 else (edges ** (1 - exponent) - 1) / (1001 ** (1 - exponent) - 1)
        np.testing.assert_allclose(counts[:20], np.diff(cdf)[:20], rtol=0.02)
        assert counts[0] / counts[99] > 50  # a power law: the head value is far more frequent than rank 100


def test_keys_hash_each_field_and_value_into_one_space():
    spec = ClickLogSpec()
    keys = generate_batch(spec, 0, 20000).keys
    assert spec.key_space >= 10_000_000
    per_field = [set(np.unique(keys[:, f])) for f in range(spec.num_fields)]
    shared = set.intersection(per_field[0], per_field[1])
    assert not shared, "the same value rank in two fields must hash to different keys"
    assert [len(s) for s in per_field] == sorted(len(s) for s in per_field)  # bigger vocabularies, more keys


def test_default_log_has_realistic_ctr_and_bayes_auc():
    for seed in (0, 1):
        spec = ClickLogSpec(seed=seed)
        batch = eval_batch(spec, 40000)
        assert 0.08 < batch.labels.mean() < 0.12
        assert abs(batch.true_prob.mean() - spec.target_ctr) < 0.01
        assert 0.75 <= bayes_auc(spec, 40000) <= 0.85
    linear = ClickLogSpec(interaction_scale=0.0)
    assert bayes_auc(linear, 40000) < bayes_auc(ClickLogSpec(), 40000) - 0.03  # the interaction carries signal


def test_roc_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.random(5000) < 0.2
    scores = np.round(rng.normal(size=5000) + labels, 1)  # many ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc([0, 1], [0.3, 0.3]) == 0.5
    with pytest.raises(ValueError, match="both classes; got 0 positives"):
        roc_auc(np.zeros(4), np.arange(4))


def test_csv_round_trip_and_precise_errors(tmp_path):
    batch = generate_batch(ClickLogSpec(num_fields=4, vocab_sizes=(10, 10, 10, 10)), 0, 50)
    path = tmp_path / "clicks.csv"
    write_csv(path, batch)
    back = read_csv(path, num_fields=4)
    np.testing.assert_array_equal(back.keys, batch.keys)
    np.testing.assert_array_equal(back.labels, batch.labels)
    assert back.true_prob is None

    cases = {
        "1,5,6,7,8\n0,1,2,3\n": r"clicks-bad\.csv:2: expected 5 comma-separated values \(label, then 4 keys\), got 4",
        "1,5,6,7,8\n\n2,1,2,3,4\n": r"clicks-bad\.csv:3: the label must be 0 or 1, got '2'",
        "0,5,6,7,8\n1,1,x2,3,4\n": r"clicks-bad\.csv:2, column 3: a key must be an integer in \[0, 2\^63\), got 'x2'",
        "0,5,-6,7,8\n": r"clicks-bad\.csv:1, column 3: a key must be an integer in \[0, 2\^63\), got '-6'",
    }
    bad = tmp_path / "clicks-bad.csv"
    for text, message in cases.items():
        bad.write_text(text)
        with pytest.raises(CSVFormatError, match=message):
            read_csv(bad)
    bad.write_text("0,1,2\n")
    with pytest.raises(CSVFormatError, match=r":1: expected 5 comma-separated values"):
        read_csv(bad, num_fields=4)


def test_config_errors_name_the_field_and_allowed_values():
    with pytest.raises(ValidationError, match=r"(?s)model\n.*Input should be 'lr' or 'wide_deep'"):
        CTRConfig(model="xgboost")
    with pytest.raises(ValidationError, match=r"(?s)batch_size\n.*greater than or equal to 1"):
        CTRConfig(batch_size=0)
    with pytest.raises(ValidationError, match=r"(?s)hidden\.1\n.*greater than or equal to 1"):
        CTRConfig(hidden=(64, 0))
    with pytest.raises(ValidationError, match=r"(?s)learning_rate\n.*Extra inputs are not permitted"):
        CTRConfig(learning_rate=0.1)
    with pytest.raises(ValidationError, match="vocab_sizes has 2 entries but num_fields is 3"):
        CTRConfig(data={"num_fields": 3, "vocab_sizes": [10, 10]})
    with pytest.raises(ValidationError, match=r"(?s)data\.zipf_exponent\n.*greater than 0"):
        CTRConfig(data={"zipf_exponent": 0})
    assert CTRConfig.model_validate_json(CTRConfig(data=SMALL).model_dump_json()).data == SMALL


def _config(model: str, steps: int, data: ClickLogSpec = SMALL, **kw) -> CTRConfig:
    return CTRConfig(model=model, steps=steps, batch_size=1024, lr=0.1, dense_lr=3e-3, hidden=(32, 16),
                     eval_rows=20000, data=data, **kw)


def test_reference_lr_reaches_bayes_auc_on_a_linear_log():
    result = train_reference(_config("lr", 200, SMALL.model_copy(update={"interaction_scale": 0.0})))
    assert result["bayes_auc"] - 0.01 < result["auc"] <= result["bayes_auc"] + 0.005


def test_reference_wide_and_deep_learns_the_interaction_lr_cannot():
    seen: list[tuple[int, dict]] = []
    wide_deep = train_reference(_config("wide_deep", 1000, eval_every=500), lambda s, m: seen.append((s, m)))
    lr = train_reference(_config("lr", 300))
    assert wide_deep["bayes_auc"] == lr["bayes_auc"] and 0.75 < lr["bayes_auc"] < 0.85
    assert wide_deep["auc"] > wide_deep["bayes_auc"] - 0.02
    assert wide_deep["auc"] > lr["auc"] + 0.03
    assert wide_deep["loss"] < lr["loss"]
    assert [s for s, _ in seen] == list(range(1000))
    assert [s for s, m in seen if "auc" in m] == [499, 999]
    assert seen[-1][1]["auc"] == wide_deep["auc"] and wide_deep["steps"] == 1000 and wide_deep["examples_per_s"] > 0


def test_one_worker_lr_on_the_ps_equals_the_reference(cluster_factory):
    """Zero-initialized LR, one worker, BSP: the PS optimizers follow torch's step for step."""
    cluster = cluster_factory(num_ps=2, num_workers=1, ram_mb=32, page_kb=64)
    config = _config("lr", 60, eval_every=30)
    seen: list[int] = []
    with PSClient(cluster.addresses, worker_id=0, num_workers=1) as client:
        with pytest.raises(ValueError, match=r"worker_id/num_workers \(1/2\) differ from the client's \(0/1\)"):
            train_worker(client, "ctr", config, 1, 2)
        result = train_worker(client, "ctr", config, 0, 1, metrics_cb=lambda step, m: seen.append(step))
        assert all({"ctr_lr_w", "ctr_dense"} <= set(h.tables) for h in client.health())
    reference = train_reference(config)
    assert seen == list(range(60))
    assert result["auc"] == pytest.approx(reference["auc"], abs=1e-5)
    assert result["loss"] == pytest.approx(reference["loss"], rel=1e-6)


def test_two_workers_on_two_ps_train_wide_and_deep_like_the_reference(cluster_factory, tmp_path):
    cluster = cluster_factory(num_ps=2, num_workers=2, ram_mb=32, page_kb=64)
    config = _config("wide_deep", 150)
    job = {"name": "ctr-test", "algorithm": "ctr", "cluster": {"ps": 2, "workers": 2},
           "train": config.model_dump(mode="json")}
    job_path = tmp_path / "job.yaml"
    job_path.write_text(yaml.safe_dump(job))
    workers = [
        cluster.start_worker(["-m", "seraphim.algorithms.worker_main", "--job", str(job_path), "--rank", str(i),
                              "--ps", ",".join(cluster.addresses), "--run-dir", str(tmp_path)], f"w{i}")
        for i in range(2)
    ]
    for i, proc in enumerate(workers):
        assert proc.wait(timeout=120) == 0, cluster.tail(f"w{i}", 40)
    results = [json.loads((tmp_path / "results" / f"worker-{i}.json").read_text()) for i in range(2)]
    # BSP: after the last clock both workers evaluate the same parameters on the same held-out rows.
    assert results[0]["auc"] == results[1]["auc"]
    assert results[0]["steps"] == 150 and results[0]["examples_per_s"] > 0
    # Two workers x 150 steps read the rows one process reads in 300 steps.
    reference = train_reference(config.model_copy(update={"steps": 300}))
    reference_lr = train_reference(config.model_copy(update={"steps": 300, "model": "lr"}))
    assert results[0]["bayes_auc"] == reference["bayes_auc"]
    assert abs(results[0]["auc"] - reference["auc"]) < 0.01
    assert results[0]["auc"] > reference_lr["auc"] + 0.01
