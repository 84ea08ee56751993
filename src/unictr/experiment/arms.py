"""The neural arms: the unified model (or a variant of its config) and one model per surface."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console

from unictr.config import Config, with_changes
from unictr.data.batch import Batch, Schema
from unictr.data.reader import load_split, split_files
from unictr.export.prune import prune_config
from unictr.train.evaluate import predict


class ArmSkipped(RuntimeError):
    """An arm cannot run here (e.g. its optional package is missing); the message says why."""


@dataclass
class ArmRun:
    """One arm trained once: predictions on every eval row `[N, T]`, cost, and per-model details."""

    probs: np.ndarray
    train_seconds: float
    params: int
    models: dict[str, dict[str, Any]] = field(default_factory=dict)


def _train_and_predict(
    cfg: Config, data_dir: Path, run_dir: Path, eval_split: Path, console: Console, show_progress: bool,
    init_from: Path | None = None,
) -> tuple[np.ndarray, float, int, dict[str, Any]]:
    """Train one model (warm-started from `init_from` if given), reload its checkpoint, predict `eval_split`
    (in file row order)."""
    from unictr.checkpoint import load_model
    from unictr.train.loop import train

    manifest = train(cfg, data_dir, run_dir, console=console, show_progress=show_progress, overwrite=True,
                     init_from=init_from)
    model, _ = load_model(run_dir)
    b = load_split(eval_split, model.schema, cfg.data)
    probs = predict(model, b)
    seconds = float(sum(h["train_seconds"] for h in manifest["history"]))
    params = sum(p.numel() for p in model.parameters())
    return probs, seconds, params, {"history": manifest["history"]}


def train_unified(cfg: Config, data: Path, work: Path, eval_b: Batch, console: Console, show_progress: bool) -> ArmRun:
    """The config as given (unified, or shared when the config says so), one model on every row."""
    probs, secs, params, info = _train_and_predict(cfg, data, work, data / "eval", console, show_progress)
    return ArmRun(probs, secs, params, {"all": info | {"train_rows": split_rows(data / "train")}})


def train_separate(
    cfg: Config, data: Path, work: Path, eval_b: Batch, console: Console, show_progress: bool,
    surfaces: list[str] | None = None,
) -> ArmRun:
    """One model per surface (of `surfaces`, default all) on that surface's rows; predictions assembled into
    the full eval order (NaN on the rows of surfaces left out)."""
    schema = Schema.from_config(cfg)
    total = split_rows(data / "train")
    probs = np.full((eval_b.num_rows, len(schema.tasks)), np.nan, dtype=np.float32)
    eval_surface = eval_b.surface.numpy()
    seconds, params, models = 0.0, 0, {}
    for si, surface in enumerate(schema.surfaces):
        if surfaces is not None and surface not in surfaces:
            continue
        sub = work / "data" / surface
        rows = {
            split: write_surface_split(data / split, sub / split, cfg.data.surface, [surface])
            for split in ("train", "eval")
        }
        if rows["train"] == 0:
            raise ValueError(f"separate arm: surface {surface!r} has no rows in {data / 'train'}")
        batch = max(1, round(cfg.train.batch_size * rows["train"] / total))
        cfg_s = with_changes(prune_config(cfg, surface, keep_shapes=False), "train", batch_size=batch)
        console.print(f"separate: {surface} ({rows['train']:,} train rows, batch {batch})")
        p, secs, n_params, info = _train_and_predict(
            cfg_s, sub, work / "runs" / surface, sub / "eval", console, show_progress
        )
        on = np.flatnonzero(eval_surface == si)
        assert len(on) == rows["eval"], "surface subset and eval rows disagree"
        for ti, task in enumerate(cfg_s.task_names):
            probs[on, schema.tasks.index(task)] = p[:, ti]
        seconds += secs
        params += n_params
        models[surface] = info | {"train_rows": rows["train"], "batch_size": batch, "params": n_params}
    return ArmRun(probs, seconds, params, models)


def write_surface_split(src: Path, dst: Path, column: str, surfaces: list[str]) -> int:
    """Copy the rows of some surfaces of a split (row order kept); returns the row count."""
    table = pq.read_table(split_files(src))
    table = table.filter(pc.is_in(table[column], pa.array(surfaces)))
    dst.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, dst / "part-00000.parquet")
    return table.num_rows


def split_rows(split: Path) -> int:
    """Rows of a split directory, from the Parquet footers."""
    return sum(pq.ParquetFile(f).metadata.num_rows for f in split_files(split))
