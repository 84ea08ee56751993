"""Post-hoc calibration: the module in forward, the `unictr calibrate` job, export parity, eval plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from tests.fixtures import small_config, train_small_run
from unictr.calibration.fit import fit_scoped
from unictr.calibration.job import calibrate_run, split_by_time
from unictr.checkpoint import MANIFEST, current_dir, load_model, sha256_file
from unictr.cli import app
from unictr.data.reader import load_split, load_surface_split
from unictr.export.artifact import load_export
from unictr.export.job import export_surface
from unictr.model import UnifiedCTR, probabilities
from unictr.modules.calibration import PosthocCalibration, apply_piecewise_linear_keyed
from unictr.train.evaluate import predict, predict_logits

VIEW_KEYS = [("feed", "a"), ("feed", "b"), ("search", "a")]
PARENTS = {("feed", "a"): ("feed",), ("feed", "b"): ("feed",), ("search", "a"): ("search",),
           ("feed",): (), ("search",): ()}


@pytest.fixture(scope="module")
def small_run(sim_config, tmp_path_factory):
    cfg = small_config(sim_config)
    data, run = train_small_run(cfg, tmp_path_factory.mktemp("calib"))
    return cfg, data, run


@pytest.fixture(scope="module")
def calibrated(small_run, tmp_path_factory) -> dict[str, Path]:
    """The small run calibrated per view type on its train split, with each method."""
    _, data, run = small_run
    root = tmp_path_factory.mktemp("calibrated")
    for method in ("platt", "isotonic"):
        calibrate_run(run, data, root / method, method, split="train", min_rows=5)
    return {method: root / method for method in ("platt", "isotonic")}


def _synthetic(n: int = 3000, tasks: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits, labels and view keys where each view key is miscalibrated by its own shift."""
    rng = np.random.default_rng(0)
    vk = rng.choice(len(VIEW_KEYS), size=n, p=[0.6, 0.3, 0.1])
    z = rng.normal(-1.5, 1.2, (n, tasks))
    shift = np.array([0.0, 0.8, -0.5])[vk][:, None]
    y = (rng.random((n, tasks)) < 1 / (1 + np.exp(-(0.7 * z + shift)))).astype(np.float64)
    return z, y, vk


def _fit_within_one_ulp(fit, logit: torch.Tensor, key: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The range of `fit` at logit's probability moved one float32 step either way. sigmoid's vectorised and
    scalar kernels can differ by that step (by where a value sits in its tensor), and an isotonic table fitted
    on near-tied scores can rise steeply over a step; Platt's map is smooth, so its range is its value."""
    if fit.method == "platt":
        value = fit.apply(logit, key).numpy()
        return value, value
    p = torch.sigmoid(logit)
    ends = [apply_piecewise_linear_keyed(torch.nextafter(p, torch.full_like(p, v)), key, fit.tensors["x_knots"],
                                         fit.tensors["y_knots"]) for v in (0.0, 1.0)]
    return torch.minimum(*ends).numpy(), torch.maximum(*ends).numpy()


def _view_fits(model: UnifiedCTR, logits: torch.Tensor, b, method: str, min_rows: int) -> list:
    """`fit_scoped` per task on a run's logits with the view type → surface → global chain, built by hand."""
    keys = [model.schema.view_keys[k] for k in b.view_key.tolist()]
    fits = []
    for t in range(len(model.schema.tasks)):
        rows = b.label_mask[:, t].numpy()
        on = {s for s, m in zip(model.schema.surfaces, model.schema.task_mask, strict=True) if m[t]}
        parents = {vk: (vk[0],) for vk in model.schema.view_keys if vk[0] in on} | {(s,): () for s in on}
        fits.append(fit_scoped(logits[rows, t].numpy(), b.labels[rows, t].numpy(),
                               [k for k, r in zip(keys, rows, strict=True) if r], parents, min_rows, method))
    return fits


# --- the module -----------------------------------------------------------------------------------------


def test_posthoc_none_is_identity_and_adds_no_tensors(sim_config) -> None:
    cfg = small_config(sim_config)
    assert cfg.model.calibration.posthoc == "none"
    assert not [k for k in UnifiedCTR(cfg).state_dict() if ".posthoc." in k]
    logits, vk = torch.randn(20, 3), torch.randint(0, 6, (20,))
    assert PosthocCalibration("none", 6, 3, 64)(logits, vk) is logits
    torch.testing.assert_close(PosthocCalibration("platt", 6, 3, 64)(logits, vk), logits)  # identity until fitted
    torch.testing.assert_close(PosthocCalibration("isotonic", 6, 3, 64)(logits, vk), logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="unknown post-hoc calibration method 'beta'"):
        PosthocCalibration("beta", 6, 3, 64)


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_forward_equals_calibration_fit(method: str) -> None:
    """The module's logit → logit map, through sigmoid, equals `ScopedCalibration.apply` per view key and task."""
    z, y, vk = _synthetic()
    fits = [fit_scoped(z[:, t], y[:, t], [VIEW_KEYS[k] for k in vk], PARENTS, min_rows=50, method=method)
            for t in range(z.shape[1])]
    width = max([2] + [f.tensors["x_knots"].shape[1] for f in fits if method == "isotonic"])
    module = PosthocCalibration(method, len(VIEW_KEYS), z.shape[1], width)
    for name, buf in module.named_buffers():
        for t, f in enumerate(fits):
            rows = f.tensors[name][f.key_ids(VIEW_KEYS)]
            pad = rows[:, -1:].expand(-1, width - rows.shape[1]) if rows.dim() == 2 else rows[:0]
            buf[:, t] = torch.cat([rows, pad], dim=-1)
    z32 = torch.tensor(z, dtype=torch.float32)
    got = torch.sigmoid(module(z32, torch.tensor(vk)))
    for t, f in enumerate(fits):
        expected = f.apply(z32[:, t], f.key_ids([VIEW_KEYS[k] for k in vk]))
        torch.testing.assert_close(got[:, t], expected, atol=2e-6, rtol=1e-5)
    raw = 1 / (1 + np.exp(-z))
    for k in range(len(VIEW_KEYS)):  # the per-view-key fits undo each key's shift: mean-calibrated per key
        on = vk == k
        assert abs(got[on].numpy().mean() / y[on].mean() - 1) < 0.03 < abs(raw[on].mean() / y[on].mean() - 1)


# --- the job --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_calibrate_round_trip(small_run, calibrated, method: str) -> None:
    """The calibrated run loads from disk and scores exactly the fit applied to the source run's logits."""
    cfg, data, run = small_run
    source, _ = load_model(run)
    model, manifest = load_model(calibrated[method])
    spec = model.cfg.model.calibration
    assert (spec.posthoc, spec.posthoc_scope) == (method, "view_type")
    if method == "isotonic":
        assert spec.posthoc_knots == model.calibration.posthoc.x_knots.shape[-1] >= 2
    assert manifest["calibration"]["method"] == method and manifest["parent"]["path"] == str(run.resolve())
    assert manifest["calibration_only"] is True
    assert {k for k in model.state_dict() if ".posthoc." in k} == {
        f"calibration.posthoc.{n}" for n in ({"a", "b"} if method == "platt" else {"x_knots", "y_knots"})}

    b = load_split(data / "train", model.schema, cfg.data)
    logits = predict_logits(source, b)
    got = predict(model, b)
    for t, f in enumerate(_view_fits(source, logits, b, method, min_rows=5)):
        rows = b.label_mask[:, t]
        keys = f.key_ids([model.schema.view_keys[k] for k in b.view_key[rows].tolist()])
        lo, hi = _fit_within_one_ulp(f, logits[rows, t], keys)
        out = got[rows.numpy(), t]
        outside = (out < lo - 2e-6) | (out > hi + 2e-6)
        assert not outside.any(), (out[outside], lo[outside], hi[outside])
    # the fit split's own rows come out mean-calibrated per view key (Platt and isotonic both preserve means)
    click = model.schema.tasks.index("click")
    for k in b.view_key.unique().tolist():
        on = (b.view_key == k).numpy()
        if b.labels[on, click].sum() > 0 and on.sum() >= 5:
            assert got[on, click].mean() == pytest.approx(b.labels[on, click].numpy().mean(), rel=1e-3)


def test_calibrate_leaves_source_and_refits_from_pre_posthoc_logits(small_run, calibrated, tmp_path) -> None:
    """The source run is untouched, and calibrating a calibrated run replaces its fit instead of stacking one."""
    _, data, run = small_run
    before = sha256_file(current_dir(run) / MANIFEST)
    calibrate_run(calibrated["platt"], data, tmp_path / "again", "platt", split="train", min_rows=5)
    assert sha256_file(current_dir(run) / MANIFEST) == before
    once, _ = load_model(calibrated["platt"])
    twice, _ = load_model(tmp_path / "again")
    for name in ("a", "b"):
        torch.testing.assert_close(getattr(twice.calibration.posthoc, name), getattr(once.calibration.posthoc, name))
    with pytest.raises(ValueError, match="is the source run"):
        calibrate_run(run, data, run, "platt")


def test_fallbacks_recorded_and_broadcast(small_run, tmp_path) -> None:
    """Keys below min_rows take their parent's fit and say so; surface and global fits fill their view keys."""
    _, data, run = small_run
    fitted = {}
    for scope in ("view_type", "surface", "global"):
        manifest = calibrate_run(run, data, tmp_path / scope, "platt", scope=scope, split="train", min_rows=40)
        fitted[scope] = (manifest["calibration"]["fit"], load_model(tmp_path / scope)[0].calibration.posthoc.a)
    fit, a = fitted["view_type"]
    click = fit["click"]
    assert click["*"] == {"rows": manifest["calibration"]["rows"], "fell_back": False, "used": "*"}
    small = [k for k, r in click.items() if r["rows"] < 40]
    assert small and all(click[k]["fell_back"] and click[k]["used"] != k for k in small)
    assert all(not r["fell_back"] for r in click.values() if r["rows"] >= 40)
    # save applies on home_feed and related only: no search keys in its report
    assert set(fit["save"]) == {"*", "home_feed", "related", "home_feed/grid", "home_feed/full", "related/grid",
                                "related/full"}
    assert list(fitted["global"][0]["click"]) == ["*"]
    assert set(fitted["surface"][0]["click"]) == {"*", "home_feed", "search", "related"}
    a_surface, a_global = fitted["surface"][1], fitted["global"][1]
    assert (a_global == a_global[:1]).all()
    views = load_model(run)[0].schema.view_keys
    for i, (s, v) in enumerate(views):
        assert torch.equal(a_surface[i], a_surface[views.index((s, "grid"))])  # one fit per surface
        used = click[f"{s}/{v}"]["used"]  # a fallen-back view key holds exactly its ancestor's fit
        if used != f"{s}/{v}":
            source = a_global if used == "*" else a_surface
            assert torch.equal(a[i, 0], source[i, 0]), (s, v, used)


@pytest.mark.parametrize(("method", "fmt"), [("isotonic", "onnx"), ("platt", "safetensors")])
def test_export_of_calibrated_run_keeps_parity(small_run, calibrated, tmp_path, method: str, fmt: str) -> None:
    cfg, data, run = small_run
    full, _ = load_model(calibrated[method])
    manifest = export_surface(calibrated[method], "related", tmp_path / "exp", fmt=fmt)
    model = load_export(tmp_path / "exp").model
    assert model.cfg.model.calibration.posthoc == method
    assert any(k.startswith("calibration.posthoc.") for k in manifest["calibration"]["tensors"])
    b = load_split(data / "eval", full.schema, cfg.data)
    expected = probabilities(full, b)[b.surface == full.schema.surfaces.index("related")]
    got = probabilities(model, load_surface_split(data / "eval", model.schema, cfg.data, "related"))
    assert got.shape == expected.shape and (got - expected).abs().max().item() <= 1e-5
    if fmt == "onnx":
        assert manifest["parity"]["onnx_max_abs_diff"] <= 1e-4


# --- CLI: calibrate, eval --plots, time slices ---------------------------------------------------------


def test_cli_calibrate_and_eval_plots(small_run, tmp_path) -> None:
    _, data, run = small_run
    result = CliRunner().invoke(app, ["calibrate", "--run", str(run), "--data", str(data), "--split", "train",
                                      "--method", "isotonic", "--min-rows", "30", "--out", str(tmp_path / "cal")])
    assert result.exit_code == 0, result.output
    assert "(fallback)" in result.output and "calibrated run" in result.output
    result = CliRunner().invoke(app, ["eval", "--run", str(tmp_path / "cal"), "--data", str(data), "--out",
                                      str(tmp_path / "m.json"), "--plots", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "reliability_home_feed.png", "reliability_related.png", "reliability_search.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in (tmp_path / "plots").iterdir())
    metrics = json.loads((tmp_path / "m.json").read_text())
    feed = metrics["surfaces"]["home_feed"]
    assert {"ece", "calibration_ratio"} <= set(feed["click"]) and {"ece", "calibration_ratio"} <= set(
        feed["view_types"]["grid"]["click"])
    bad = CliRunner().invoke(app, ["calibrate", "--run", str(run), "--data", str(data), "--method", "beta",
                                   "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "method must be one of ('platt', 'isotonic')" in bad.output
    assert not (tmp_path / "bad").exists()


def test_split_by_time_keeps_requests_whole(small_run, tmp_path) -> None:
    _, data, _ = small_run
    counts = split_by_time(data / "train", tmp_path / "early", tmp_path / "late", fraction=0.25)
    early, late = (pq.read_table(tmp_path / d) for d in ("early", "late"))
    total = pq.read_table(data / "train")
    assert counts == {"early": early.num_rows, "late": late.num_rows}
    assert early.num_rows + late.num_rows == total.num_rows
    assert not set(early["request_id"].to_pylist()) & set(late["request_id"].to_pylist())
    assert max(early["timestamp"].to_pylist()) <= min(late["timestamp"].to_pylist())
    assert len(set(early["request_id"].to_pylist())) == round(0.25 * len(set(total["request_id"].to_pylist())))
    again = split_by_time(data / "train", tmp_path / "e2", tmp_path / "l2", at_ms=min(late["timestamp"].to_pylist()))
    assert again == counts
    with pytest.raises(ValueError, match="exactly one of"):
        split_by_time(data / "train", tmp_path / "x", tmp_path / "y")
