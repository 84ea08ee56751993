"""`unictr monitor`: per-key calibration numbers, the alarm threshold, the drifting simulator, and the
acceptance check: on a world where one surface's click rate drifts, the monitor flags that surface only,
and a refit on the previous day brings its z back within noise."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from tests.fixtures import small_config
from unictr.calibration.job import calibrate_run, split_by_time
from unictr.calibration.monitor import DEFAULT_Z, false_alarm_rate, key_stats, monitor_run, monitor_scored
from unictr.cli import app
from unictr.cli.monitor import EXIT_MISCALIBRATED
from unictr.data.batch import Schema
from unictr.data.simulate import simulate
from unictr.data.simulate.impressions import Drift, draw_world
from unictr.data.simulate.world import DAY_MS, EPOCH_MS
from unictr.train.evaluate import Scored
from unictr.train.loop import train

DRIFT = Drift("search", 0.07)  # click logit +0.07 a day: ~+0.7 between the middle of training and eval


def test_false_alarm_rate_of_the_default_threshold() -> None:
    # two-sided tail of N(0, 1) beyond 4 is 6.334e-5 per key
    assert false_alarm_rate(DEFAULT_Z, 1) == pytest.approx(6.334e-5, rel=1e-3)
    assert false_alarm_rate(DEFAULT_Z, 200) == pytest.approx(1 - (1 - 6.334e-5) ** 200, rel=1e-3)
    assert false_alarm_rate(DEFAULT_Z, 200) == pytest.approx(0.01259, abs=1e-4)
    assert false_alarm_rate(1.959964, 1) == pytest.approx(0.05, abs=1e-6)


def test_key_stats_hand_computed() -> None:
    y, p = np.array([1.0, 0, 0, 1]), np.array([0.5, 0.2, 0.1, 0.4])
    s = key_stats(y, p)
    assert (s["rows"], s["positives"]) == (4, 2)
    assert s["predicted"] == pytest.approx(1.2) and s["variance"] == pytest.approx(0.74)
    assert s["ratio"] == pytest.approx(0.6) and s["z"] == pytest.approx(-0.929981, abs=1e-6)
    assert (s["ratio_lo"], s["ratio_hi"]) == pytest.approx((0.325554, 3.821958), abs=1e-6)
    assert s["auc"] == pytest.approx(1.0)
    none = key_stats(np.zeros(100), np.full(100, 0.1))  # no positives: ratio undefined, unbounded above
    assert none["ratio"] is None and none["ratio_hi"] is None and none["ratio_lo"] == pytest.approx(1.700712, 1e-6)


def _schema() -> Schema:
    """A two-surface schema stand-in: what `monitor_scored` reads of one."""
    class S:
        surfaces = ("a", "b")
        tasks = ("click",)
        task_mask = ((True,), (True,))
        view_keys = (("a", "x"), ("a", "y"), ("b", "x"))
    return S()  # type: ignore[return-value]


def test_monitor_scored_flags_keys_beyond_noise_per_day_with_drift_against_reference() -> None:
    rng = np.random.default_rng(0)
    n = 40_000
    view_key = rng.integers(0, 3, n)
    surface = (view_key == 2).astype(np.int64)
    day = np.where(rng.random(n) < 0.5, "2024-01-01", "2024-01-02")
    p = rng.uniform(0.05, 0.3, n)
    true = np.where((view_key == 1) & (day == "2024-01-02"), p * 1.5, p)  # a/y under-predicted on day 2
    y = (rng.random(n) < true).astype(np.float64)
    scored = Scored(p[:, None], y[:, None], np.ones((n, 1), bool), surface, view_key)
    ref = {"surfaces": {"a": {"click": {"auc": 0.5, "calibration_ratio": 1.0}, "view_types": {}}}}
    report = monitor_scored(scored, _schema(), day, ref)
    assert report["flagged"] == ["a/*/click@2024-01-02", "a/y/click@2024-01-02"]
    assert report["keys_tested"] == 10  # (a, a/x, a/y, b, b/x) x 2 days
    flagged = next(k for k in report["keys"] if k["view_type"] == "y" and k["day"] == "2024-01-02")
    assert flagged["ratio"] == pytest.approx(1 / 1.5, abs=0.05) and flagged["z"] < -DEFAULT_Z
    assert flagged["ref_auc"] is None and flagged["delta_ratio"] is None  # the reference has no a/y block
    whole = report["keys"][0]
    assert (whole["surface"], whole["view_type"], whole["day"]) == ("a", None, "2024-01-01")
    assert whole["delta_ratio"] == pytest.approx(whole["ratio"] - 1.0)
    assert abs(whole["z"]) < DEFAULT_Z
    with pytest.raises(ValueError, match="z_threshold must be > 0"):
        monitor_scored(scored, _schema(), None, None, z_threshold=0)


def test_thin_keys_are_reported_but_never_flagged() -> None:
    y, p = np.ones(4), np.full(4, 0.01)  # z = (0.04 - 4) / 0.198 = -20, but sum p(1-p) = 0.04
    scored = Scored(p[:, None], y[:, None], np.ones((4, 1), bool), np.zeros(4, np.int64), np.zeros(4, np.int64))
    report = monitor_scored(scored, _schema(), None, None)
    assert report["keys"][0]["z"] < -19 and not report["keys"][0]["tested"] and report["flagged"] == []
    assert report["keys_tested"] == 0 and report["false_alarm_rate"] == 0.0


def test_drift_moves_only_the_surface_click_logit_by_day() -> None:
    base, drifted = draw_world(3000, 0), draw_world(3000, 0, DRIFT)
    req = base.requests
    owner = np.repeat(np.arange(len(req.user)), req.num_candidates)
    day = (req.timestamp[owner] - EPOCH_MS) // DAY_MS
    logit = lambda q: np.log(q / (1 - q))  # noqa: E731
    shift = logit(drifted.rows["p_true_click"]) - logit(base.rows["p_true_click"])
    np.testing.assert_allclose(shift, np.where(req.surface[owner] == 1, 0.07 * day, 0.0), atol=1e-9)
    assert day.max() == 13
    for col in ("p_true_save", "save", "ad_id", "position"):
        np.testing.assert_array_equal(base.rows[col], drifted.rows[col])
    np.testing.assert_allclose(drifted.rows["p_true_long_click"] / drifted.rows["p_true_click"],
                               base.rows["p_true_long_click"] / base.rows["p_true_click"], rtol=1e-9)
    with pytest.raises(ValueError, match="drift surface must be one of"):
        Drift("shop", 0.1)


@pytest.fixture(scope="module")
def drifting(sim_config, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(root, data, run): a tiny model trained on 40k simulated rows where search's click rate drifts."""
    cfg = small_config(sim_config)
    root = tmp_path_factory.mktemp("drift")
    meta = simulate(rows=40_000, seed=0, out=root / "data", config=cfg, drift=DRIFT)
    assert meta["drift"] == {"surface": "search", "click_logit_per_day": 0.07}
    train(cfg, root / "data", root / "run", console=Console(quiet=True), show_progress=False)
    return root, root / "data", root / "run"


def test_monitor_flags_the_drifting_surface_only(drifting, tmp_path) -> None:
    _, data, run = drifting
    result = CliRunner().invoke(app, ["monitor", "--run", str(run), "--data", str(data), "--by", "day",
                                      "--out", str(tmp_path / "rep")])
    assert result.exit_code == EXIT_MISCALIBRATED, result.output
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert (tmp_path / "rep" / "report.md").read_text().count("**FLAG**") == len(report["flagged"])
    assert (tmp_path / "rep" / "ratio.png").stat().st_size > 10_000
    assert report["flagged"] and {name.split("/")[0] for name in report["flagged"]} == {"search"}
    days = sorted({k["day"] for k in report["keys"]})
    assert len(days) == 3 and report["reference"] == "run manifest metrics"
    click = {(k["surface"], k["day"]): k for k in report["keys"] if k["view_type"] is None and k["task"] == "click"}
    last = click["search", days[-1]]
    assert last["flagged"] and last["z"] < -6 and last["ratio_hi"] < 0.75  # under-predicts: the rate rose
    # drift against the run's own eval (the same eval days here, so it had already seen the drift)
    assert last["delta_ratio"] == pytest.approx(last["ratio"] - last["ref_ratio"]) and last["ref_ratio"] < 0.8
    zs = [click["search", d]["z"] for d in days]
    assert zs[0] > zs[-1]  # getting worse day by day
    assert max(abs(k["z"]) for (s, _), k in click.items() if s != "search") < 3
    assert "search/*/click@" + days[-1] in result.output
    quiet = CliRunner().invoke(app, ["monitor", "--run", str(run), "--data", str(data), "--z-threshold", "50",
                                     "--out", str(tmp_path / "quiet")])
    assert quiet.exit_code == 0, quiet.output
    bad = CliRunner().invoke(app, ["monitor", "--run", str(run), "--data", str(data), "--by", "hour",
                                   "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--by must be one of" in bad.output


def test_refit_on_the_previous_day_brings_z_back_within_noise(drifting) -> None:
    root, data, run = drifting
    before = monitor_run(run, data, by="day")
    days = sorted({k["day"] for k in before["keys"]})
    last_ms = int(np.datetime64(days[-1], "ms").astype(np.int64))
    split_by_time(data / "eval", root / "earlier", root / "last_day", at_ms=last_ms)
    split_by_time(root / "earlier", root / "older", root / "prev_day", at_ms=last_ms - DAY_MS)
    calibrate_run(run, root / "prev_day", root / "refit", "platt", scope="surface", min_rows=100)
    after = monitor_run(root / "refit", root / "last_day")
    z_before = next(k["z"] for k in before["keys"] if k["surface"] == "search" and k["view_type"] is None
                    and k["task"] == "click" and k["day"] == days[-1])
    z_after = next(k["z"] for k in after["keys"] if k["surface"] == "search" and k["view_type"] is None
                   and k["task"] == "click")
    assert z_before < -6 and abs(z_after) < 3 and after["flagged"] == []
    assert after["reference"] is None  # a calibrated run records no evaluation metrics of its own
    assert math.isclose(sum(k["rows"] for k in after["keys"] if k["view_type"] is None and k["task"] == "click"),
                        sum(k["rows"] for k in before["keys"] if k["view_type"] is None and k["task"] == "click"
                            and k["day"] == days[-1]))


def test_simulate_cli_drift_options(tmp_path) -> None:
    out = tmp_path / "sim"
    ok = CliRunner().invoke(app, ["data", "simulate", "--rows", "2000", "--drift-surface", "related",
                                  "--drift-per-day", "-0.2", "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    assert json.loads((out / "meta.json").read_text())["drift"] == {"surface": "related", "click_logit_per_day": -0.2}
    bad = CliRunner().invoke(app, ["data", "simulate", "--rows", "2000", "--drift-surface", "shop",
                                   "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "drift surface must be one of" in bad.output
