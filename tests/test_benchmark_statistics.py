"""The benchmark's statistics against cases whose answer is known: numpy only, no model, a second or two."""

from __future__ import annotations

import numpy as np
import pytest

from anomalens.benchmarking import statistics as st
from anomalens.metrics import aupro, image_auroc, pixel_auroc, threshold_metrics


def _scores(n_normal: int, n_anomalous: int, separation: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n_normal, int), np.ones(n_anomalous, int)]
    return labels, rng.normal(size=labels.size) + separation * labels


def test_weights_resample_each_class_within_itself():
    labels = np.r_[np.zeros(30, int), np.ones(40, int)]
    w = st.bootstrap_weights(labels, 500, seed=3)
    assert w.shape == (500, 70)
    assert np.all(w[:, :30].sum(1) == 30) and np.all(w[:, 30:].sum(1) == 40)
    assert np.array_equal(w, st.bootstrap_weights(labels, 500, seed=3))  # the same resamples for every detector
    assert not np.array_equal(w, st.bootstrap_weights(labels, 500, seed=4))
    assert st.replicate_seed("brick") != st.replicate_seed("coffee")


def test_weighted_figures_equal_the_metrics_on_the_full_sample_and_on_a_drawn_one():
    labels, scores = _scores(30, 40, 1.0)
    scores[3] = scores[35]  # a tie counts one half
    flagged = (scores > 0.5).astype(int)
    ones = np.ones((1, labels.size))
    assert st.image_auroc_replicates(labels, scores, ones)[0] == pytest.approx(image_auroc(labels, scores))
    counts = st.bootstrap_weights(labels, 1, seed=1)[0].astype(int)
    drawn = np.repeat(np.arange(labels.size), counts)  # the same resample as explicit indices
    assert (st.image_auroc_replicates(labels, scores, counts[None])[0]
            == pytest.approx(image_auroc(labels[drawn], scores[drawn])))
    point = st.operating_point_replicates(labels, flagged, ones)
    exact = threshold_metrics(labels, scores, 0.5)
    assert point["tpr"][0] == pytest.approx(exact["tpr"]) and point["fpr"][0] == pytest.approx(1 - exact["tnr"])
    assert point["balanced_accuracy"][0] == pytest.approx(exact["balanced_accuracy"])


def _maps(n: int = 12, size: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for i in range(n // 2, n):
        r, c = rng.integers(2, size - 14, 2)
        masks[i, r:r + rng.integers(3, 12), c:c + rng.integers(3, 12)] = True
        if i % 2:
            masks[i, 0:3, 0:3] = True  # a second region in the same image
    return masks, (rng.normal(size=masks.shape) + 1.2 * masks).astype(np.float32)


def test_pixel_summary_reproduces_pixel_auroc_and_aupro():
    masks, maps = _maps()
    summary = st.pixel_summary(masks, maps)
    ones = np.ones((1, masks.shape[0]))
    assert st.pixel_auroc_replicates(summary, ones)[0] == pytest.approx(pixel_auroc(masks, maps), abs=1e-3)
    assert st.aupro_replicates(summary, ones)[0] == pytest.approx(aupro(masks, maps), abs=2e-3)
    counts = np.zeros(masks.shape[0])
    counts[[0, 0, 2, 7, 7, 9, 11]] = [1, 1, 1, 1, 1, 1, 1]
    counts[0], counts[7] = 2, 2
    drawn = np.repeat(np.arange(masks.shape[0]), counts.astype(int))  # images resampled, not pixels
    assert st.pixel_auroc_replicates(summary, counts[None])[0] == pytest.approx(pixel_auroc(masks[drawn], maps[drawn]),
                                                                               abs=1e-3)
    assert st.aupro_replicates(summary, counts[None])[0] == pytest.approx(aupro(masks[drawn], maps[drawn]), abs=2e-3)


def test_the_bootstrap_interval_covers_the_auroc_and_narrows_with_more_images():
    labels, scores = _scores(30, 40, 1.0)
    value = image_auroc(labels, scores)
    reps = st.image_auroc_replicates(labels, scores, st.bootstrap_weights(labels, 1000, seed=0))
    low, high = st.percentile_interval(reps)
    assert low < value < high and 0.02 < high - low < 0.4
    big_labels, big_scores = _scores(300, 400, 1.0)
    big = st.image_auroc_replicates(big_labels, big_scores, st.bootstrap_weights(big_labels, 1000, seed=0))
    big_low, big_high = st.percentile_interval(big)
    assert big_high - big_low < (high - low) / 2


def test_the_interval_covers_the_true_auroc_about_95_percent_of_the_time():
    # The true AUROC of N(0,1) against N(1,1) is Φ(1/√2) = 0.760: intervals from 60 independent test sets
    true_auroc = 0.7602499389065233
    covered = 0
    for seed in range(60):
        labels, scores = _scores(30, 40, 1.0, seed=100 + seed)
        reps = st.image_auroc_replicates(labels, scores, st.bootstrap_weights(labels, 400, seed=seed))
        low, high = st.percentile_interval(reps)
        covered += low <= true_auroc <= high
    assert covered >= 51  # 95 % of 60 = 57; binomial 1st percentile ≈ 52


def test_identical_detectors_are_never_significantly_different():
    labels, scores = _scores(30, 40, 1.0)
    w = st.bootstrap_weights(labels, 1000, seed=0)
    reps = st.image_auroc_replicates(labels, scores, w)
    test = st.paired_test(reps, reps.copy())
    assert test["p_value"] == 1.0 and test["ci_low"] == test["ci_high"] == 0.0


def test_a_clearly_better_scorer_is_significant_and_a_slightly_noisier_one_is_not():
    labels, scores = _scores(30, 40, 1.0)
    rng = np.random.default_rng(7)
    w = st.bootstrap_weights(labels, 1000, seed=0)
    good = st.image_auroc_replicates(labels, scores, w)
    better = st.image_auroc_replicates(labels, scores + 3.0 * labels, w)
    jittered = st.image_auroc_replicates(labels, scores + rng.normal(scale=0.05, size=labels.size), w)
    strong = st.paired_test(better, good)
    assert strong["p_value"] < 0.01 and strong["ci_low"] > 0
    assert st.paired_test(jittered, good)["p_value"] > 0.05


def test_holm_adjusts_step_down_and_keeps_order():
    assert st.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert st.holm([0.5, 0.001])[1] == pytest.approx(0.002)
    adjusted = st.holm([0.2, float("nan"), 0.01])
    assert np.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02) and adjusted[0] == pytest.approx(0.2)


def test_seed_interval_is_a_t_interval():
    low, high = st.seed_interval([0.90, 0.92, 0.94])
    assert low < 0.92 < high and high - low == pytest.approx(2 * 4.302653 * 0.02 / np.sqrt(3), rel=1e-4)
    assert st.seed_interval([0.9]) is None



def _fake_job(out, job, labels, scores, image_auroc):
    """A finished job's folder as the worker leaves it (no model run)."""
    folder = out / "jobs" / job.key
    folder.mkdir(parents=True)
    lines = ["name,defect_type,label,score,flagged"]
    lines += [f"img{i:03d}.png,{'bad' if y else 'good'},{y},{float(s)!r},{int(s > 0.5)}" for i, (y, s) in enumerate(zip(labels, scores))]
    (folder / "scores.csv").write_text("\n".join(lines) + "\n")
    flagged = scores > 0.5
    tpr, fpr = flagged[labels == 1].mean(), flagged[labels == 0].mean()
    return {"status": "ok", "image_auroc": image_auroc, "tpr": float(tpr), "fpr": float(fpr),
            "balanced_accuracy": float((tpr + 1 - fpr) / 2), "fit_seconds": 1.0, "test_images_per_second": 10.0,
            "peak_rss_mb": 500.0, "n_test": labels.size, "n_anomalous": int(labels.sum())}


def test_the_leaderboard_gives_seed_spreads_and_separates_only_real_differences(tmp_path):
    from anomalens.benchmarking import BenchmarkPlan, Category
    from anomalens.benchmarking.leaderboard import compute_leaderboard

    categories = [Category("one", "one"), Category("two", "two")]
    plan = BenchmarkPlan(["weak", "twin", "strong"], categories, seeds=[0, 1])
    results = {}
    for k, category in enumerate(categories):
        labels, base = _scores(30, 40, 0.8, seed=k)
        for job in plan.jobs():
            if job.category != category:
                continue
            noise = np.random.default_rng(100 * k + job.seed).normal(scale=0.3, size=labels.size)
            scores = {"weak": base + noise, "twin": base + noise, "strong": base + 3.0 * labels + noise}[job.detector]
            results[job.key] = _fake_job(tmp_path, job, labels, scores, image_auroc(labels, scores))
    board = compute_leaderboard(plan, tmp_path, results, n_boot=500)
    rows = {(r["category"], r["detector"]): r for r in board["rows"]}
    weak = rows[("one", "weak")]["image_auroc"]
    assert weak["seeds"] == 2 and weak["seed_sd"] > 0 and weak["seed_ci_low"] < weak["value"] < weak["seed_ci_high"]
    assert weak["ci_low"] < weak["value"] < weak["ci_high"]
    assert rows[("mean", "strong")]["image_auroc"]["best"]
    tests = {(t["category"], t["a"], t["b"]): t for t in board["comparisons"] if t["metric"] == "image_auroc"}
    assert tests[("one", "weak", "twin")]["p_holm"] == 1.0 and tests[("one", "weak", "twin")]["within_noise"]
    for category in ("one", "two", "mean"):
        assert not tests[(category, "weak", "strong")]["within_noise"]
        assert tests[(category, "weak", "strong")]["difference"] < 0
    assert not rows[("two", "twin")]["image_auroc"]["within_noise_of_best"]
