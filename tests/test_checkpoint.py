"""Checkpoints: round trip, checksum refusal, resume equals an uninterrupted run."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from tests.conftest import random_table
from unictr.checkpoint import CheckpointError, current_dir, load_model
from unictr.config import Config, with_changes
from unictr.data.batch import Schema
from unictr.data.reader import load_split
from unictr.train.evaluate import predict
from unictr.train.loop import train


def _small(cfg: Config, epochs: int, **train: object) -> Config:
    return with_changes(cfg, "train", epochs=epochs, batch_size=64, **train)


@pytest.fixture(scope="module")
def data_dir(sim_config, tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    for split, seed in (("train", 0), ("eval", 1)):
        (d / split).mkdir()
        pq.write_table(random_table(sim_config, 60, seed=seed), d / split / "part-00000.parquet")
    return d


def _quiet() -> Console:
    return Console(quiet=True)


def test_round_trip_same_scores(sim_config, data_dir, tmp_path) -> None:
    cfg = _small(sim_config, 1)
    manifest = train(cfg, data_dir, tmp_path / "run", console=_quiet(), show_progress=False)
    assert set(manifest["files"]) == {"model.safetensors", "optimizer.safetensors"}
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["metrics"]["overall"]["click"]["n"] > 0
    model, _ = load_model(tmp_path / "run")
    eval_b = load_split(data_dir / "eval", Schema.from_config(cfg), cfg.data)
    again, _ = load_model(tmp_path / "run")
    p1, p2 = predict(model, eval_b), predict(again, eval_b)
    assert (abs(p1 - p2)).max() == 0
    assert not list((tmp_path / "run").glob(".*tmp"))  # no temp files left behind


def test_checksum_mismatch_refused(sim_config, data_dir, tmp_path) -> None:
    train(_small(sim_config, 1), data_dir, tmp_path / "run", console=_quiet(), show_progress=False)
    current = current_dir(tmp_path / "run")
    weights = load_file(str(current / "model.safetensors"))
    weights["calibration.bias"] += 1.0
    from safetensors.torch import save_file

    save_file(weights, str(current / "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.safetensors: sha256 mismatch"):
        load_model(tmp_path / "run")


def test_missing_manifest(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no manifest; not a unictr run"):
        load_model(tmp_path)


@pytest.mark.parametrize("embedding_optimizer", ["adamw", "rowwise_adagrad"])
def test_resume_equals_uninterrupted(sim_config, data_dir, tmp_path, embedding_optimizer) -> None:
    """Resuming restores weights, the optimizer (the fused row-wise Adagrad state too) and the RNG exactly."""
    def cfg(epochs: int) -> Config:
        return _small(sim_config, epochs, embedding_optimizer=embedding_optimizer)

    straight = train(cfg(2), data_dir, tmp_path / "a", console=_quiet(), show_progress=False)
    train(cfg(1), data_dir, tmp_path / "b", console=_quiet(), show_progress=False)
    resumed = train(cfg(2), data_dir, tmp_path / "b", resume=True, console=_quiet(), show_progress=False)
    assert resumed["train_state"]["epoch"] == 2 and len(resumed["history"]) == 2
    a = load_file(str(current_dir(tmp_path / "a") / "model.safetensors"))
    b = load_file(str(current_dir(tmp_path / "b") / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert json.dumps(straight["metrics"], sort_keys=True) == json.dumps(resumed["metrics"], sort_keys=True)


def test_resume_with_other_config_refused(sim_config, data_dir, tmp_path) -> None:
    train(_small(sim_config, 1), data_dir, tmp_path / "run", console=_quiet(), show_progress=False)
    other = _small(sim_config, 2, lr=0.1)
    with pytest.raises(CheckpointError, match=r"only train.epochs, .* may change"):
        train(other, data_dir, tmp_path / "run", resume=True, console=_quiet(), show_progress=False)
