"""`torchrun ... -m unictr train` on this machine: 2 gloo ranks train like one process, two single-process
agents (`--nnodes 2`, c10d rendezvous on 127.0.0.1) like `--nproc-per-node 2`, and `--max-restarts` brings a
job whose worker was killed back from its last checkpoint by itself. The commands are docs/distributed.md's.
"""

from __future__ import annotations

import os
import re
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
from tests.test_distributed import free_port
from unictr.checkpoint import MODEL_FILE, current_dir, read_manifest
from unictr.config import Config
from unictr.data.simulate import simulate
from unictr.train.loop import train

ROWS = 30_000  # simulated impressions: ~24k train rows in row groups of ROW_GROUP
ROW_GROUP = 2_048
EVERY = 25  # checkpoint interval of the elastic run (steps)
KILL_AT = 60  # rank 1 dies after this step (not a checkpoint step)
AUC_TOLERANCE = 0.002


def _config(sim_config: Config) -> Config:
    raw = small_config(sim_config).model_dump(mode="json")
    raw["train"].update(epochs=2, batch_size=512, lr=0.005, warmup_steps=10, checkpoint_every_steps=EVERY)
    return Config.model_validate(raw)


@pytest.fixture(scope="module")
def job(sim_config: Config, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Data (train split re-written in small row groups), the config, and the `--nproc-per-node 2` run."""
    root = tmp_path_factory.mktemp("torchrun")
    simulate(rows=ROWS, seed=0, out=root / "data")
    for part in (root / "data" / "train").glob("*.parquet"):
        pq.write_table(pq.read_table(part), part, row_group_size=ROW_GROUP)
    cfg = root / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(_config(sim_config).model_dump(mode="json")))
    paths = {"root": root, "data": root / "data", "cfg": cfg, "nproc2": root / "nproc2"}
    done = _torchrun(["--nproc-per-node", "2"], paths, paths["nproc2"])
    assert done.returncode == 0, done.stderr[-3000:]
    return paths


def _torchrun(args: list[str], paths: dict[str, Path], out: Path, env: dict[str, str] | None = None,
              wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", *args, "-m", "unictr", "train",
           "--config", str(paths["cfg"]), "--data", str(paths["data"]), "--out", str(out)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=900)


def _auc(run: Path) -> float:
    return read_manifest(current_dir(run))["metrics"]["overall"]["click"]["auc"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(current_dir(run) / MODEL_FILE))


def test_two_ranks_train_like_one_process(job: dict[str, Path], sim_config: Config) -> None:
    one = train(_config(sim_config), job["data"], job["root"] / "one", console=Console(quiet=True),
                show_progress=False)
    two = read_manifest(current_dir(job["nproc2"]))
    train_rows = pq.ParquetDataset(job["data"] / "train").read(columns=["request_id"]).num_rows
    for epoch in two["history"]:  # the ranks' shards cover the split exactly once per epoch
        assert epoch["rows"] == train_rows
    diff = abs(one["metrics"]["overall"]["click"]["auc"] - _auc(job["nproc2"]))
    assert diff <= AUC_TOLERANCE, f"2 ranks vs 1 process: click AUC differs by {diff:.4f}"


def test_two_agents_train_like_nproc_two(job: dict[str, Path]) -> None:
    port = free_port()
    out = job["root"] / "nnodes2"
    agents = [
        _torchrun(["--nnodes", "2", "--node-rank", str(r), "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                   "--rdzv-endpoint", f"127.0.0.1:{port}"], job, out, wait=False)
        for r in range(2)
    ]
    for agent in agents:
        _, err = agent.communicate(timeout=900)
        assert agent.returncode == 0, err[-3000:]
    expected, got = _weights(job["nproc2"]), _weights(out)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-5, msg=name)


def test_max_restarts_brings_a_killed_worker_back(job: dict[str, Path]) -> None:
    out = job["root"] / "elastic"
    done = _torchrun(["--nproc-per-node", "2", "--max-restarts", "2"], job, out,
                     env={"UNICTR_FAULT": f"rank1.step:{KILL_AT}"})
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = re.findall(r"resumed .* step (\d+)", done.stdout)
    assert resumed, done.stdout[-2000:]
    lost = KILL_AT - int(resumed[0])
    assert 0 < lost <= EVERY, f"resumed at step {resumed[0]} after the kill at {KILL_AT}: lost {lost} steps"
    diff = abs(_auc(out) - _auc(job["nproc2"]))
    assert diff <= AUC_TOLERANCE, f"restarted run's click AUC differs by {diff:.4f} from the uninterrupted one"
