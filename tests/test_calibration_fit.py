import numpy as np
import pytest
import torch
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from unictr.calibration.fit import fit_isotonic, fit_platt, fit_scoped
from unictr.modules.calibration import apply_piecewise_linear, apply_piecewise_linear_keyed


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _logits(n: int, a: float, b: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Model logits and labels drawn from sigmoid(a * logit + b), i.e. a known mis-calibration."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.0, 1.5, n)
    y = (rng.random(n) < _sigmoid(a * z + b)).astype(np.float64)
    return z, y


def test_platt_matches_sklearn_logistic_regression() -> None:
    z, y = _logits(5000, 0.7, -0.5, seed=0)
    a, b = fit_platt(z, y)
    ref = LogisticRegression(C=1e10, solver="newton-cholesky", tol=1e-10, max_iter=1000).fit(z[:, None], y)
    assert a == pytest.approx(ref.coef_[0, 0], abs=1e-3)
    assert b == pytest.approx(ref.intercept_[0], abs=1e-3)
    assert fit_platt(z, y) == (a, b)  # deterministic


def test_platt_weighted_matches_sklearn() -> None:
    z, y = _logits(3000, 1.3, 0.4, seed=1)
    w = np.random.default_rng(2).random(3000) * 2
    a, b = fit_platt(z, y, w)
    ref = LogisticRegression(C=1e10, solver="newton-cholesky", tol=1e-10, max_iter=1000)
    ref.fit(z[:, None], y, sample_weight=w)
    assert a == pytest.approx(ref.coef_[0, 0], abs=1e-3)
    assert b == pytest.approx(ref.intercept_[0], abs=1e-3)


def test_platt_separable_data_stays_finite() -> None:
    a, b = fit_platt([-2.0, -1.0, 1.0, 2.0], [0, 0, 1, 1])
    assert np.isfinite([a, b]).all() and a > 0


def test_isotonic_matches_sklearn_on_fitted_points() -> None:
    rng = np.random.default_rng(3)
    p = np.round(rng.random(400), 2)  # ties
    y = (rng.random(400) < p**2).astype(np.float64)
    xk, yk = fit_isotonic(p, y, max_knots=10_000)
    assert np.all(np.diff(xk) > 0) and np.all(np.diff(yk) >= 0)
    ref = IsotonicRegression(out_of_bounds="clip", increasing=True).fit(p, y).predict(p)
    np.testing.assert_allclose(np.interp(p, xk, yk), np.clip(ref, 1e-6, 1 - 1e-6), atol=1e-6, rtol=0)
    assert yk.min() >= 1e-6 and yk.max() <= 1 - 1e-6


def test_isotonic_thinning_keeps_monotone_table_close_to_full_fit() -> None:
    rng = np.random.default_rng(4)
    p = rng.random(20_000)
    y = (rng.random(20_000) < 0.05 + 0.5 * p**2).astype(np.float64)
    x_full, y_full = fit_isotonic(p, y, max_knots=100_000)
    assert x_full.size > 64
    xk, yk = fit_isotonic(p, y, max_knots=64)
    assert 2 <= xk.size <= 64
    assert np.all(np.diff(xk) > 0) and np.all(np.diff(yk) >= 0)
    assert np.mean(np.abs(np.interp(p, xk, yk) - np.interp(p, x_full, y_full))) < 0.01
    assert np.interp(p, xk, yk).mean() == pytest.approx(y.mean(), abs=0.01)


def test_isotonic_constant_input_gives_single_knot() -> None:
    xk, yk = fit_isotonic([0.3, 0.3, 0.3, 0.3], [0, 1, 0, 0])
    np.testing.assert_allclose(xk, [0.3])
    np.testing.assert_allclose(yk, [0.25])
    out = apply_piecewise_linear(torch.tensor([0.0, 0.3, 1.0]), torch.tensor(xk), torch.tensor(yk))
    np.testing.assert_allclose(out.numpy(), [0.25, 0.25, 0.25])


def test_apply_piecewise_linear_matches_np_interp() -> None:
    xk = np.array([0.1, 0.2, 0.5, 0.55, 0.9])
    yk = np.array([0.01, 0.1, 0.3, 0.3, 0.95])
    x = np.concatenate([np.linspace(-0.5, 1.5, 201), xk]).reshape(-1, 2)  # 2-D input, knots, outside
    out = apply_piecewise_linear(torch.tensor(x), torch.tensor(xk), torch.tensor(yk))
    assert out.shape == x.shape
    np.testing.assert_allclose(out.numpy(), np.interp(x, xk, yk), atol=1e-12)


def test_apply_piecewise_linear_keyed_with_padding() -> None:
    tables = [
        (np.array([0.0, 0.5, 1.0]), np.array([0.1, 0.2, 0.9])),
        (np.array([0.2, 0.3, 0.4, 0.6, 0.8]), np.array([0.0, 0.05, 0.5, 0.6, 0.7])),
        (np.array([0.4, 0.45]), np.array([0.3, 0.35])),
    ]
    m = max(t[0].size for t in tables)
    xk = torch.tensor(np.stack([np.pad(t[0], (0, m - t[0].size), mode="edge") for t in tables]))
    yk = torch.tensor(np.stack([np.pad(t[1], (0, m - t[1].size), mode="edge") for t in tables]))
    rng = np.random.default_rng(5)
    x = rng.uniform(-0.2, 1.2, 500)
    key = rng.integers(0, 3, 500)
    out = apply_piecewise_linear_keyed(torch.tensor(x), torch.tensor(key), xk, yk).numpy()
    expected = np.array([np.interp(v, *tables[k]) for v, k in zip(x, key, strict=True)])
    np.testing.assert_allclose(out, expected, atol=1e-12)


def test_keyed_apply_exports_to_onnx(tmp_path) -> None:
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")

    class Calib(torch.nn.Module):
        def __init__(self, xk: torch.Tensor, yk: torch.Tensor) -> None:
            super().__init__()
            self.register_buffer("xk", xk)
            self.register_buffer("yk", yk)

        def forward(self, x: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
            return apply_piecewise_linear_keyed(x, key, self.xk, self.yk)

    gen = torch.Generator().manual_seed(0)
    xk, yk = (torch.rand(3, 6, generator=gen).sort(1).values for _ in range(2))
    model = Calib(xk, yk).eval()
    n = torch.export.Dim("n")
    path = tmp_path / "calib.onnx"
    torch.onnx.export(
        model,
        (torch.rand(8), torch.randint(0, 3, (8,))),
        str(path),
        dynamo=True,
        dynamic_shapes={"x": {0: n}, "key": {0: n}},
    )
    x, key = torch.rand(37, generator=gen) * 1.4 - 0.2, torch.randint(0, 3, (37,), generator=gen)
    sess = ort.InferenceSession(str(path))
    names = [i.name for i in sess.get_inputs()]
    (out,) = sess.run(None, {names[0]: x.numpy(), names[1]: key.numpy()})
    np.testing.assert_allclose(out, model(x, key).numpy(), atol=1e-6)


PARENTS = {
    ("feed", "video"): "feed",
    ("feed", "image"): "feed",
    ("feed", "text"): "feed",
    ("search", "video"): "search",
    ("ads", "video"): "ads",
    "feed": "global",
    "search": "global",
    "ads": "global",
}


def _scoped_data() -> tuple[np.ndarray, np.ndarray, list]:
    rng = np.random.default_rng(6)
    counts = {("feed", "video"): 3000, ("feed", "image"): 50, ("feed", "text"): 400, ("search", "video"): 150}
    keys = [k for k, c in counts.items() for _ in range(c)]
    z, y = _logits(len(keys), 0.8, -0.3, seed=7)
    y[[i for i, k in enumerate(keys) if k == ("feed", "text")]] = 0.0  # enough rows, one class
    order = rng.permutation(len(keys))
    return z[order], y[order], [keys[i] for i in order]


def test_fit_scoped_platt_fallbacks() -> None:
    z, y, keys = _scoped_data()
    cal = fit_scoped(z, y, keys, PARENTS, min_rows=200, method="platt")
    fb = cal.fallbacks
    assert set(cal.keys) == set(PARENTS) | {"global"}
    assert cal.keys[0] == "global"
    assert fb["global"] == {"rows": len(keys), "fell_back": False, "used": "global"}
    assert fb["feed"] == {"rows": 3450, "fell_back": False, "used": "feed"}
    assert fb[("feed", "video")] == {"rows": 3000, "fell_back": False, "used": ("feed", "video")}
    assert fb[("feed", "image")] == {"rows": 50, "fell_back": True, "used": "feed"}  # too few rows
    assert fb[("feed", "text")] == {"rows": 400, "fell_back": True, "used": "feed"}  # single class
    assert fb["search"] == {"rows": 150, "fell_back": True, "used": "global"}
    assert fb[("search", "video")] == {"rows": 150, "fell_back": True, "used": "global"}
    assert fb[("ads", "video")] == {"rows": 0, "fell_back": True, "used": "global"}  # no data at all

    a, b = cal.tensors["a"], cal.tensors["b"]
    idx = cal.index
    np.testing.assert_allclose([a[idx["global"]], b[idx["global"]]], fit_platt(z, y), rtol=1e-6)
    feed = np.array([k[0] == "feed" for k in keys])
    np.testing.assert_allclose([a[idx["feed"]], b[idx["feed"]]], fit_platt(z[feed], y[feed]), rtol=1e-6)
    assert a[idx[("feed", "image")]] == a[idx["feed"]] and b[idx[("search", "video")]] == b[idx["global"]]

    key_ids = cal.key_ids(keys)
    out = cal.apply(torch.tensor(z, dtype=torch.float32), key_ids).numpy()
    np.testing.assert_allclose(out, _sigmoid(a[key_ids].numpy() * z + b[key_ids].numpy()), atol=1e-5)


def test_fit_scoped_isotonic_tables() -> None:
    z, y, keys = _scoped_data()
    cal = fit_scoped(z, y, keys, PARENTS, min_rows=200, method="isotonic")
    xk, yk = cal.tensors["x_knots"], cal.tensors["y_knots"]
    assert xk.shape == yk.shape and xk.shape[0] == len(cal.keys) and xk.shape[1] <= 64
    assert bool((xk.diff(dim=1) >= 0).all()) and bool((yk.diff(dim=1) >= 0).all())
    gx, gy = fit_isotonic(_sigmoid(z), y)
    row = cal.index["global"]
    np.testing.assert_allclose(xk[row, : gx.size].numpy(), gx, rtol=1e-6)
    np.testing.assert_allclose(yk[row, gx.size :].numpy(), gy[-1], rtol=1e-6)  # padded with the last knot
    key_ids = cal.key_ids(keys)
    z32 = torch.tensor(z, dtype=torch.float32)
    p32 = torch.sigmoid(z32).numpy()
    expected = [np.interp(v, xk[k].numpy(), yk[k].numpy()) for v, k in zip(p32, key_ids, strict=True)]
    np.testing.assert_allclose(cal.apply(z32, key_ids).numpy(), expected, atol=1e-5)


def test_fit_scoped_rejects_bad_parents() -> None:
    z, y = _logits(500, 1.0, 0.0, seed=8)
    with pytest.raises(ValueError, match="cycle"):
        fit_scoped(z, y, ["a"] * 500, {"a": "b", "b": "a"})
    with pytest.raises(ValueError, match="one tree"):
        fit_scoped(z, y, ["a"] * 250 + ["c"] * 250, {"a": "root1", "c": "root2"})
    with pytest.raises(ValueError, match="single class"):
        fit_scoped(z, np.zeros(500), ["a"] * 500, {"a": "global"})
