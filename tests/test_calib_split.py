"""The calibration split: the simulator writes calib/ between train and eval, and `unictr calibrate` fits
there by default, refusing the eval split unless told."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tests.fixtures import small_config, train_small_run
from unictr.calibration.job import CalibrationError, calibrate_run
from unictr.cli import app
from unictr.data.simulate import simulate


@pytest.fixture(scope="module")
def small_run(sim_config, tmp_path_factory):
    return train_small_run(small_config(sim_config), tmp_path_factory.mktemp("calib_split"))


def test_simulate_writes_calib_between_train_and_eval(tmp_path: Path) -> None:
    meta = simulate(rows=3000, seed=0, out=tmp_path / "sim", calib_fraction=0.25)
    tables = {s: pq.read_table(tmp_path / "sim" / s, columns=["request_id", "timestamp"]) for s in
              ("train", "calib", "eval")}
    requests = {s: set(t["request_id"].to_pylist()) for s, t in tables.items()}
    assert not requests["train"] & requests["calib"] and not requests["calib"] & requests["eval"]
    total = sum(len(r) for r in requests.values())
    assert meta["calib_fraction"] == 0.25 and meta["splits"]["calib"]["requests"] == len(requests["calib"])
    assert len(requests["calib"]) == pytest.approx(0.25 * total, abs=1)
    assert len(requests["eval"]) == pytest.approx(0.2 * total, abs=1)
    assert sum(meta["splits"][s]["rows"] for s in tables) == 3000
    ts = {s: t["timestamp"].to_numpy() for s, t in tables.items()}
    assert ts["train"].max() <= ts["calib"].min() and ts["calib"].max() <= ts["eval"].min()
    # Without the option the layout is unchanged: no calib/, the same train/eval cut.
    plain = simulate(rows=3000, seed=0, out=tmp_path / "plain")
    assert set(plain["splits"]) == {"train", "eval"} and not (tmp_path / "plain" / "calib").exists()
    assert plain["splits"]["eval"]["rows"] == meta["splits"]["eval"]["rows"]
    with pytest.raises(ValueError, match="calib_fraction must be in"):
        simulate(rows=3000, seed=0, out=tmp_path / "bad", calib_fraction=0.8)


def test_calibrate_defaults_to_the_calib_split(small_run, tmp_path: Path) -> None:
    data, run = small_run
    with pytest.raises(CalibrationError, match=r"no calib/ split .*--calib-fraction.*--calib-from.*split_by_time"):
        calibrate_run(run, data, tmp_path / "none", "platt")
    shutil.copytree(data / "eval", data / "calib")
    try:
        manifest = calibrate_run(run, data, tmp_path / "cal", "platt", min_rows=5)
    finally:
        shutil.rmtree(data / "calib")
    assert manifest["calibration"]["data"] == str((data / "calib").resolve())


def test_calibrate_refuses_the_eval_split(small_run, tmp_path: Path) -> None:
    data, run = small_run
    with pytest.raises(CalibrationError, match="refusing to fit calibration on the eval split.*--allow-eval-split"):
        calibrate_run(run, data, tmp_path / "x", "platt", split="eval")
    assert not (tmp_path / "x").exists()
    args = ["calibrate", "--run", str(run), "--data", str(data), "--method", "platt", "--min-rows", "5"]
    refused = CliRunner().invoke(app, [*args, "--split", "eval", "--out", str(tmp_path / "y")])
    assert refused.exit_code == 2 and "refusing to fit calibration on the eval split" in refused.output
    missing = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "z")])
    assert missing.exit_code == 2 and "--calib-fraction" in missing.output
    allowed = CliRunner().invoke(app, [*args, "--split", "eval", "--allow-eval-split", "--out", str(tmp_path / "ok")])
    assert allowed.exit_code == 0, allowed.output
