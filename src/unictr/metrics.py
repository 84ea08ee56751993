"""Offline evaluation metrics for binary engagement labels (pure numpy, vectorised).

Ranking (AUC), probability quality (log loss, normalized entropy) and calibration (ratio with its
interval and z-score, equal-mass ECE, reliability bins), plus a paired bootstrap interval for the AUC
difference of two models. Labels are 0/1, predictions are probabilities. Every metric returns nan
where it is undefined (one class absent, empty input) instead of raising, so a report over many
slices never breaks on a thin one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

EPS = 1e-7
_CHUNK_CELLS = 4_000_000  # bootstrap works on [resamples, rows] blocks of at most this many cells


def _as_arrays(y: np.ndarray | Sequence[float], *preds: np.ndarray | Sequence[float]) -> list[np.ndarray]:
    """1-D float64 copies of the label and prediction arrays; raises on a shape mismatch."""
    out = [np.asarray(a, dtype=np.float64).reshape(-1) for a in (y, *preds)]
    if any(a.shape != out[0].shape for a in out):
        raise ValueError(f"shape mismatch: {[a.shape for a in out]}")
    return out


class _AucPlan:
    """Score-order layout of one model's predictions, reusable for any row weighting.

    A positive beats every negative scored below it and half-beats the negatives tied with it (the
    average-rank / Mann-Whitney statistic, equal to the trapezoidal ROC area). With negatives in
    ascending score order, `lo`/`hi` are each positive's count of negatives scored strictly below /
    at most its score, so a weighting's AUC needs one cumulative sum over the negatives.
    """

    def __init__(self, pos: np.ndarray, p: np.ndarray) -> None:
        order = np.argsort(p, kind="stable")
        pos_sorted = pos[order]
        self.neg_idx = order[~pos_sorted]
        self.pos_idx = order[pos_sorted]
        s_neg, s_pos = p[self.neg_idx], p[self.pos_idx]
        self.lo = np.searchsorted(s_neg, s_pos, side="left")
        self.hi = np.searchsorted(s_neg, s_pos, side="right")

    def auc(self, w: np.ndarray) -> np.ndarray:
        """AUC under row weights `w[..., n]`; leading axes are independent weightings (nan: no class)."""
        w_pos = w[..., self.pos_idx]
        cum_neg = np.cumsum(w[..., self.neg_idx], axis=-1)
        cum_neg = np.concatenate([np.zeros((*w.shape[:-1], 1), dtype=cum_neg.dtype), cum_neg], axis=-1)
        num = (w_pos * (cum_neg[..., self.lo] + cum_neg[..., self.hi])).sum(axis=-1) / 2.0
        den = w_pos.sum(axis=-1) * cum_neg[..., -1]
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def auc(
    y: np.ndarray | Sequence[float],
    p: np.ndarray | Sequence[float],
    w: np.ndarray | Sequence[float] | None = None,
) -> float:
    """ROC AUC with ties counted as half (equals sklearn `roc_auc_score`, also with `sample_weight`)."""
    if w is None:
        y, p = _as_arrays(y, p)
        w = np.ones_like(y)
    else:
        y, p, w = _as_arrays(y, p, w)
    return float(_AucPlan(y > 0.5, p).auc(w))


def logloss(y: np.ndarray | Sequence[float], p: np.ndarray | Sequence[float]) -> float:
    """Mean binary cross-entropy with `p` clipped to [1e-7, 1 - 1e-7]; nan on empty input."""
    y, p = _as_arrays(y, p)
    if y.size == 0:
        return math.nan
    p = np.clip(p, EPS, 1.0 - EPS)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def normalized_entropy(y: np.ndarray | Sequence[float], p: np.ndarray | Sequence[float]) -> float:
    """Log loss divided by the entropy of the base rate (< 1 beats predicting the mean CTR).

    nan when the base rate is 0 or 1 (the reference entropy is zero).
    """
    y, p = _as_arrays(y, p)
    base = float(y.mean()) if y.size else math.nan
    if not 0.0 < base < 1.0:
        return math.nan
    h = -(base * math.log(base) + (1.0 - base) * math.log1p(-base))
    return logloss(y, p) / h


def calibration_ratio(y: np.ndarray | Sequence[float], p: np.ndarray | Sequence[float]) -> float:
    """mean(p) / mean(y): 1 is calibrated on average, > 1 over-predicts; nan when mean(y) == 0."""
    y, p = _as_arrays(y, p)
    if y.size == 0 or y.sum() == 0:
        return math.nan
    return float(p.mean() / y.mean())


def calibration_z(y: np.ndarray | Sequence[float], p: np.ndarray | Sequence[float]) -> float:
    """Calibration z-score (sum p - sum y) / sqrt(sum p(1 - p)): > 0 over-predicts.

    Given the predictions, a calibrated model's labels are independent Bernoulli(p_i), so sum y has
    mean sum p and variance sum p(1 - p); z is then about N(0, 1) whatever the slice size, which makes
    one threshold meaningful for a big surface and a thin one alike. nan on empty input or when the
    variance is zero (every p is 0 or 1).
    """
    y, p = _as_arrays(y, p)
    var = float(np.sum(p * (1.0 - p)))
    if y.size == 0 or var <= 0.0:
        return math.nan
    return float((p.sum() - y.sum()) / math.sqrt(var))


def ratio_interval(
    y: np.ndarray | Sequence[float], p: np.ndarray | Sequence[float], level: float = 0.95
) -> tuple[float, float]:
    """`level` interval of the calibration ratio sum p / sum y, from the sampling noise of sum y.

    The predictions are fixed; the noise is in the labels. Under calibration sum y ~ sum p with
    variance V = sum p(1 - p) (independent Bernoulli labels, normal approximation), so the expected
    positive count lies in sum y -/+ z_level * sqrt(V) and the ratio in
    [sum p / (sum y + h), sum p / (sum y - h)], h = z_level * sqrt(V). The interval contains 1 exactly
    when |calibration_z| <= z_level, so it and the z-score never disagree. The upper end is inf when
    sum y <= h (too few positives to bound it), which covers sum y = 0 (ratio itself undefined) with a
    finite lower end. (nan, nan) on empty input or V = 0.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    y, p = _as_arrays(y, p)
    var = float(np.sum(p * (1.0 - p)))
    if y.size == 0 or var <= 0.0:
        return math.nan, math.nan
    half = NormalDist().inv_cdf(0.5 + level / 2.0) * math.sqrt(var)
    sum_p, sum_y = float(p.sum()), float(y.sum())
    upper = sum_p / (sum_y - half) if sum_y > half else math.inf
    return sum_p / (sum_y + half), upper


def reliability_bins(
    y: np.ndarray | Sequence[float], p: np.ndarray | Sequence[float], bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-mass reliability diagram: per-bin (mean_p, mean_y, count) in ascending p.

    Rows are sorted by p and cut into `bins` nearly equal-count groups exactly as `np.array_split`
    does (the first `n % bins` groups hold one extra row). Equal mass keeps every bin statistically
    meaningful when predictions crowd near the base rate, as CTRs do. Empty bins (n < bins) are dropped.
    """
    if bins < 1:
        raise ValueError("bins must be >= 1")
    y, p = _as_arrays(y, p)
    n = y.size
    order = np.argsort(p, kind="stable")
    q, r = divmod(n, bins)
    sizes = np.full(bins, q, dtype=np.int64)
    sizes[:r] += 1
    sizes = sizes[sizes > 0]
    bin_id = np.repeat(np.arange(sizes.size), sizes)
    mean_p = np.bincount(bin_id, weights=p[order], minlength=sizes.size) / sizes
    mean_y = np.bincount(bin_id, weights=y[order], minlength=sizes.size) / sizes
    return mean_p, mean_y, sizes


def ece(y: np.ndarray | Sequence[float], p: np.ndarray | Sequence[float], bins: int = 15) -> float:
    """Expected calibration error over equal-mass bins: sum_b (n_b / n) * |mean p_b - mean y_b|."""
    mean_p, mean_y, count = reliability_bins(y, p, bins)
    if count.sum() == 0:
        return math.nan
    return float(np.sum(count * np.abs(mean_p - mean_y)) / count.sum())


def json_float(x: float) -> float | None:
    """`x` as a JSON-safe float: nan (an undefined metric) becomes None.

    The one NaN helper for every JSON output (metric blocks, the experiment report, the registry's
    gate); the metrics here are finite wherever they are defined, so nan is the only case to map.
    """
    return None if math.isnan(x) else float(x)


def metric_block(
    y: np.ndarray | Sequence[float], p: np.ndarray | Sequence[float], p_true: np.ndarray | None = None
) -> dict[str, float | int | None]:
    """The standard metric set for one slice, JSON-safe (nan -> None).

    With `p_true` (the simulator's true click probability) also reports the oracle AUC / log loss,
    the ceiling any model can reach on the same rows.
    """
    y, p = _as_arrays(y, p)
    out: dict[str, float | int | None] = {
        "auc": json_float(auc(y, p)),
        "logloss": json_float(logloss(y, p)),
        "ne": json_float(normalized_entropy(y, p)),
        "calibration_ratio": json_float(calibration_ratio(y, p)),
        "ece": json_float(ece(y, p)),
        "n": int(y.size),
        "positives": int(y.sum()),  # an AUC over a handful of positives says little, whatever its interval
    }
    if p_true is not None:
        out["oracle_auc"] = json_float(auc(y, p_true))
        out["oracle_logloss"] = json_float(logloss(y, p_true))
    return out


def bootstrap_auc_diff(
    y: np.ndarray | Sequence[float],
    p_a: np.ndarray | Sequence[float],
    p_b: np.ndarray | Sequence[float],
    n_boot: int = 200,
    seed: int = 0,
    groups: np.ndarray | Sequence[object] | None = None,
    resample_seeds: bool = False,
) -> tuple[float, float]:
    """95% percentile interval of AUC(a) - AUC(b) under a paired bootstrap.

    Rows (or whole `groups`, e.g. request ids, so correlated impressions move together) are resampled
    with replacement; both models see the same resample. A resample is expressed as integer
    multiplicities used as AUC weights, which is exactly the AUC of the resampled rows, so each model is
    sorted once and all resamples are scored as a batch. Resamples lacking a class are skipped.

    `p_a` / `p_b` may also be `[k, n]` (e.g. k training seeds of a model): the statistic is then the mean
    AUC over the k rows of a minus that of b, so the interval covers the seed-averaged difference (the
    eval rows are resampled, the seeds are not). `resample_seeds`: each resample also draws each model's
    k seeds with replacement (a two-level bootstrap), so the interval covers how much the seed mean moves
    from one set of training seeds to another too, not only the eval rows. The rows' draws are the same
    either way (the seeds' come from a stream of their own).
    """
    y = _as_arrays(y)[0]
    p_a, p_b = (np.atleast_2d(np.asarray(p, dtype=np.float64)) for p in (p_a, p_b))
    if p_a.shape[1:] != y.shape or p_b.shape[1:] != y.shape:
        raise ValueError(f"shape mismatch: labels {y.shape}, predictions {p_a.shape} and {p_b.shape}")
    n = y.size
    if groups is None:
        gid, n_units = np.arange(n), n
    else:
        uniq, gid = np.unique(np.asarray(groups).reshape(-1), return_inverse=True)
        n_units = uniq.size
        if gid.shape != y.shape:
            raise ValueError(f"groups has shape {gid.shape}, expected {y.shape}")
    if n_units == 0:
        return math.nan, math.nan
    rng, seed_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    plans = [[_AucPlan(y > 0.5, p) for p in ps] for ps in (p_a, p_b)]
    chunk = max(1, _CHUNK_CELLS // n)
    diffs = []
    for lo in range(0, n_boot, chunk):
        m = min(chunk, n_boot - lo)
        draws = rng.integers(0, n_units, size=(m, n_units)) + n_units * np.arange(m)[:, None]
        mult = np.bincount(draws.ravel(), minlength=m * n_units).reshape(m, n_units)[:, gid]
        mean_auc = [_seed_mean(np.stack([plan.auc(mult) for plan in model]), seed_rng if resample_seeds else None)
                    for model in plans]
        diffs.append(mean_auc[0] - mean_auc[1])
    d = np.concatenate(diffs)
    d = d[~np.isnan(d)]
    if d.size == 0:
        return math.nan, math.nan
    lo_q, hi_q = np.percentile(d, [2.5, 97.5])
    return float(lo_q), float(hi_q)


def _seed_mean(aucs: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """Per resample, the mean of `aucs` `[k seeds, m resamples]` over the seeds, or (with `rng`) over k
    seeds drawn with replacement for each resample."""
    if rng is None:
        return aucs.mean(axis=0)
    k, m = aucs.shape
    picks = rng.multinomial(k, np.full(k, 1.0 / k), size=m)  # [m, k] how often each seed is drawn
    return (picks.T * aucs).sum(axis=0) / k
