"""Post-hoc calibration fitters: Platt scaling or isotonic maps per scope key.

Fitting is pure numpy and deterministic. Isotonic maps are stored as monotone piecewise-linear knot
tables, evaluated in torch by `unictr.modules.calibration` (the model's layer owns applying a map).
Scoped fits follow a fallback chain (view_type -> surface -> global): a key with too little data, or a
single class, borrows the fit of its nearest ancestor that has its own. Every fitter takes sample
weights (recency); Platt fits can be shrunk towards their ancestor's fit (`PlattPrior`), so a key with
little evidence moves only as far as its data supports.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from unictr.modules.calibration import Y_CLIP, apply_piecewise_linear_keyed

PLATT_L2 = 1e-6


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


@dataclass(frozen=True)
class PlattPrior:
    """A Gaussian prior on Platt's (a, b): mean `center`, 2×2 `precision` (in summed-weight units)."""

    center: tuple[float, float]
    precision: np.ndarray

    @classmethod
    def from_fit(
        cls, logit: np.ndarray, w: np.ndarray, a: float, b: float, strength: float
    ) -> PlattPrior:
        """The prior centred on the fit (a, b) of rows `logit` (weights `w`), worth `strength` units of
        their Fisher information Σ w p(1-p): precision = strength · H / Σ w p(1-p), H the rows' Hessian.

        So the prior on b counts like `strength` units of Σ p(1-p) (≈ positives when rates are low), and the
        prior on a is scaled by the rows' own logit spread: a key whose Σ w p(1-p) equals `strength` lands
        about halfway between its own fit and the parent's."""
        x = np.asarray(logit, dtype=np.float64)
        v = np.asarray(w, dtype=np.float64) * (q := _sigmoid(a * x + b)) * (1.0 - q)
        feats = np.stack([x, np.ones_like(x)], axis=1)
        hess = (feats * v[:, None]).T @ feats
        return cls((a, b), strength * hess / max(float(v.sum()), 1e-12))


def fit_platt(
    logit: np.ndarray | Sequence[float],
    y: np.ndarray | Sequence[float],
    w: np.ndarray | Sequence[float] | None = None,
    prior: PlattPrior | None = None,
) -> tuple[float, float]:
    """Fit p = sigmoid(a * logit + b) by Newton's method on the (weighted) mean log loss.

    A tiny L2 (1e-6 on a and b) keeps the Hessian invertible and the answer finite on separable data;
    step halving guarantees the objective never increases. Starts from the identity map (a=1, b=0), or
    from the prior's centre. With `prior`, the objective is the weighted log loss summed (not averaged)
    plus the prior's quadratic penalty, divided by the total weight: a penalised (MAP) Platt fit.
    """
    x = np.asarray(logit, dtype=np.float64).reshape(-1)
    t = np.asarray(y, dtype=np.float64).reshape(-1)
    wt = np.ones_like(x) if w is None else np.asarray(w, dtype=np.float64).reshape(-1)
    if not x.shape == t.shape == wt.shape or x.size == 0 or not wt.sum() > 0:
        raise ValueError(f"need equal non-empty shapes and positive weight, got {x.shape}, {t.shape}, {wt.shape}")
    total = wt.sum()
    wt = wt / total
    feats = np.stack([x, np.ones_like(x)], axis=1)
    center = np.zeros(2) if prior is None else np.asarray(prior.center, dtype=np.float64)
    pen = np.zeros((2, 2)) if prior is None else prior.precision / total
    pen = pen + PLATT_L2 * np.eye(2)
    ridge = PLATT_L2 * center  # the tiny L2 pulls towards 0, as without a prior

    def loss(theta: np.ndarray) -> float:
        z = feats @ theta
        d = theta - center
        return float(wt @ (np.logaddexp(0.0, z) - t * z) + 0.5 * d @ pen @ d + ridge @ d)

    theta = np.array([1.0, 0.0]) if prior is None else center.copy()
    cur = loss(theta)
    for _ in range(100):
        p = _sigmoid(feats @ theta)
        grad = feats.T @ (wt * (p - t)) + pen @ (theta - center) + ridge
        hess = (feats * (wt * p * (1.0 - p))[:, None]).T @ feats + pen
        step = np.linalg.solve(hess, grad)
        if np.abs(step).max() < 1e-10:
            break
        scale, new = 1.0, loss(theta - step)
        while new > cur and scale > 1e-8:
            scale *= 0.5
            new = loss(theta - scale * step)
        if new > cur:
            break
        theta, cur = theta - scale * step, new
    return float(theta[0]), float(theta[1])


def _pav(y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool-adjacent-violators on weighted points already sorted by strictly increasing x.

    Returns, per pooled block, the index of its first point, its weighted mean y and its total weight.
    """
    starts: list[int] = []
    means: list[float] = []
    weights: list[float] = []
    for i in range(y.size):
        starts.append(i)
        means.append(float(y[i]))
        weights.append(float(w[i]))
        while len(means) > 1 and means[-2] >= means[-1]:
            m, wl = means.pop(), weights.pop()
            starts.pop()
            total = weights[-1] + wl
            means[-1] = (means[-1] * weights[-1] + m * wl) / total
            weights[-1] = total
    return np.array(starts, dtype=np.int64), np.array(means), np.array(weights)


def _mass_groups(weights: np.ndarray, n_groups: int) -> np.ndarray:
    """Group ids (contiguous, <= n_groups) for consecutive blocks, each group holding >= total/n_groups.

    Greedy: a group closes once it reaches the target mass; a light remainder joins the last group, so
    no knot rests on a handful of rows (a lone extreme block would otherwise tilt the table's end).
    """
    target = weights.sum() / n_groups
    group = np.empty(weights.size, dtype=np.int64)
    g, acc = 0, 0.0
    for i, w in enumerate(weights):
        group[i] = g
        acc += w
        if acc >= target:
            g, acc = g + 1, 0.0
    if acc > 0 and g > 0:
        group[group == g] = g - 1
    return group


def fit_isotonic(
    p: np.ndarray | Sequence[float],
    y: np.ndarray | Sequence[float],
    max_knots: int = 64,
    w: np.ndarray | Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Increasing isotonic regression of y on p as a monotone piecewise-linear knot table.

    Ties in p are averaged first, then PAV pools violating neighbours into constant blocks. If both
    ends of every block fit in `max_knots`, the knots are the block ends, so linear interpolation
    reproduces sklearn's `IsotonicRegression(out_of_bounds="clip")` exactly (constant on a block, linear
    between blocks). Otherwise adjacent blocks are merged into <= max_knots groups of at least 1/max_knots
    of the rows each, one knot per group at its weighted mean (p, y); merging contiguous blocks keeps
    the table monotone.
    Knot y values are clipped to [1e-6, 1 - 1e-6]. Returns strictly increasing x and non-decreasing y.
    `w`: positive sample weights (default 1 each).
    """
    if max_knots < 2:
        raise ValueError("max_knots must be >= 2")
    pv = np.asarray(p, dtype=np.float64).reshape(-1)
    yv = np.asarray(y, dtype=np.float64).reshape(-1)
    wv = np.ones_like(pv) if w is None else np.asarray(w, dtype=np.float64).reshape(-1)
    if not pv.shape == yv.shape == wv.shape or pv.size == 0 or not (wv > 0).all():
        raise ValueError(f"need equal non-empty shapes and positive weights, got {pv.shape}, {yv.shape}, {wv.shape}")
    ux, inv = np.unique(pv, return_inverse=True)
    uw = np.bincount(inv, weights=wv)
    uy = np.bincount(inv, weights=yv * wv) / uw
    starts, means, weights = _pav(uy, uw)
    ends = np.r_[starts[1:], ux.size] - 1
    xk = np.stack([ux[starts], ux[ends]], axis=1).reshape(-1)
    yk = np.repeat(means, 2)
    keep = np.r_[True, xk[1:] != xk[:-1]]  # a single-point block gives a duplicate knot
    xk, yk = xk[keep], yk[keep]
    if xk.size > max_knots:
        group = _mass_groups(weights, max_knots)
        block = np.repeat(np.arange(starts.size), ends - starts + 1)
        block_x = np.bincount(block, weights=ux * uw) / weights
        gw = np.bincount(group, weights=weights)
        xk = np.bincount(group, weights=block_x * weights) / gw
        yk = np.bincount(group, weights=means * weights) / gw
    return xk, np.clip(yk, Y_CLIP, 1.0 - Y_CLIP)


@dataclass(frozen=True)
class ScopedCalibration:
    """Per-key calibration parameters; row `index[k]` of each tensor belongs to key k.

    Platt: `tensors = {"a": [K], "b": [K]}`. Isotonic: `{"x_knots": [K, M], "y_knots": [K, M]}` on
    probabilities, shorter tables padded with their last knot. Fallen-back keys hold a copy of the
    fit they use, so applying needs no chain lookup. `fallbacks[k]` = {"rows", "fell_back", "used"}.
    """

    method: Literal["platt", "isotonic"]
    keys: tuple[Hashable, ...]
    tensors: dict[str, Tensor]
    fallbacks: dict[Hashable, dict[str, object]]

    @property
    def index(self) -> dict[Hashable, int]:
        return {k: i for i, k in enumerate(self.keys)}

    def key_ids(self, keys: Sequence[Hashable]) -> Tensor:
        """Tensor row ids (long) of a sequence of keys."""
        index = self.index
        return torch.tensor([index[k] for k in keys], dtype=torch.long)

    def apply(self, logit: Tensor, key: Tensor) -> Tensor:
        """Calibrated probabilities for logits[N] whose keys (row ids, see `key_ids`) are key[N]."""
        if self.method == "platt":
            return torch.sigmoid(self.tensors["a"][key] * logit + self.tensors["b"][key])
        return apply_piecewise_linear_keyed(
            torch.sigmoid(logit), key, self.tensors["x_knots"], self.tensors["y_knots"]
        )


def _chain(key: Hashable, parents: Mapping[Hashable, Hashable | None]) -> list[Hashable]:
    """`key` followed by its ancestors up to the root; raises on a cycle."""
    chain = [key]
    while (parent := parents.get(chain[-1])) is not None:
        if parent in chain:
            raise ValueError(f"cycle in calibration parents at {parent!r}")
        chain.append(parent)
    return chain


def _slope_fixed(fit: tuple[float, float]) -> PlattPrior:
    """A prior that pins the slope at `fit`'s and leaves the intercept free (it still matches the mean)."""
    return PlattPrior(fit, np.diag([1e12, 0.0]))


def fit_scoped(  # long: the chain walk, the shrinkage and the report are one pass over the keys
    logits: np.ndarray | Sequence[float],
    y: np.ndarray | Sequence[float],
    keys: Sequence[Hashable] | np.ndarray,
    parents: Mapping[Hashable, Hashable | None],
    min_rows: int = 200,
    method: Literal["platt", "isotonic"] = "platt",
    weights: np.ndarray | Sequence[float] | None = None,
    prior_strength: float = 0.0,
) -> ScopedCalibration:
    """Fit a calibration per scope key with fallback to the parent chain.

    `keys[i]` is row i's most specific key; `parents` maps each key to its parent (e.g. view_type ->
    surface -> global). A key's rows are its own rows plus all its descendants', so the single root is
    fitted on all rows. Keys with < `min_rows` rows or one class use the nearest ancestor's own fit.
    Every key named in `keys` or `parents` gets a row, so unseen keys still resolve at serving time.
    `weights`: positive sample weights (e.g. recency). `prior_strength` > 0 (Platt only): hierarchical
    shrinkage, each key's fit is a penalised Platt fit whose Gaussian prior is centred on its nearest
    fitted ancestor's (already shrunk) fit, worth `prior_strength` units of Σ w p(1-p) (`PlattPrior`); a
    key with little evidence stays near its parent, and a single-class key with >= `min_rows` rows is
    fitted too (the prior keeps it finite). A Platt fit with slope a <= 0 (no ranking signal on the key's
    rows; the map would reverse their order) is refitted with its ancestor's slope and its own intercept,
    so the map stays increasing and still matches the key's mean.
    """
    if method not in ("platt", "isotonic"):
        raise ValueError(f"unknown calibration method {method!r}")
    if prior_strength < 0 or (prior_strength > 0 and method != "platt"):
        raise ValueError(f"prior_strength must be >= 0 and is for method 'platt' only, got {prior_strength}")
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    t = np.asarray(y, dtype=np.float64).reshape(-1)
    w = np.ones_like(z) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if isinstance(keys, np.ndarray):
        keys = keys.tolist()  # numpy scalars -> Python values, so report keys match `parents`
    codes: dict[Hashable, int] = {}
    leaf = np.fromiter((codes.setdefault(k, len(codes)) for k in keys), dtype=np.int64, count=len(keys))
    if not z.shape == t.shape == leaf.shape == w.shape:
        raise ValueError(f"shape mismatch: logits {z.shape}, y {t.shape}, keys {leaf.shape}, weights {w.shape}")
    named = [*codes, *parents, *(v for v in parents.values() if v is not None)]
    chains = {k: _chain(k, parents) for k in named}
    roots = {c[-1] for c in chains.values()}
    if len(roots) != 1:
        raise ValueError(f"calibration parents must form one tree, found roots {sorted(map(repr, roots))}")
    root = roots.pop()
    all_keys = tuple(sorted(chains, key=lambda k: (len(chains[k]), repr(k))))  # ancestors first

    inputs = z if method == "platt" else _sigmoid(z)
    fits: dict[Hashable, tuple] = {}
    priors: dict[Hashable, PlattPrior] = {}  # per fitted key: the prior its children get
    report: dict[Hashable, dict[str, object]] = {}
    for k in all_keys:
        mask = np.isin(leaf, [code for leaf_key, code in codes.items() if k in chains[leaf_key]])
        n, pos = int(mask.sum()), float(t[mask].sum())
        if k == root and not 0 < pos < n:
            raise ValueError("cannot calibrate: the root scope has a single class (or no rows)")
        ancestor = next((a for a in chains[k][1:] if a in fits), None)
        if k == root or (n >= min_rows and (0 < pos < n or prior_strength > 0)):
            if method == "isotonic":
                fits[k] = fit_isotonic(inputs[mask], t[mask], w=w[mask])
            else:
                fits[k] = fit_platt(inputs[mask], t[mask], w[mask], priors.get(ancestor))
                if fits[k][0] <= 0 and k != root:  # a decreasing map would reverse the key's order
                    fits[k] = fit_platt(inputs[mask], t[mask], w[mask], _slope_fixed(fits[ancestor]))
                if prior_strength > 0:
                    priors[k] = PlattPrior.from_fit(inputs[mask], w[mask], *fits[k], prior_strength)
            report[k] = {"rows": n, "fell_back": False, "used": k}
        else:
            report[k] = {"rows": n, "fell_back": True, "used": ancestor}

    per_key = [fits[report[k]["used"]] for k in all_keys]
    if method == "platt":
        a, b = np.array(per_key).T
        tensors = {"a": torch.tensor(a, dtype=torch.float32), "b": torch.tensor(b, dtype=torch.float32)}
    else:
        m = max(xk.size for xk, _ in per_key)
        padded = np.array([[np.pad(v, (0, m - v.size), mode="edge") for v in fit] for fit in per_key])
        tensors = {
            "x_knots": torch.tensor(padded[:, 0], dtype=torch.float32),
            "y_knots": torch.tensor(padded[:, 1], dtype=torch.float32),
        }
    return ScopedCalibration(method=method, keys=all_keys, tensors=tensors, fallbacks=report)
