"""Recalibration from recent labelled traffic: windowed, recency-weighted, hierarchically shrunk Platt fits,
written as a calibration-only version of the run that round-trips through export, registry and server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.conftest import random_table
from tests.fixtures import SURFACE, same_time_table, small_config, table_to_request, train_small_run
from unictr.calibration.fit import fit_platt, fit_scoped
from unictr.calibration.job import DAY_MS, Window, calibrate_run
from unictr.checkpoint import MODEL_FILE, current_dir, load_model
from unictr.cli import app
from unictr.config import ServeSpec
from unictr.export.artifact import read_export_manifest
from unictr.export.job import export_surface
from unictr.serving.app import create_app
from unictr.serving.registry import Registry
from unictr.serving.scorer import Scorer

DAY0 = 19_700 * DAY_MS  # 2023-12-09T00:00Z


def _on_day(table: pa.Table, day: int, first_request: int) -> pa.Table:
    """`table` moved to day DAY0 + `day` (times and sequence times shifted alike), request ids from `first_request`."""
    delta = DAY0 + day * DAY_MS + 3_600_000 - pc.min(table["timestamp"]).as_py()
    seq = table["seq_ts"].combine_chunks()
    shifted = pa.ListArray.from_arrays(seq.offsets, pc.add(seq.flatten(), delta))
    for name, col in (("timestamp", pc.add(table["timestamp"], delta)), ("seq_ts", shifted),
                      ("request_id", pc.add(table["request_id"], first_request))):
        table = table.set_column(table.schema.get_field_index(name), name, col)
    return table


@pytest.fixture(scope="module")
def days(sim_config, tmp_path_factory) -> dict:
    """A tiny run, a calib split of three days (one file per day) and the same last two days alone."""
    cfg = small_config(sim_config)
    root = tmp_path_factory.mktemp("recal")
    data, run = train_small_run(cfg, root)
    tables = [_on_day(random_table(cfg, 150, seed=10 + d), d, 1000 * (d + 1)) for d in range(3)]
    for name, chosen in (("three", tables), ("last_two", tables[1:])):
        (root / name / "calib").mkdir(parents=True)
        for d, t in enumerate(chosen):
            pq.write_table(t, root / name / "calib" / f"part-{d:05d}.parquet")
    return {"cfg": cfg, "root": root, "data": data, "run": run}


def _posthoc(run: Path) -> dict:
    return {k: v for k, v in load_file(str(current_dir(run) / MODEL_FILE)).items() if "posthoc" in k}


def test_window_with_equal_weights_equals_the_fit_on_the_concatenated_days(days) -> None:
    root, run = days["root"], days["run"]
    windowed = calibrate_run(run, root / "three", root / "w2", "platt", min_rows=20, window=Window(days=2))
    calibrate_run(run, root / "last_two", root / "plain", "platt", min_rows=20)
    got, want = _posthoc(root / "w2"), _posthoc(root / "plain")
    assert got.keys() == want.keys() == {"calibration.posthoc.a", "calibration.posthoc.b"}
    for k in got:
        assert np.allclose(got[k].numpy(), want[k].numpy(), atol=1e-6), k
    per_day = windowed["calibration"]["window"]["per_day"]
    assert [(d["weight"], d["rows"] > 0) for d in per_day.values()] == [(0.0, True), (1.0, True), (1.0, True)]
    assert list(per_day) == ["2023-12-09", "2023-12-10", "2023-12-11"]
    # A half-life weighs the older day down: the fit moves away from the equal-weight one.
    calibrate_run(run, root / "three", root / "hl", "platt", min_rows=20, window=Window(days=3, half_life_days=0.5))
    assert not np.allclose(_posthoc(root / "hl")["calibration.posthoc.b"].numpy(),
                           _posthoc(root / "plain")["calibration.posthoc.b"].numpy(), atol=1e-3)


def test_recency_weights() -> None:
    day = np.array([5, 5, 4, 3, 1])
    assert Window(days=3, half_life_days=1.0).weights(day).tolist() == [1.0, 1.0, 0.5, 0.25, 0.0]
    assert Window(half_life_days=2.0).weights(day).tolist() == [1.0, 1.0, 0.5**0.5, 0.5, 0.25]
    assert Window(utc_offset_hours=8).day_of(np.array([DAY0 - 8 * 3_600_000 - 1, DAY0 - 8 * 3_600_000])).tolist() \
        == [19_699, 19_700]


def _draw(rng: np.random.Generator, n: int, b: float) -> tuple[np.ndarray, np.ndarray]:
    z = rng.normal(-2.0, 1.2, n)
    return z, (rng.random(n) < 1.0 / (1.0 + np.exp(-(z + b)))).astype(np.float64)


def test_shrinkage_pulls_a_small_key_to_its_parent_and_leaves_a_large_one() -> None:
    rng = np.random.default_rng(0)
    (zb, yb), (zs, ys) = _draw(rng, 40_000, 0.3), _draw(rng, 300, -0.8)  # 8,307 and 24 positives
    z, y = np.r_[zb, zs], np.r_[yb, ys]
    keys = [("s", "big")] * zb.size + [("s", "small")] * zs.size
    parents = {("s", "big"): ("s",), ("s", "small"): ("s",), ("s",): ()}

    def fits(strength: float) -> dict:
        cal = fit_scoped(z, y, keys, parents, min_rows=50, prior_strength=strength)
        return {k: (float(cal.tensors["a"][i]), float(cal.tensors["b"][i])) for k, i in cal.index.items()}

    raw, shrunk, strong = fits(0.0), fits(30.0), fits(3000.0)
    parent = raw[("s",)]
    assert parent == pytest.approx((1.0028, 0.3012), abs=1e-3) and shrunk[("s",)] == parent
    assert raw[("s", "small")] == pytest.approx((1.0367, -0.9971), abs=1e-3)  # its own 24 positives
    assert shrunk[("s", "small")] == pytest.approx((0.9116, -0.4213), abs=1e-3)  # about halfway to the parent
    assert strong[("s", "small")] == pytest.approx(parent, abs=0.05)  # a strong prior: the parent's fit
    # 8,307 positives: almost unchanged (the small key moved by 0.58 and 1.3 in b)
    assert shrunk[("s", "big")] == pytest.approx(raw[("s", "big")], abs=1e-3)
    assert strong[("s", "big")] == pytest.approx(raw[("s", "big")], abs=5e-3)
    # A single-class key is fitted too when shrinking: the prior keeps it finite and near its parent.
    one_class = fit_scoped(z, np.r_[yb, np.zeros_like(ys)], keys, parents, min_rows=50, prior_strength=30.0)
    assert not one_class.fallbacks[("s", "small")]["fell_back"]
    assert -3.0 < float(one_class.tensors["b"][one_class.index[("s", "small")]]) < parent[1]
    with pytest.raises(ValueError, match="prior_strength must be >= 0 and is for method 'platt' only"):
        fit_scoped(z, y, keys, parents, method="isotonic", prior_strength=1.0)


def test_platt_with_no_prior_is_unchanged_and_weights_count_like_copies() -> None:
    z, y = _draw(np.random.default_rng(1), 2000, 0.5)
    w = np.random.default_rng(2).integers(1, 4, z.size)
    assert fit_platt(z, y, w) == pytest.approx(fit_platt(np.repeat(z, w), np.repeat(y, w)), abs=1e-6)


def test_calibration_only_run_round_trips(days, tmp_path: Path) -> None:
    cfg, root, run = days["cfg"], days["root"], days["run"]
    new = tmp_path / "recal"
    manifest = calibrate_run(run, root / "three", new, "platt", min_rows=20,
                             window=Window(days=3, half_life_days=1.0), prior_strength=20.0)
    assert manifest["calibration_only"] is True and manifest["parent"]["path"] == str(run.resolve())
    before, after = (load_file(str(current_dir(r) / MODEL_FILE)) for r in (run, new))
    assert set(after) - set(before) == {"calibration.posthoc.a", "calibration.posthoc.b"}
    for name, tensor in before.items():  # every tensor of the parent, bit for bit
        assert after[name].dtype == tensor.dtype and after[name].equal(tensor), name
    a, b = (after[f"calibration.posthoc.{n}"] for n in ("a", "b"))
    assert not (a.equal(a.new_ones(a.shape)) and b.equal(b.new_zeros(b.shape)))  # a real map was fitted
    old_cfg, new_cfg = (load_model(r)[0].cfg.model_dump() for r in (run, new))
    assert (old_cfg["model"]["calibration"]["posthoc"], new_cfg["model"]["calibration"]["posthoc"]) == ("none", "platt")
    old_cfg["model"]["calibration"], new_cfg["model"]["calibration"] = {}, {}
    assert old_cfg == new_cfg  # nothing but the post-hoc fields changed

    exports = {name: tmp_path / f"export-{name}" for name in ("parent", "recal")}
    export_surface(run, SURFACE, exports["parent"])
    exported = export_surface(new, SURFACE, exports["recal"])
    assert exported["calibration_only"] is True and exported["parent"] == manifest["parent"]
    assert read_export_manifest(exports["parent"])["calibration_only"] is False
    registry = Registry(tmp_path / "registry")
    assert [registry.publish(SURFACE, exports[n]) for n in ("parent", "recal")] == ["v0001", "v0002"]
    listed = {r["version"]: r for r in registry.listing()}
    assert listed["v0002"]["calibration_only"] and listed["v0002"]["parent_version"] == "v0001"
    assert "calibration_only" not in listed["v0001"]
    shown = CliRunner().invoke(app, ["registry", "list", "--registry", str(registry.root)], env={"COLUMNS": "300"})
    assert shown.exit_code == 0 and "calibration-only of v0001" in shown.output, shown.output

    table, now = same_time_table(cfg, 30, seed=5)
    request = table_to_request(table, cfg, SURFACE, now)
    registry.promote(SURFACE, "v0002", force=True)
    with TestClient(create_app(registry.root, ServeSpec(threads=None, poll_seconds=0.05))) as client:
        response = client.post(f"/v1/surfaces/{SURFACE}/score", json=request)
    assert response.status_code == 200 and response.json()["model_version"] == "v0002", response.text
    body = response.json()
    served = np.array([[row[t] for t in body["tasks"]] for row in body["predictions"]])
    assert np.allclose(served, Scorer.load(exports["recal"]).score(request).probabilities, atol=1e-6)
    assert not np.allclose(served, Scorer.load(exports["parent"]).score(request).probabilities, atol=1e-4)


def test_a_decreasing_fit_keeps_its_ancestors_slope_and_its_own_mean() -> None:
    rng = np.random.default_rng(3)
    (zb, yb), (zs, _) = _draw(rng, 5000, 0.0), _draw(rng, 400, 0.0)
    ys = (rng.random(zs.size) < 1.0 / (1.0 + np.exp(zs + 1.0))).astype(np.float64)  # anti-correlated labels
    keys = [("s", "big")] * zb.size + [("s", "bad")] * zs.size
    parents = {("s", "big"): ("s",), ("s", "bad"): ("s",), ("s",): ()}
    cal = fit_scoped(np.r_[zb, zs], np.r_[yb, ys], keys, parents, min_rows=50)
    a, b = (cal.tensors[n].numpy().astype(np.float64) for n in ("a", "b"))
    bad, parent = cal.index[("s", "bad")], cal.index[("s",)]
    assert fit_platt(zs, ys)[0] < 0 and a[bad] == pytest.approx(a[parent], rel=1e-5) and a[bad] > 0
    mean = (1.0 / (1.0 + np.exp(-(a[bad] * zs + b[bad])))).mean()
    assert mean == pytest.approx(ys.mean(), rel=1e-4)
