"""Crash-safe training: a run killed (SIGKILL) mid-epoch or at any stage of a checkpoint write resumes from
its last complete checkpoint and ends with the weights of an uninterrupted run, bit for bit; a full disk
keeps the previous checkpoint; a run directory is never trained over by accident."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from rich.console import Console
from safetensors.torch import load_file

from tests.fixtures import small_config
from unictr.checkpoint import MODEL_FILE, CheckpointError, current_dir, load_model
from unictr.config import Config
from unictr.data.simulate import simulate
from unictr.train.loop import train

EVERY = 20  # checkpoint interval (steps) of the runs here; an epoch is ~70 steps


def _config(sim_config: Config, **train_opts: object) -> Config:
    raw = small_config(sim_config).model_dump(mode="json")
    raw["train"].update(epochs=2, checkpoint_every_steps=EVERY, keep_checkpoints=2, **train_opts)
    return Config.model_validate(raw)


@pytest.fixture(scope="module")
def setup(sim_config: Config, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data dir, config YAML, run dir of the uninterrupted run)."""
    root = tmp_path_factory.mktemp("resume")
    simulate(rows=6_000, seed=0, out=root / "data")
    cfg_path = root / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(sim_config).model_dump(mode="json")))
    assert _train(cfg_path, root / "data", root / "straight").returncode == 0
    return root / "data", cfg_path, root / "straight"


def _train(cfg: Path, data: Path, out: Path, *flags: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("UNICTR_FAULT", None)
    if fault:
        env["UNICTR_FAULT"] = fault
    cmd = [sys.executable, "-m", "unictr", "train", "--config", str(cfg), "--data", str(data), "--out", str(out)]
    return subprocess.run([*cmd, *flags], env=env, capture_output=True, text=True, timeout=600)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(current_dir(run) / MODEL_FILE))


# mid_file counts files (a checkpoint writes two): :3 is the second checkpoint's first; :1 dies in the first
@pytest.mark.parametrize("fault", ["mid_file:1", "mid_file:3", "after_tensors:2", "before_pointer:2", "rank0.step:30"])
def test_killed_run_resumes_to_the_same_weights(setup: tuple[Path, Path, Path], tmp_path: Path, fault: str) -> None:
    data, cfg, straight = setup
    run = tmp_path / "run"
    killed = _train(cfg, data, run, fault=fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = _train(cfg, data, run, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert ("resumed" in resumed.stdout) == (fault != "mid_file:1"), resumed.stdout[-2000:]
    expected, got = _weights(straight), _weights(run)
    for name in expected:
        assert torch.equal(expected[name], got[name]), f"{fault}: {name} differs from the uninterrupted run"
    leftovers = [p for p in run.rglob("*") if p.name.startswith(".") or "tmp" in p.name]
    assert not leftovers, f"{fault}: temp files left behind: {leftovers}"


def test_full_disk_keeps_the_previous_checkpoint(
    setup: tuple[Path, Path, Path], sim_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import unictr.checkpoint as checkpoint

    data, _, _ = setup
    real, writes = checkpoint._write_in_halves, []

    def fill_up(path: Path, data: bytes) -> None:
        writes.append(path)
        if len(writes) > 2:  # the second checkpoint's first file (a checkpoint writes two)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(checkpoint, "_write_in_halves", fill_up)
    with pytest.raises(CheckpointError, match="no space left on device"):
        train(_config(sim_config), data, tmp_path / "run", console=Console(quiet=True), show_progress=False)
    monkeypatch.setattr(checkpoint, "_write_in_halves", real)
    model, manifest = load_model(tmp_path / "run")  # verified against its manifest
    assert manifest["train_state"]["step"] == EVERY
    assert not [p for p in (tmp_path / "run").rglob("*") if "tmp" in p.name]


def test_non_empty_run_dir_needs_resume_or_overwrite(setup: tuple[Path, Path, Path], sim_config: Config,
                                                     tmp_path: Path) -> None:
    data, _, _ = setup
    cfg = _config(sim_config, max_steps=3)
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    quiet = {"console": Console(quiet=True), "show_progress": False}
    with pytest.raises(ValueError, match="not empty .*pass --resume to continue it or --overwrite to replace it"):
        train(cfg, data, run, **quiet)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(cfg, data, run, resume=True, **quiet)
    first = train(cfg, data, run, overwrite=True, **quiet)
    assert first["train_state"]["step"] == 3 and (run / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="pass one of them"):
        train(cfg, data, run, resume=True, overwrite=True, **quiet)


def test_split_with_fewer_row_groups_than_ranks_is_refused(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from unictr.config import TrainSpec
    from unictr.data.stream import split_units
    from unictr.train.input import stream_count

    data, _, _ = setup
    one = tmp_path / "one"
    one.mkdir()
    pq.write_table(pq.read_table(data / "train"), one / "part-00000.parquet", row_group_size=10**7)
    with pytest.raises(ValueError, match="2 ranks need at least 2 training streams, and there are 1 .*1 row group"):
        stream_count(TrainSpec(), split_units(one), 2)
