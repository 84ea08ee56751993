"""`--set SECTION.KEY=VALUE` and `--threads N`: change a config from the command line, validated like the
YAML's own keys, without copying the file."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import ROOT, random_table
from tests.fixtures import small_config
from unictr.checkpoint import current_dir, read_manifest
from unictr.cli import app
from unictr.config import Config, ConfigError, load_config

SIM = ROOT / "configs" / "sim.yaml"


def test_overrides_set_nested_keys_of_any_yaml_type() -> None:
    cfg = load_config(SIM, ["train.epochs=1", "train.lr=0.01", "model.sequence.encoder=transformer",
                            "train.checkpoint_every_steps=null", "train.bf16=true"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.checkpoint_every_steps, cfg.train.bf16) == (1, 0.01, None, True)
    assert cfg.model.sequence.encoder == "transformer"  # the YAML says mean_pool
    assert cfg.model.sequence.layers == load_config(SIM).model.sequence.layers  # the rest of the section stays


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochz=1", r"train.epochz: Extra inputs are not permitted"),
        ("train.epochs=0", r"train.epochs: Input should be greater than or equal to 1 \(got 0\)"),
        ("train.epochs", r"--set 'train.epochs': expected SECTION.KEY=VALUE"),
        ("features.name=x", r"--set 'features.name=x': features is a list, not a section"),
        ("train.lr=[1", r"--set 'train.lr=\[1': the value is not valid YAML"),
    ],
)
def test_bad_overrides_are_refused_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(SIM, [override])


def test_train_takes_set_and_threads(sim_config: Config, tmp_path: Path) -> None:
    cfg_path = tmp_path / "small.yaml"
    cfg_path.write_text(yaml.safe_dump(small_config(sim_config).model_dump(mode="json")))
    (tmp_path / "data" / "train").mkdir(parents=True)
    pq.write_table(random_table(sim_config, 40, seed=0), tmp_path / "data" / "train" / "part-00000.parquet")
    args = ["train", "--config", str(cfg_path), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
            "--set", "train.max_steps=2", "--set", "train.threads=2", "--threads", "1"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    manifest = read_manifest(current_dir(tmp_path / "run"))
    assert manifest["train_state"]["step"] == 2
    assert manifest["config"]["train"]["threads"] == 1  # --threads wins over a --set of the same key
    refused = CliRunner().invoke(app, [*args[:5], "--out", str(tmp_path / "other"), "--set", "train.epochs=-1"])
    assert refused.exit_code == 2 and "train.epochs: Input should be greater than or equal to 1" in refused.output
