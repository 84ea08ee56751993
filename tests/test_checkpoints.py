"""Step checkpoints: keep-K, the pointer, crashes at each write stage (real SIGKILLed processes), ENOSPC."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tests.fixtures import small_config
from unictr.checkpoint import (
    CHECKPOINTS,
    MANIFEST,
    MODEL_FILE,
    POINTER,
    CheckpointError,
    current_dir,
    fault_point,
    load_model,
    load_tensors,
    read_manifest,
    sha256_file,
    write_checkpoint,
)
from unictr.export.job import export_all_surfaces
from unictr.model import UnifiedCTR
from unictr.train.checkpoints import CheckpointStore

OPTIMIZER_FILE = "optimizer.safetensors"

# Saves step 1, step 2, then step 2 again (a resume re-saving the current step); tensors hold the save's number.
SAVER = """
import sys, torch
from unictr.config import load_config
from unictr.train.checkpoints import CheckpointStore
cfg, store = load_config(sys.argv[1]), CheckpointStore(sys.argv[2], keep=3)
for n, step in ((1, 1), (2, 2), (3, 2)):
    store.save(step, cfg, {"model.safetensors": {"w": torch.full((4096,), float(n))},
                           "optimizer.safetensors": {"m": torch.full((1024,), float(n))}}, {"n": n})
"""


def _tensors(n: float) -> dict[str, dict[str, torch.Tensor]]:
    return {MODEL_FILE: {"w": torch.full((4096,), n)}, OPTIMIZER_FILE: {"m": torch.full((1024,), n)}}


def _saved_number(path: Path) -> float:
    """The number a checkpoint was saved with, after verifying both tensor files against its manifest."""
    manifest = read_manifest(path)
    model, opt = load_tensors(path, MODEL_FILE, manifest), load_tensors(path, OPTIMIZER_FILE, manifest)
    assert float(model["w"][0]) == float(opt["m"][-1]) == manifest["n"]
    return manifest["n"]


def _temps(run: Path) -> list[str]:
    return [p.name for p in run.rglob("*") if ".tmp" in p.name]


@pytest.fixture(scope="module")
def cfg(sim_config):
    return small_config(sim_config)


def test_save_latest_and_keep_last_k(cfg, tmp_path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    assert store.latest() is None and store.clean() == []
    for step in (1, 2, 3, 10):
        saved = store.save(step, cfg, _tensors(float(step)), {"n": float(step)})
        assert saved == tmp_path / CHECKPOINTS / f"step-{step:09d}" == store.latest() == current_dir(tmp_path)
    assert sorted(p.name for p in (tmp_path / CHECKPOINTS).iterdir()) == [POINTER, "step-000000003", "step-000000010"]
    assert (tmp_path / CHECKPOINTS / POINTER).read_text() == "step-000000010\n"
    assert _saved_number(store.latest()) == 10.0 and _saved_number(tmp_path / CHECKPOINTS / "step-000000003") == 3.0
    assert _temps(tmp_path) == []


def test_resaving_the_current_step_replaces_it(cfg, tmp_path) -> None:
    store = CheckpointStore(tmp_path, keep=1)
    store.save(5, cfg, _tensors(1.0), {"n": 1.0})
    assert store.save(5, cfg, _tensors(2.0), {"n": 2.0}) == store.latest()
    assert _saved_number(store.latest()) == 2.0
    assert sorted(p.name for p in (tmp_path / CHECKPOINTS).iterdir()) == [POINTER, "step-000000005"]


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("mid_file:3", (1.0, "step-000000001")),  # step 2's model file half written
        ("after_tensors:2", (1.0, "step-000000001")),  # step 2's tensors written, no manifest
        ("before_pointer:2", (1.0, "step-000000001")),  # step-000000002 complete, never made current
        ("after_pointer:2", (2.0, "step-000000002")),  # step 2 current, nothing pruned yet
        ("before_pointer:3", (2.0, "step-000000002")),  # re-save of step 2: side copy complete, LATEST not moved
        ("before_pointer:4", (3.0, "step-000000002.new")),  # re-save: LATEST on the side copy, old one gone
    ],
)
def test_crash_leaves_a_complete_current_checkpoint(cfg, tmp_path, fault, expected) -> None:
    env = os.environ | {"PYTHONPATH": str(ROOT / "src"), "UNICTR_FAULT": fault, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", SAVER, str(ROOT / "configs" / "sim.yaml"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    store = CheckpointStore(tmp_path, keep=3)
    number, name = expected
    assert store.latest() == tmp_path / CHECKPOINTS / name and _saved_number(store.latest()) == number
    left = {p.name for p in (tmp_path / CHECKPOINTS).iterdir()}
    removed = store.clean()
    assert {p.name for p in removed} == left - {POINTER, "step-000000001", name}
    assert _temps(tmp_path) == [] and store.clean() == []
    assert _saved_number(store.latest()) == number
    store.save(2, cfg, _tensors(4.0), {"n": 4.0})  # training goes on
    assert _saved_number(store.latest()) == 4.0 and store.latest().name == "step-000000002"
    assert _temps(tmp_path) == []


def test_crash_before_the_first_pointer_leaves_no_checkpoint(cfg, tmp_path) -> None:
    """What a kill during the first save leaves (a temp dir, a step dir never made current) is cleaned."""
    root = tmp_path / CHECKPOINTS
    write_checkpoint(root / ".tmp-step-000000001-abcd", cfg, _tensors(1.0), {"n": 1.0})
    write_checkpoint(root / "step-000000001", cfg, _tensors(1.0), {"n": 1.0})
    (root / f".{POINTER}.x1y2.tmp").write_text("step-000000001")
    (root / "notes.txt").write_text("not a checkpoint: left alone")
    store = CheckpointStore(tmp_path, keep=2)
    assert store.latest() is None and current_dir(tmp_path) == tmp_path
    assert [p.name for p in store.clean()] == [f".{POINTER}.x1y2.tmp", ".tmp-step-000000001-abcd", "step-000000001"]
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]


def _half_then_enospc(path: Path, data: bytes) -> None:
    path.write_bytes(data[: len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


def _pointer_enospc(text: str, path: Path) -> None:
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


@pytest.mark.parametrize(
    ("target", "broken"),
    [
        ("unictr.checkpoint._write_in_halves", _half_then_enospc),  # a tensor file half written
        ("unictr.train.checkpoints.save_text", _pointer_enospc),  # the step dir in place, LATEST not writable
    ],
)
def test_no_space_left_keeps_the_previous_checkpoint(cfg, tmp_path, monkeypatch, target, broken) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    store.save(1, cfg, _tensors(1.0), {"n": 1.0})
    monkeypatch.setattr(target, broken)
    with pytest.raises(CheckpointError, match=(
        r"no space left on device while writing checkpoint step-000000002 \(\[Errno 28\] No space left on device: "
        r".*\); the previous checkpoint step-000000001 is intact"
    )):
        store.save(2, cfg, _tensors(2.0), {"n": 2.0})
    assert (tmp_path / CHECKPOINTS / POINTER).read_text() == "step-000000001\n"
    assert sorted(p.name for p in (tmp_path / CHECKPOINTS).iterdir()) == [POINTER, "step-000000001"]
    assert _saved_number(store.latest()) == 1.0 and _temps(tmp_path) == []


def test_other_errors_clean_up_and_propagate(cfg, tmp_path, monkeypatch) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    monkeypatch.setattr("unictr.checkpoint._write_in_halves", lambda path, data: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        store.save(1, cfg, _tensors(1.0), {"n": 1.0})
    assert store.latest() is None and list((tmp_path / CHECKPOINTS).iterdir()) == []


def test_current_dir_and_pointer_errors(cfg, tmp_path) -> None:
    assert current_dir(tmp_path) == tmp_path  # old layout, exports, calibrated runs
    root = tmp_path / CHECKPOINTS
    root.mkdir()
    (root / POINTER).write_text("step-000000009\n")
    with pytest.raises(CheckpointError, match=r"LATEST: names 'step-000000009', but .*step-000000009 is missing"):
        current_dir(tmp_path)
    with pytest.raises(CheckpointError, match="step-000000009 is missing"):
        load_model(tmp_path)
    (root / POINTER).write_text("../../elsewhere\n")
    with pytest.raises(CheckpointError, match=r"LATEST: names '../../elsewhere', not a checkpoint directory name"):
        CheckpointStore(tmp_path, keep=1).latest()
    with pytest.raises(CheckpointError, match="checkpoints to keep must be >= 1, got 0"):
        CheckpointStore(tmp_path, keep=0)


def test_fault_point_spec(monkeypatch) -> None:
    monkeypatch.setenv("UNICTR_FAULT", "mid_file:0")
    with pytest.raises(ValueError, match=r"UNICTR_FAULT='mid_file:0': expected STAGE or STAGE:N with N >= 1"):
        fault_point("mid_file")
    fault_point("after_tensors")  # another stage: nothing happens


def test_load_model_and_export_read_the_current_checkpoint(cfg, tmp_path) -> None:
    store = CheckpointStore(tmp_path / "run", keep=2)
    models = [UnifiedCTR(cfg) for _ in range(2)]
    for step, model in enumerate(models, start=1):
        store.save(step, cfg, {MODEL_FILE: model.state_dict()}, {"train_state": {"step": step}})
    loaded, manifest = load_model(tmp_path / "run")
    assert manifest["train_state"] == {"step": 2}
    for k, v in models[1].state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0, msg=k)
    exports = export_all_surfaces(tmp_path / "run", tmp_path / "exp")
    assert set(exports) == {s.name for s in cfg.surfaces}
    source = read_manifest(next(iter(exports.values())))["source_run"]
    assert source["manifest_sha256"] == sha256_file(store.latest() / MANIFEST)
    assert source["train_state"] == {"step": 2}
