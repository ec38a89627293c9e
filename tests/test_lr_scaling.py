"""Surge's learning-rate advisor: the laws against hand computations, eq. 22 and the online noise scale on synthetic
data with a known answer, ``seraphim lr-advise`` on run directories, and a tiny sweep whose trials are real jobs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from seraphim.algorithms.lr_scaling import (GradientNoiseScale, LrAdvisor, NoiseScaleError, adam_lr_curve,
                                            expert_lr, fit_b_noise, fit_eps_max, lr_for_batch, sgd_lr_curve)
from seraphim.algorithms.lr_scaling_sweep import LrSweepSpec, summarize_arm
from seraphim.algorithms.lr_scaling_trial import LrTrialSpec, train_trial
from seraphim.scheduler.cli import main as seraphim
from test_ctr import one_torch_thread  # noqa: F401  (autouse: in-process trials run on one torch thread)
from test_scheduler import done, wait_for


def test_the_adam_law_is_eq_2_peaks_at_b_noise_and_is_symmetric_in_log_batch():
    # B_noise 100, eps_max 0.01: at B = 25, sqrt(B_noise/B) = 2 and sqrt(B/B_noise) = 0.5, so 0.01 / 1.25 = 0.008
    assert adam_lr_curve(25, 100, 0.01) == pytest.approx(0.008)
    assert adam_lr_curve(400, 100, 0.01) == pytest.approx(0.008)
    assert adam_lr_curve(100, 100, 0.01) == pytest.approx(0.01)
    batches = np.geomspace(1, 10_000, 401)
    curve = adam_lr_curve(batches, 100, 0.01)
    assert batches[np.argmax(curve)] == pytest.approx(100)
    assert np.all(np.diff(curve[batches < 100]) > 0) and np.all(np.diff(curve[batches > 100]) < 0)


def test_the_sgd_law_is_eq_1_and_never_falls():
    assert sgd_lr_curve(100, 100, 0.01) == pytest.approx(0.005)
    assert sgd_lr_curve(300, 100, 0.01) == pytest.approx(0.0075)
    assert np.all(np.diff(sgd_lr_curve(np.geomspace(1, 1e6, 200), 100, 0.01)) > 0)


def test_lr_for_batch_calibrates_eps_max_from_one_tuned_point():
    # Adam: lr0 = 0.008 at B0 = 25 with B_noise 100 means eps_max = 0.008 * 1.25 = 0.01
    assert lr_for_batch(25, ref=(25, 0.008), b_noise=100, optimizer="adam") == pytest.approx(0.008)
    assert lr_for_batch(100, ref=(25, 0.008), b_noise=100, optimizer="adam") == pytest.approx(0.01)
    assert lr_for_batch(1600, ref=(25, 0.008), b_noise=100, optimizer="adam") == pytest.approx(0.01 / 2.125)
    # SGD: lr0 = 0.005 at B0 = 100 means eps_max = 0.005 * (1 + 1) = 0.01
    assert lr_for_batch(300, ref=(100, 0.005), b_noise=100, optimizer="sgd") == pytest.approx(0.0075)
    # eq. 23 over several points: the mean of each point's implied eps_max
    assert fit_eps_max([25, 100], [0.008, 0.012], 100, "adam") == pytest.approx((0.01 + 0.012) / 2)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        lr_for_batch(100, ref=(100, 0.01), b_noise=100, optimizer="lion")
    with pytest.raises(ValueError, match="ref lr must be a positive number"):
        lr_for_batch(100, ref=(100, 0.0), b_noise=100)


def test_expert_lr_is_the_lr_of_the_batch_an_expert_sees():
    # top-1 of 16 experts at B = 1600: each expert sees 100 examples a step, the peak of eq. 2
    assert expert_lr(1600, 1, 16, ref=(25, 0.008), b_noise=100) == pytest.approx(0.01)
    # Hunyuan-Large's reported ratio: at B = B_noise / 4, eps(B/16) / eps(B) = 0.246 / 0.8
    ratio = expert_lr(25, 1, 16, ref=(100, 0.01), b_noise=100) / lr_for_batch(25, (100, 0.01), 100)
    assert ratio == pytest.approx((1 / (0.5 * (8 + 1 / 8))) / 0.8)
    assert 0.30 < ratio < 0.32
    with pytest.raises(ValueError, match="1 <= k <= experts"):
        expert_lr(1600, 17, 16, ref=(25, 0.008), b_noise=100)


def _tradeoff(b_noise: float, s_min: float, batches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S, E) on McCandlish's curve (S/S_min - 1)(E/E_min - 1) = 1 with E_min = B_noise * S_min."""
    steps = s_min * (1 + b_noise / batches)
    return steps, batches * steps


def test_eq_22_recovers_b_noise_s_min_and_e_min_from_the_tradeoff_curve():
    steps, examples = _tradeoff(100.0, 50.0, np.array([8, 16, 32, 64, 128, 256, 512, 1024], float))
    np.testing.assert_allclose((steps / 50 - 1) * (examples / 5000 - 1), 1.0)
    fit = fit_b_noise(steps, examples)
    assert (fit.b_noise, fit.s_min, fit.e_min, fit.r2, fit.points) == pytest.approx((100, 50, 5000, 1.0, 8))
    noisy = steps * np.random.default_rng(0).lognormal(0, 0.03, steps.size)  # 3% noise on the step counts
    fit = fit_b_noise(noisy, examples / steps * noisy)
    assert fit.b_noise == pytest.approx(100, rel=0.1) and 0.95 < fit.r2 < 1.0


def test_eq_22_refuses_too_few_points_and_steps_that_do_not_fall_with_the_batch():
    with pytest.raises(NoiseScaleError, match="at least 2 .steps, examples. pairs"):
        fit_b_noise([10.0], [640.0])
    with pytest.raises(NoiseScaleError, match=r"slope .* >= 0 \(B_noise = -slope would not be positive\)"):
        fit_b_noise([10.0, 20.0, 40.0], [80.0, 320.0, 1280.0])  # steps grow with the batch
    with pytest.raises(NoiseScaleError, match="slope"):
        fit_b_noise([7.0, 7.0], [224.0, 1792.0])  # the same steps at every batch
    with pytest.raises(NoiseScaleError, match="positive, finite"):
        fit_b_noise([10.0, -1.0], [80.0, 320.0])


def test_the_online_estimator_recovers_the_noise_scale_of_synthetic_gradients():
    """Per-example gradients N(G, Sigma): B_simple = tr(Sigma) / |G|^2 = 200 / 1 here; 4 workers of 8 examples."""
    rng = np.random.default_rng(1)
    dim, workers, b_local, steps = 50, 4, 8, 3000
    mean = rng.normal(size=dim)
    mean /= np.linalg.norm(mean)  # |G|^2 = 1
    scales = rng.uniform(0.5, 1.5, dim)
    variances = 200.0 * scales / scales.sum()  # a diagonal Sigma with trace 200
    local = mean + rng.normal(size=(steps, workers, dim)) * np.sqrt(variances / b_local)  # each worker's batch mean
    global_ = local.mean(axis=1)
    noise = GradientNoiseScale(decay=0.995)
    for g_local, g_global in zip(local, global_):
        noise.observe((g_local**2).sum(axis=1), float((g_global**2).sum()), b_local, b_local * workers)
    assert noise.trace_sigma() == pytest.approx(200, rel=0.1)
    assert noise.grad_sq() == pytest.approx(1.0, rel=0.25)
    assert noise.b_simple() == pytest.approx(200, rel=0.25)
    assert noise.metrics()["b_noise"] == noise.b_simple()


def test_the_online_estimator_says_why_it_has_no_answer():
    noise = GradientNoiseScale()
    with pytest.raises(NoiseScaleError, match="call observe"):
        noise.metrics()
    with pytest.raises(ValueError, match="0 < b_local < b_global"):
        noise.observe(1.0, 0.5, 64, 64)
    noise.observe(2.0, 0.2, 8, 32)  # |G|^2 estimate (32*0.2 - 8*2) / 24 < 0: pure noise
    assert "b_noise" not in noise.metrics() and noise.metrics()["grad_sq"] < 0
    with pytest.raises(NoiseScaleError, match="noise dominates"):
        noise.b_simple()


def test_the_advisor_uses_a_fixed_b_noise_or_the_online_one():
    assert LrAdvisor(ref=(25, 0.008), b_noise=100).lr_for_batch(100) == pytest.approx(0.01)
    advisor = LrAdvisor(ref=(25, 0.008))
    advisor.observe(1.25, 1.0, 25, 100)  # |G|^2 = (100 - 31.25)/75, tr(Sigma) = 0.25 / 0.03
    grad_sq, trace = (100 * 1.0 - 25 * 1.25) / 75, 0.25 / (1 / 25 - 1 / 100)
    assert advisor.b_noise() == pytest.approx(trace / grad_sq)
    assert advisor.expert_lr(1600, 1, 16) == pytest.approx(lr_for_batch(100, (25, 0.008), trace / grad_sq))


def _surge_run(tmp_path: Path) -> Path:
    run = tmp_path / "sweep"
    run.mkdir()
    entry = {"best_lr": {"25": 0.008, "400": 0.008}, "b_noise": 100.0, "eps_max": 0.01, "r2": 0.97}
    (run / "surge.json").write_text(json.dumps({"adam": {"0.3": {**entry, "b_noise": 50.0}, "0.1": entry},
                                                "sgd": {"0.1": {"best_lr": {}, "b_noise": None}}}))
    return run


def test_lr_advise_reads_a_sweep(tmp_path, capsys):
    run = _surge_run(tmp_path)
    assert seraphim(["lr-advise", str(run), "--batch", "400"]) == 0
    out = capsys.readouterr().out
    assert "b_noise: 100  (eq. 22 fit of the sweep at target loss 0.1, R^2 0.970)" in out  # the lowest target
    assert "lr: 0.008  (eq. 2 (Surge, Adam) with the sweep's eps_max=0.01 (eq. 23) at B=400)" in out
    # at target 0.3 B_noise is 50, so the reference sits at the peak and B = 200 is a factor 4 past it
    assert seraphim(["lr-advise", str(run), "--batch", "200", "--target-loss", "0.3", "--ref-batch", "50",
                     "--ref-lr", "0.004"]) == 0
    assert "lr: 0.0032  (eq. 2 (Surge, Adam) through B0=50, lr0=0.004 at B=200)" in capsys.readouterr().out
    assert seraphim(["lr-advise", str(run), "--batch", "100", "--optimizer", "sgd"]) == 1
    assert "no target of the 'sgd' arm has a B_noise fit" in capsys.readouterr().err


def test_lr_advise_reads_the_last_logged_b_noise_and_the_jobs_batch_and_lr(tmp_path, capsys):
    run = tmp_path / "train"
    (run / "metrics").mkdir(parents=True)
    rows = ["step,seconds,name,value", "1,0.1,train_loss,2.0", "1,0.1,b_noise,80", "2,0.2,b_noise,150"]
    (run / "metrics" / "worker-0.csv").write_text("\n".join(rows) + "\n")
    (run / "metrics" / "worker-1.csv").write_text("step,seconds,name,value\n2,0.2,b_noise,50\n")
    assert seraphim(["lr-advise", str(run), "--batch", "100", "--ref-batch", "25", "--ref-lr", "0.008"]) == 0
    out = capsys.readouterr().out
    assert "b_noise: 100  (last logged b_noise metric, step 2, mean over workers)" in out
    assert "lr: 0.01  (eq. 2 (Surge, Adam) through B0=25, lr0=0.008 at B=100)" in out
    assert seraphim(["lr-advise", str(run), "--batch", "100"]) == 1
    assert "has no train.batch_size and train.lr; pass --ref-batch B0 --ref-lr LR0" in capsys.readouterr().err
    (run / "job.yaml").write_text(yaml.safe_dump({"name": "t", "train": {"batch_size": 25, "lr": 0.008}}))
    assert seraphim(["lr-advise", str(run), "--batch", "300", "--optimizer", "sgd"]) == 0
    assert "lr: 0.03  (eq. 1 (McCandlish, SGD) through B0=25, lr0=0.008" in capsys.readouterr().out
    (run / "metrics" / "worker-0.csv").write_text("step,seconds,name,value\n1,0.1,train_loss,2.0\n")
    (run / "metrics" / "worker-1.csv").unlink()
    assert seraphim(["lr-advise", str(run), "--batch", "100"]) == 1
    assert "no surge.json and no b_noise metric" in capsys.readouterr().err


def test_a_sweep_spec_needs_two_batch_sizes_and_positive_learning_rates():
    arm = {"optimizer": {"kind": "adam", "betas": [0, 0]}, "lrs": [0.01, 0.02]}
    training = {"targets": [0.5]}
    with pytest.raises(ValueError, match="batch_sizes needs at least two different sizes"):
        LrSweepSpec.model_validate({"arms": {"adam": arm}, "batch_sizes": [32, 32], "training": training})
    with pytest.raises(ValueError, match="lrs must all be positive"):
        LrSweepSpec.model_validate({"arms": {"adam": {**arm, "lrs": [0.01, -1]}}, "batch_sizes": [8, 32],
                                    "training": training})
    with pytest.raises(ValueError, match="betas must each be in"):
        LrSweepSpec.model_validate({"arms": {"adam": {**arm, "optimizer": {"kind": "adam", "betas": [1, 0]}}},
                                    "batch_sizes": [8, 32], "training": training})


@pytest.mark.parametrize("optimizer", [{"kind": "sgd"}, {"kind": "adam", "betas": [0.9, 0.999]}])
def test_a_trial_records_the_steps_to_each_target_and_the_drop_k_steps_later(optimizer):
    lrs = [0.5, 2.0] if optimizer["kind"] == "sgd" else [0.003, 0.03]
    spec = LrTrialSpec.model_validate({"optimizer": optimizer, "batch_size": 64, "lrs": lrs, "training": {
        "targets": [1.0, 1.6], "seeds": 2, "extra_steps": 3, "max_steps": 400, "patience": 100}})
    result = train_trial(spec)
    steps = np.array(result["steps"], dtype=float)  # [target, lr, seed], targets from the highest loss down
    assert result["targets"] == [1.6, 1.0] and steps.shape == (2, 2, 2) and result["stopped"].startswith("all")
    assert np.all(steps[1] > steps[0])  # the lower loss comes later in the same run
    assert np.all(steps[:, 1] < steps[:, 0])  # the larger learning rate is faster, on the same seeds and batches
    drops = np.array(result["extra_drop"], dtype=float)
    assert drops.shape == (2, 2, 2) and np.all(np.isfinite(drops))
    assert result["final_step"] == steps.max() + 3


def test_the_sweep_takes_the_largest_positive_drop_and_the_fastest_steps_per_batch():
    lrs = [0.01, 0.02]
    trials = {  # [target][lr][seed]; None: that run never reached the target
        16: {"extra_drop": [[[0.1, 0.2], [0.3, 0.3]]], "steps": [[[10, 12], [20, None]]]},
        64: {"extra_drop": [[[-0.1, -0.2], [-0.05, None]]], "steps": [[[5, 5], [4, 4]]]},  # no lr makes progress
        256: {"extra_drop": [[[0.2, 0.2], [0.19, 0.15]]], "steps": [[[3, 3], [3, 3]]]},
    }
    out = summarize_arm("adam", lrs, trials, 0)
    assert out["best_lr"] == {"16": 0.02, "64": None, "256": 0.01} and out["peak_batches"] == [16]
    # B=16: 0.02 beats 0.01 by paired differences 0.2, 0.1 (mean 0.15, s.e. 0.05: 3 s.e.); B=256: 0.01 beats 0.02 by
    # 0.01, 0.05 (mean 0.03, s.e. 0.02: 1.5 s.e.), so both are in the band
    assert out["best_lr_band"] == {"16": [0.02, 0.02], "256": [0.01, 0.02]}
    assert out["steps"] == {"16": 11.0, "64": 4.0, "256": 3.0}  # mean over seeds, fewest over lrs with all seeds
    fit = fit_b_noise([11, 4, 3], [16 * 11, 64 * 4, 256 * 3])
    assert (out["b_noise"], out["s_min"], out["r2"]) == pytest.approx((fit.b_noise, fit.s_min, fit.r2))
    assert out["eps_max"] == pytest.approx(fit_eps_max([16, 256], [0.02, 0.01], fit.b_noise, "adam"))


def test_a_tiny_sweep_runs_its_trials_as_jobs_and_writes_surge_json(tmp_path, scheduler_factory):
    sweep = {
        "name": "surge", "algorithm": "lr_scaling.sweep", "cluster": {"ps": 1, "workers": 1},
        "train": {
            "arms": {"adam": {"optimizer": {"kind": "adam", "betas": [0, 0]}, "lrs": [0.01, 0.04]}},
            "batch_sizes": [16, 128],
            "training": {"targets": [1.2], "seeds": 2, "extra_steps": 3, "max_steps": 200},
        },
    }
    sched = scheduler_factory("sched")
    with sched.client() as client:
        status = client.submit(yaml.safe_dump(sweep), "local", str(tmp_path))
        status = wait_for(client, status.job_id, done, timeout=120)
        trials = [j for j in client.jobs() if j.name.startswith("surge-")]
    assert sorted(j.name for j in trials) == ["surge-adam-b128", "surge-adam-b16"]
    run = Path(status.run_dir)
    surge = json.loads((run / "surge.json").read_text())
    assert list(surge) == ["adam"] and list(surge["adam"]) == ["1.2"]
    entry = surge["adam"]["1.2"]
    assert set(entry["best_lr"]) == {"16", "128"} and all(lr in (0.01, 0.04) for lr in entry["best_lr"].values())
    assert entry["steps"]["16"] >= entry["steps"]["128"] > 0  # a larger batch needs no more steps
    assert (entry["b_noise"] or 0) > 0 or "fit_error" in entry
    assert (run / "heatmap.png").stat().st_size > 1000 and (run / "best_lr.png").stat().st_size > 1000
