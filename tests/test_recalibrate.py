"""`unictr experiment recalibrate`: train once, refit per day on earlier days only, compare the methods."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tests.fixtures import small_config
from unictr.calibration.job import split_by_time
from unictr.cli import app
from unictr.data.errors import DataError
from unictr.data.simulate import simulate
from unictr.experiment.recalibrate import Plan, method_weights, run_recalibration

DAY_MS = 86_400_000


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, list[str]]:
    """A small simulation cut at a day boundary: train/ = its first 8 days, eval/ = the rest (6 days)."""
    root = tmp_path_factory.mktemp("recal_exp")
    simulate(rows=24_000, seed=0, out=root / "sim")
    first = int(pq.read_table(root / "sim" / "train", columns=["timestamp"])["timestamp"].to_numpy().min()) // DAY_MS
    split_by_time(root / "sim" / "train", root / "data" / "train", root / "late", at_ms=(first + 8) * DAY_MS)
    (root / "data" / "eval").mkdir()
    for i, f in enumerate([*sorted((root / "late").iterdir()), *sorted((root / "sim" / "eval").iterdir())]):
        shutil.copy(f, root / "data" / "eval" / f"part-{i:05d}.parquet")
    return root / "data", [str(np.datetime64(first + d, "D")) for d in range(14)]


def test_method_weights_use_only_earlier_days() -> None:
    day = np.array([0, 1, 2, 3, 4])
    plan = Plan("x", ("y",), window_days=2, half_life_days=1.0)
    assert method_weights("none", plan, day, 3, 2) is None
    assert method_weights("once", plan, day, 4, 2).tolist() == [0, 0, 1, 0, 0]  # D1 only
    assert method_weights("once", plan, day, 2, 2).tolist() == [0, 1, 0, 0, 0]  # on D1: the day before
    assert method_weights("daily", plan, day, 4, 2).tolist() == [0, 0, 0, 1, 0]
    assert method_weights("windowed", plan, day, 4, 2).tolist() == [0, 0, 0.5, 1, 0]


def test_rolling_report(sim_config, data, tmp_path) -> None:
    cfg, (data, days) = small_config(sim_config), data
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["experiment", "recalibrate", "--config", "configs/sim.yaml", "--data", str(data),
                                      "--train-until", days[7], "--days", ",".join(days[9:12]), "--out", str(out),
                                      "--prior-strength", "20", "--set", "train.epochs=1",
                                      "--set", "train.batch_size=64", "--threads", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["methods"] == ["none", "once", "daily", "windowed"] and report["seeds"] == [0]
    assert set(report["table"]["windowed"]) == set(days[9:12])
    cell = report["table"]["none"][days[9]]["search"]["click"]
    assert {"n", "positives", "ratio", "ratio_lo", "ratio_hi", "z", "ece", "logloss"} <= set(cell)
    assert cell["ratio_lo"] <= cell["ratio"] <= cell["ratio_hi"]
    for m in report["methods"]:
        s = report["summary"][m]["click"]
        assert s["cells"] == 3 * len(cfg.surfaces) and s["mean_z2"] >= 0 and math.isfinite(s["mean_abs_log_ratio"])
    md = (out / "report.md").read_text()
    assert "| click | windowed |" in md and "experiment recalibrate" in md
    # The scored days must follow the training days, and train/ must end on --train-until.
    with pytest.raises(DataError, match="must be increasing and after"):
        run_recalibration(cfg, data, tmp_path / "bad", Plan(days[7], (days[7],)))
    with pytest.raises(DataError, match=f"train/ must hold only the days up to {days[6]}"):
        run_recalibration(cfg, data, tmp_path / "bad", Plan(days[6], (days[9],)))
