"""What a person reads: tables are never cut to "…" (a log file gets full-width rows), an epoch is one short
line, and every run keeps events.jsonl (loss, LR, rows/s every EVERY_STEPS steps; a line per epoch)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from typer.testing import CliRunner

from tests.conftest import random_table
from tests.fixtures import small_config
from unictr.cli import app
from unictr.config import Config
from unictr.train.events import EVENTS, EVERY_STEPS, EventLog


def test_a_run_keeps_its_events_and_prints_short_epoch_lines_and_whole_tables(sim_config: Config,
                                                                              tmp_path: Path) -> None:
    raw = small_config(sim_config).model_dump(mode="json")
    raw["train"].update(epochs=2, batch_size=16)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    for split, seed in (("train", 0), ("eval", 1)):
        (tmp_path / "data" / split).mkdir(parents=True)
        pq.write_table(random_table(sim_config, 240 if split == "train" else 60, seed=seed),
                       tmp_path / "data" / split / "part-00000.parquet")
    run = tmp_path / "run"
    done = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "cfg.yaml"), "--data",
                                    str(tmp_path / "data"), "--out", str(run)])
    assert done.exit_code == 0, done.output
    assert "epoch 2/2: loss " in done.output and "eval AUC click " in done.output
    events = [json.loads(line) for line in (run / EVENTS).read_text().splitlines()]
    steps = [e for e in events if e["event"] == "step"]
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2] and set(epochs[0]["eval_overall"]) == {"click", "save", "long_click"}
    assert steps and all(e["step"] % EVERY_STEPS == 0 and e["loss"] > 0 and e["lr"] > 0 for e in steps)
    assert epochs[-1]["step"] >= steps[-1]["step"]

    shown = CliRunner().invoke(app, ["eval", "--run", str(run), "--data", str(tmp_path / "data"), "--out",
                                     str(tmp_path / "m.json")], terminal_width=60)
    assert shown.exit_code == 0, shown.output
    assert "…" not in shown.output and "long_click" in shown.output and "calib ratio" in shown.output


def test_a_resumed_run_drops_the_events_after_its_checkpoint(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "run", enabled=True)  # a run directory that does not exist yet
    tmp_path = tmp_path / "run"
    for step in (100, 200, 300):
        log.write("step", step=step, loss=0.5)
    EventLog(tmp_path, enabled=True, resumed_step=200)
    assert [json.loads(x)["step"] for x in (tmp_path / EVENTS).read_text().splitlines()] == [100, 200]
    EventLog(tmp_path, enabled=True)  # started over: the old events go
    assert not (tmp_path / EVENTS).exists()
