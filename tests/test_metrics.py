import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, roc_auc_score

from unictr.metrics import (
    auc,
    bootstrap_auc_diff,
    calibration_ratio,
    calibration_z,
    ece,
    logloss,
    metric_block,
    normalized_entropy,
    ratio_interval,
    reliability_bins,
)


def _data(n: int, seed: int = 0, decimals: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Labels and coarsely rounded (so heavily tied) scores that carry some signal."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(np.float64)
    p = np.clip(np.round(0.2 + 0.3 * y * rng.random(n) + 0.5 * rng.random(n), decimals), 0.01, 0.99)
    return y, p


def test_auc_matches_sklearn_with_ties() -> None:
    y, p = _data(5000, decimals=1)
    assert len(np.unique(p)) < 20
    assert auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_auc_weighted_matches_sklearn() -> None:
    y, p = _data(3000, seed=1)
    w = np.random.default_rng(2).random(3000) * 3
    assert auc(y, p, w) == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-12)


def test_auc_all_tied_is_half_and_one_class_is_nan() -> None:
    assert auc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == 0.5
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([0, 0], [0.1, 0.2]))
    assert math.isnan(auc([], []))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 6)), min_size=1, max_size=60))
def test_auc_property_matches_sklearn(rows: list[tuple[bool, int]]) -> None:
    y = np.array([r[0] for r in rows], dtype=float)
    p = np.array([r[1] for r in rows], dtype=float) / 6
    got = auc(y, p)
    if 0 < y.sum() < y.size:
        assert got == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert got + auc(y, -p) == pytest.approx(1.0, abs=1e-12)  # reversing the ranking
        assert auc(y, np.exp(3 * p)) == pytest.approx(got, abs=1e-12)  # only the order matters
    else:
        assert math.isnan(got)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(0, 4), st.floats(0.01, 5.0)), min_size=2, max_size=40
    ).filter(lambda rows: len({r[0] for r in rows}) == 2)
)
def test_auc_property_weighted(rows: list[tuple[bool, int, float]]) -> None:
    y, p, w = (np.array(col, dtype=float) for col in zip(*rows, strict=True))
    assert auc(y, p, w) == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-10)


def test_logloss_matches_sklearn_and_clips() -> None:
    y, p = _data(2000, seed=3)
    assert logloss(y, p) == pytest.approx(log_loss(y, p), rel=1e-12)
    assert logloss([1.0], [0.0]) == pytest.approx(-math.log(1e-7))
    assert logloss([0.0, 1.0], [0.0, 1.0]) == pytest.approx(-math.log(1 - 1e-7))
    assert math.isnan(logloss([], []))


def test_normalized_entropy() -> None:
    # Predicting the base rate (0.25) scores exactly the base-rate entropy: NE = 1.
    assert normalized_entropy([0, 1, 0, 0], [0.25] * 4) == pytest.approx(1.0)
    y, p = _data(2000, seed=4)
    base = y.mean()
    h = -(base * math.log(base) + (1 - base) * math.log(1 - base))
    assert normalized_entropy(y, p) == pytest.approx(log_loss(y, p) / h, rel=1e-12)
    assert math.isnan(normalized_entropy([0, 0], [0.1, 0.2]))
    assert math.isnan(normalized_entropy([1, 1], [0.1, 0.2]))


def test_calibration_ratio() -> None:
    assert calibration_ratio([0, 1, 1, 0], [0.5, 0.5, 0.5, 0.7]) == pytest.approx(0.55 / 0.5)
    assert math.isnan(calibration_ratio([0, 0], [0.1, 0.2]))


def test_calibration_z_and_ratio_interval_hand_computed() -> None:
    # sum p = 1.2, sum y = 2, V = .25 + .16 + .09 + .24 = .74, h = 1.959964 * sqrt(.74) = 1.686025
    y, p = [1, 0, 0, 1], [0.5, 0.2, 0.1, 0.4]
    assert calibration_z(y, p) == pytest.approx(-0.8 / math.sqrt(0.74), abs=1e-12)
    assert calibration_z(y, p) == pytest.approx(-0.929981, abs=1e-6)
    lo, hi = ratio_interval(y, p)
    assert (lo, hi) == pytest.approx((1.2 / 3.686025, 1.2 / 0.313975), rel=1e-5)
    assert (lo, hi) == pytest.approx((0.325554, 3.821958), abs=1e-6)
    # 100 rows at p = .1: sum p = 10, V = 9, h = 1.959964 * 3 = 5.879892
    p100 = np.full(100, 0.1)
    y15 = np.r_[np.ones(15), np.zeros(85)]
    assert calibration_z(y15, p100) == pytest.approx(-5 / 3, abs=1e-12)
    assert ratio_interval(y15, p100) == pytest.approx((10 / 20.879892, 10 / 9.120108), rel=1e-6)
    assert ratio_interval(y15, p100, level=0.5)[0] > ratio_interval(y15, p100)[0]


def test_ratio_interval_agrees_with_z_and_handles_edges() -> None:
    p100 = np.full(100, 0.1)
    for pos in range(0, 31):
        y = np.r_[np.ones(pos), np.zeros(100 - pos)]
        lo, hi = ratio_interval(y, p100)
        assert (lo <= 1.0 <= hi) == (abs(calibration_z(y, p100)) <= 1.959964)
    lo, hi = ratio_interval(np.zeros(100), p100)  # no positives: ratio undefined, only a lower bound
    assert math.isnan(calibration_ratio(np.zeros(100), p100))
    assert lo == pytest.approx(10 / 5.879892, rel=1e-6) and hi == math.inf
    assert math.isnan(calibration_z([], [])) and all(math.isnan(v) for v in ratio_interval([], []))
    assert math.isnan(calibration_z([0, 1], [0.0, 1.0]))
    with pytest.raises(ValueError, match="level must be in"):
        ratio_interval([1], [0.5], level=1.0)


def test_ece_hand_computed_even_bins() -> None:
    # Sorted by p, 3 bins of 2 rows:
    #   p (0.1, 0.2) y (0, 0): |0.15 - 0.0| = 0.15
    #   p (0.3, 0.6) y (1, 0): |0.45 - 0.5| = 0.05
    #   p (0.7, 0.9) y (1, 1): |0.80 - 1.0| = 0.20
    # ECE = (2/6) * (0.15 + 0.05 + 0.20) = 0.4 / 3. Rows are given shuffled.
    p = np.array([0.7, 0.1, 0.6, 0.9, 0.2, 0.3])
    y = np.array([1, 0, 0, 1, 0, 1])
    assert ece(y, p, bins=3) == pytest.approx(0.4 / 3, abs=1e-12)


def test_ece_hand_computed_uneven_bins() -> None:
    # 7 rows into 3 bins -> sizes 3, 2, 2 (np.array_split):
    #   p (0.05, 0.1, 0.2) y (0, 0, 1): |0.35/3 - 1/3| * 3 = |0.35 - 1| = 0.65
    #   p (0.4, 0.5)       y (1, 0):    |0.45 - 0.5|  * 2 = 0.10
    #   p (0.8, 0.9)       y (1, 1):    |0.85 - 1.0|  * 2 = 0.30
    # ECE = (0.65 + 0.10 + 0.30) / 7 = 0.15
    p = np.array([0.05, 0.1, 0.2, 0.4, 0.5, 0.8, 0.9])
    y = np.array([0, 0, 1, 1, 0, 1, 1])
    assert ece(y, p, bins=3) == pytest.approx(0.15, abs=1e-12)
    mean_p, mean_y, count = reliability_bins(y, p, bins=3)
    np.testing.assert_allclose(mean_p, [0.35 / 3, 0.45, 0.85])
    np.testing.assert_allclose(mean_y, [1 / 3, 0.5, 1.0])
    np.testing.assert_array_equal(count, [3, 2, 2])


def test_reliability_bins_match_array_split() -> None:
    y, p = _data(1003, seed=5, decimals=6)
    order = np.argsort(p, kind="stable")
    parts = list(zip(np.array_split(p[order], 15), np.array_split(y[order], 15), strict=True))
    mean_p, mean_y, count = reliability_bins(y, p, bins=15)
    np.testing.assert_allclose(mean_p, [a.mean() for a, _ in parts])
    np.testing.assert_allclose(mean_y, [b.mean() for _, b in parts])
    np.testing.assert_array_equal(count, [a.size for a, _ in parts])
    expected = sum(a.size * abs(a.mean() - b.mean()) for a, b in parts) / p.size
    assert ece(y, p, bins=15) == pytest.approx(expected, abs=1e-12)


def test_reliability_bins_drop_empty_bins() -> None:
    mean_p, _, count = reliability_bins([0, 1, 1], [0.2, 0.4, 0.9], bins=5)
    np.testing.assert_array_equal(count, [1, 1, 1])
    np.testing.assert_allclose(mean_p, [0.2, 0.4, 0.9])
    assert math.isnan(ece([], [], bins=5))


def test_metric_block_keys_and_json_safety() -> None:
    y, p = _data(500, seed=6)
    block = metric_block(y, p, p_true=np.clip(p + 0.01, 0, 1))
    base = {"auc", "logloss", "ne", "calibration_ratio", "ece", "n", "positives"}
    assert set(block) == base | {"oracle_auc", "oracle_logloss"}
    assert block["n"] == 500 and isinstance(block["n"], int)
    assert block["auc"] == pytest.approx(roc_auc_score(y, p))
    single = metric_block(np.zeros(4), np.full(4, 0.1))
    assert single["auc"] is None and single["ne"] is None and single["calibration_ratio"] is None
    assert set(single) == base
    json.dumps(single, allow_nan=False)
    json.dumps(block, allow_nan=False)


def test_bootstrap_matches_naive_resampling() -> None:
    y, p_a = _data(300, seed=7)
    p_b = np.clip(p_a + np.random.default_rng(8).normal(0, 0.2, 300), 0, 1)
    idx = np.random.default_rng(11).integers(0, 300, size=(50, 300))  # the draws the function makes
    naive = [roc_auc_score(y[i], p_a[i]) - roc_auc_score(y[i], p_b[i]) for i in idx]
    lo, hi = bootstrap_auc_diff(y, p_a, p_b, n_boot=50, seed=11)
    np.testing.assert_allclose([lo, hi], np.percentile(naive, [2.5, 97.5]), atol=1e-12)
    assert lo < auc(y, p_a) - auc(y, p_b) < hi


def test_bootstrap_groups_resample_whole_groups() -> None:
    y, p_a = _data(400, seed=9)
    p_b = np.clip(p_a + np.random.default_rng(10).normal(0, 0.2, 400), 0, 1)
    groups = np.repeat(np.arange(100) * 7, 4)  # labels need not be contiguous ids
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    draws = np.random.default_rng(3).integers(0, 100, size=(40, 100))
    naive = []
    for d in draws:
        rows = np.concatenate([members[g] for g in d])
        naive.append(roc_auc_score(y[rows], p_a[rows]) - roc_auc_score(y[rows], p_b[rows]))
    got = bootstrap_auc_diff(y, p_a, p_b, n_boot=40, seed=3, groups=groups)
    np.testing.assert_allclose(got, np.percentile(naive, [2.5, 97.5]), atol=1e-12)


def test_bootstrap_identical_models_and_determinism() -> None:
    y, p = _data(200, seed=12)
    assert bootstrap_auc_diff(y, p, p, n_boot=30) == (0.0, 0.0)
    q = p[::-1].copy()
    assert bootstrap_auc_diff(y, p, q, seed=5) == bootstrap_auc_diff(y, p, q, seed=5)
    assert all(math.isnan(v) for v in bootstrap_auc_diff([], [], []))


def test_bootstrap_interval_brackets_the_difference_on_100k_grouped_rows() -> None:
    """At scale, with groups: the interval is ordered, narrow, and holds the observed AUC difference."""
    y, p_a = _data(100_000, seed=13, decimals=4)
    p_b = np.clip(p_a + np.random.default_rng(14).normal(0, 0.05, 100_000), 0, 1)
    lo, hi = bootstrap_auc_diff(y, p_a, p_b, n_boot=200, groups=np.arange(100_000) // 10)
    assert lo < auc(y, p_a) - auc(y, p_b) < hi
    assert hi - lo < 0.02


def test_bootstrap_resampling_seeds_matches_naive_two_level_draws() -> None:
    """Rows are drawn as without `resample_seeds`; each model's seeds then with replacement, per resample."""
    y, p0 = _data(300, seed=15)
    rng = np.random.default_rng(16)
    p_a = np.clip(p0 + rng.normal(0, 0.15, (3, 300)), 0, 1)  # 3 seeds of a
    p_b = np.clip(p0 + rng.normal(0, 0.25, (2, 300)), 0, 1)  # 2 seeds of b
    idx = np.random.default_rng(4).integers(0, 300, size=(60, 300))
    seed_rng = np.random.default_rng([4, 1])
    picks_a = seed_rng.multinomial(3, np.full(3, 1 / 3), size=60)
    picks_b = seed_rng.multinomial(2, np.full(2, 1 / 2), size=60)
    naive = [
        np.dot(pa, [roc_auc_score(y[i], p[i]) for p in p_a]) / 3
        - np.dot(pb, [roc_auc_score(y[i], p[i]) for p in p_b]) / 2
        for i, pa, pb in zip(idx, picks_a, picks_b, strict=True)
    ]
    got = bootstrap_auc_diff(y, p_a, p_b, n_boot=60, seed=4, resample_seeds=True)
    np.testing.assert_allclose(got, np.percentile(naive, [2.5, 97.5]), atol=1e-12)


def test_bootstrap_resampling_seeds_widens_only_where_seeds_differ() -> None:
    y, p0 = _data(2000, seed=17)
    p_b = np.clip(p0 + np.random.default_rng(18).normal(0, 0.2, 2000), 0, 1)
    same = np.stack([p0, p0, p0])
    assert bootstrap_auc_diff(y, same, p_b, n_boot=100, resample_seeds=True) == bootstrap_auc_diff(
        y, same, p_b, n_boot=100
    )
    # seeds far apart: one good, two noisy; drawing seeds moves the mean by far more than the rows do
    spread = np.stack([p0, np.clip(p0 + np.random.default_rng(19).normal(0, 0.6, 2000), 0, 1), p_b])
    lo, hi = bootstrap_auc_diff(y, spread, p_b, n_boot=200)
    lo_s, hi_s = bootstrap_auc_diff(y, spread, p_b, n_boot=200, resample_seeds=True)
    assert hi_s - lo_s > 1.5 * (hi - lo)
    assert lo_s < lo and hi_s > hi
