"""Starting a run in its directory: refuse to train over a previous run by accident, resume one on request
(or by itself after torchrun's elastic restart), and restore a checkpoint into the model and optimizer."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from unictr.checkpoint import (
    CHECKPOINTS,
    MANIFEST,
    MODEL_FILE,
    CheckpointError,
    current_dir,
    load_tensors,
    read_manifest,
)
from unictr.config import Config
from unictr.model import UnifiedCTR
from unictr.train.checkpoints import CheckpointStore
from unictr.train.distributed import Dist
from unictr.train.events import EVENTS
from unictr.train.state import OPTIMIZER_FILE, Position, load_optimizer

RUN_ENTRIES = (CHECKPOINTS, MANIFEST, MODEL_FILE, OPTIMIZER_FILE, EVENTS)  # what --overwrite removes from a run
# options a resumed run may change: they do not change what a step computes
RESUMABLE_CHANGES = ("epochs", "threads", "checkpoint_every_steps", "keep_checkpoints", "max_steps")


def has_checkpoint(run_dir: Path, store: CheckpointStore) -> bool:
    """Whether `run_dir` holds a complete checkpoint (or a run written before step checkpoints)."""
    return store.latest() is not None or (run_dir / MANIFEST).is_file()


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, store: CheckpointStore, d: Dist) -> bool:
    """Check `run_dir` against `resume`/`overwrite`, clear what an interrupted write left; returns whether
    to resume. After an elastic restart (torchrun brought the job back), or on `resume` of a run killed
    before its first complete checkpoint, it resumes when there is a checkpoint and starts over when not."""
    if resume and overwrite:
        raise ValueError("--resume continues the run directory, --overwrite replaces it: pass one of them")
    if d.restart or (resume and (run_dir / CHECKPOINTS).is_dir()):
        resume = has_checkpoint(run_dir, store)  # killed before its first checkpoint: start from the beginning
    elif resume and not has_checkpoint(run_dir, store):
        raise CheckpointError(f"{run_dir}: nothing to resume (no complete checkpoint); train without --resume")
    elif not resume and run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise ValueError(f"{run_dir}: not empty (a previous run?); pass --resume to continue it or "
                             "--overwrite to replace it")
        if d.is_main:
            for name in RUN_ENTRIES:
                path = run_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    if d.is_main:
        store.clean()
    d.barrier()
    return resume


def _resumable(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config without the options a resumed run may change."""
    train = {k: v for k, v in cfg.get("train", {}).items() if k not in RESUMABLE_CHANGES}
    return {**cfg, "train": train}


def restore(
    cfg: Config, run_dir: Path, model: UnifiedCTR, opt: torch.optim.Optimizer, steps_per_epoch: int, d: Dist,
    device: torch.device,
) -> tuple[Position, list[dict[str, Any]], dict[str, Any] | None, Path]:
    """Load the run's current checkpoint into `model` and `opt` (and this rank's RNG state); returns its
    position, history, last metrics and directory."""
    where = current_dir(run_dir)
    manifest = read_manifest(where)
    if _resumable(manifest.get("config", {})) != _resumable(cfg.model_dump(mode="json")):
        changeable = ", ".join(f"train.{k}" for k in RESUMABLE_CHANGES)
        raise CheckpointError(f"{run_dir}: --resume needs the run's config (only {changeable} may change); "
                              "this one differs")
    model.load_state_dict(load_tensors(where, MODEL_FILE, manifest))
    pos = Position.from_manifest(manifest["train_state"], steps_per_epoch)
    if not d.is_main:  # the epoch's rows and loss so far are saved summed over ranks: rank 0 carries them
        pos.rows, pos.loss_sum = 0, 0.0
    if not load_optimizer(opt, model, load_tensors(where, OPTIMIZER_FILE, manifest), d.rank, device):
        torch.manual_seed(cfg.train.seed + 1_000_003 * d.rank + pos.step)  # a rank the checkpoint did not have
    return pos, manifest.get("history", []), manifest.get("metrics"), where
