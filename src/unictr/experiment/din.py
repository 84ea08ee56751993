"""The `din` arm: a faithful single-task DIN per task (`modules/din.py`), trained as FuxiCTR's `BaseModel.fit`
trains it (Adam, LR 1e-3, batches of 1,024 rows, gradient norm clipped at 10, validation AUC after every
epoch, LR ×0.1 on a plateau, early stop after 2 epochs without improvement, the best epoch's weights
restored).

The validation set is carved from the training window: the rows of the train split's last calendar day
(UTC, by `data.timestamp`) validate, the earlier days train. When the train split spans a single day (the
simulator may), the newest 10% of requests by time validate instead. A request's rows stay together (it
belongs to the day of its first row). The arm's `models["validation"]` says which rule applied.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from rich.console import Console

from unictr.config import Config
from unictr.data.batch import Batch, Schema
from unictr.data.reader import load_split, split_files
from unictr.experiment.arms import ArmRun
from unictr.metrics import auc, json_float
from unictr.modules.din import DIN
from unictr.threads import resolve_threads

DAY_MS = 86_400_000


@dataclass(frozen=True)
class DINSettings:
    """FuxiCTR's DIN and `BaseModel` defaults (embedding 16 and DNN 256-128 as the issue fixes them)."""

    embedding_dim: int = 16
    dnn_units: tuple[int, ...] = (256, 128)
    attention_units: tuple[int, ...] = (64,)
    batch_size: int = 1024
    lr: float = 1e-3
    max_gradient_norm: float = 10.0
    max_epochs: int = 10
    patience: int = 2
    lr_factor: float = 0.1
    min_lr: float = 1e-6
    min_delta: float = 1e-6
    val_fraction: float = 0.1  # the newest requests that validate when the train split spans one day
    predict_rows: int = 4096


@dataclass
class FitResult:
    """What early stopping kept: the best epoch (1-based), every epoch's validation AUC, training seconds."""

    best_epoch: int
    val_aucs: list[float] = field(default_factory=list)
    train_seconds: float = 0.0


def fit(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    run_epoch: Callable[[], None],
    validate: Callable[[], float],
    s: DINSettings,
) -> FitResult:
    """FuxiCTR's `fit` with `checkpoint_and_earlystop`: after each epoch, an AUC below the best + `min_delta`
    counts a plateau (LR × `lr_factor`, floored at `min_lr`), `patience` of them in a row stop; otherwise
    the weights are kept as the best. At the end the best weights are loaded back. An undefined AUC
    (nan, one class) counts as an improvement, as it does there."""
    result, best, best_state, stalled = FitResult(best_epoch=0), -math.inf, None, 0
    for epoch in range(1, s.max_epochs + 1):
        t0 = time.perf_counter()
        run_epoch()
        result.train_seconds += time.perf_counter() - t0
        value = validate()
        result.val_aucs.append(value)
        if value < best + s.min_delta:
            stalled += 1
            for group in optimizer.param_groups:
                group["lr"] = max(group["lr"] * s.lr_factor, s.min_lr)
        else:
            stalled, best, result.best_epoch = 0, value, epoch
            best_state = copy.deepcopy(model.state_dict())
        if stalled >= s.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return result


def carve_validation(cfg: Config, train: Path, dst: Path, s: DINSettings) -> dict[str, Any]:
    """Write `train`'s rows as `dst/train` (earlier) and `dst/eval` (the validation rows; module docstring),
    row order kept; returns the rule applied and the row counts."""
    table = pq.read_table(split_files(train))
    ts = table[cfg.data.timestamp].to_numpy()
    _, req = np.unique(table[cfg.data.request_id].to_numpy(), return_inverse=True)
    start = np.full(req.max() + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(start, req, ts)  # each request's first time
    day = start // DAY_MS
    if day.min() < day.max():
        val_req = day == day.max()
        when = datetime.fromtimestamp(int(day.max()) * DAY_MS / 1000, UTC).date().isoformat()
        rule = f"last UTC day of the train split ({when})"
    else:
        n_val = max(1, round(len(start) * s.val_fraction))
        rank = np.argsort(np.argsort(start, kind="stable"), kind="stable")
        val_req = rank >= len(start) - n_val
        rule = f"the train split spans one UTC day: its newest {s.val_fraction:.0%} of requests by time"
    val_rows = val_req[req]
    if val_rows.all():
        raise ValueError(f"din arm: {train} leaves no rows to train on after carving the validation set ({rule})")
    for name, keep in (("train", ~val_rows), ("eval", val_rows)):
        (dst / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(table.filter(keep), dst / name / "part-00000.parquet")
    return {"rule": rule, "train_rows": int((~val_rows).sum()), "val_rows": int(val_rows.sum())}


@torch.no_grad()
def predict_logits(model: DIN, b: Batch, rows: int) -> torch.Tensor:
    """Logits `[N]` for every row of `b` (in order), in eval mode, `rows` rows at a time."""
    model.eval()
    n = b.num_rows
    outs = [model(b.take_rows(torch.arange(i, min(i + rows, n)))) for i in range(0, n, rows)]
    return torch.cat(outs) if outs else torch.zeros(0)


def train_task(
    cfg: Config, ti: int, train_b: Batch, val_b: Batch, s: DINSettings, seed: int
) -> tuple[DIN, FitResult]:
    """One DIN for task `ti`, on the rows where it applies, early-stopped on the validation rows'."""
    torch.manual_seed(seed)
    model = DIN(cfg, s.embedding_dim, s.attention_units, s.dnn_units)
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
    rows = torch.nonzero(train_b.label_mask[:, ti]).squeeze(1)
    val_rows = torch.nonzero(val_b.label_mask[:, ti]).squeeze(1)
    val_sub, y_val = val_b.take_rows(val_rows), val_b.labels[val_rows, ti].numpy()
    gen = torch.Generator().manual_seed(seed)

    def run_epoch() -> None:
        model.train()
        order = rows[torch.randperm(len(rows), generator=gen)]
        for chunk in order.split(s.batch_size):
            b = train_b.take_rows(chunk)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(b), b.labels[:, ti])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.max_gradient_norm)
            optimizer.step()

    def validate() -> float:
        return auc(y_val, predict_logits(model, val_sub, s.predict_rows).numpy()) if len(y_val) else math.nan

    return model, fit(model, optimizer, run_epoch, validate, s)


def train_din(
    cfg: Config, data: Path, work: Path, eval_b: Batch, console: Console, show_progress: bool,
    settings: DINSettings | None = None,
) -> ArmRun:
    """One DIN per task (module docstring); predictions on every row of `eval_b` `[N, T]`."""
    s = settings or DINSettings()
    torch.set_num_threads(resolve_threads(cfg.train.threads))
    schema = Schema.from_config(cfg)
    carved = carve_validation(cfg, data / "train", work / "din-data", s)
    train_b = load_split(work / "din-data" / "train", schema, cfg.data)
    val_b = load_split(work / "din-data" / "eval", schema, cfg.data)
    probs = np.full((eval_b.num_rows, len(schema.tasks)), np.nan, dtype=np.float32)
    seconds, params, models = 0.0, 0, {"validation": carved | {"settings": asdict(s)}}
    for ti, task in enumerate(schema.tasks):
        model, result = train_task(cfg, ti, train_b, val_b, s, cfg.train.seed)
        probs[:, ti] = torch.sigmoid(predict_logits(model, eval_b, s.predict_rows)).numpy()
        n_params = sum(p.numel() for p in model.parameters())
        seconds += result.train_seconds
        params += n_params
        models[task] = {
            "best_epoch": result.best_epoch,
            "val_auc": json_float(result.val_aucs[result.best_epoch - 1]) if result.best_epoch else None,
            "val_aucs": [json_float(v) for v in result.val_aucs],
            "train_seconds": result.train_seconds,
            "epochs_run": len(result.val_aucs),
            "params": n_params,
            "train_rows": int(train_b.label_mask[:, ti].sum()),
        }
        if console is not None:
            console.print(f"din: {task}: best epoch {result.best_epoch} of {len(result.val_aucs)}, validation AUC "
                          + ", ".join(f"{v:.4f}" for v in result.val_aucs) + f", {result.train_seconds:.0f}s")
    return ArmRun(probs, seconds, params, models)
