"""Post-hoc calibration job (`unictr calibrate`): fit a map per scope key and task, write a new run.

The run's own logits (after its learned calibration) are scored on held-out rows, a Platt or isotonic
map is fitted per scope key and task with `unictr.calibration.fit.fit_scoped` (fallback chain view type →
surface → global for keys with too few rows or one class), and the fits are stored as the buffers of
the model's `PosthocCalibration` (one row per view key; a surface or global fit is copied to its view
keys). The new run holds the same weights plus those tensors, and its config names the method, so
`unictr eval`, export (safetensors and ONNX) and serving apply the calibration through the model's
forward. The fit report (rows per key, fallbacks) goes into the new run's manifest.

The fit reads the `calib` split by default (never `eval` unless allowed). `Window` restricts it to the
newest days of the split and weights them by recency; the new run records its `parent` and
`calibration_only: true`. `split_by_time` carves a split into an earlier and a later part, e.g. a
calibration day and an evaluation day, so the fit never sees the rows it is judged on.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from unictr.calibration.fit import fit_scoped
from unictr.checkpoint import MANIFEST, MODEL_FILE, current_dir, load_model, sha256_file, write_checkpoint
from unictr.config import Config, with_changes
from unictr.data.batch import Batch, Schema
from unictr.data.canonical import CALIB_HINT, split_path
from unictr.data.errors import DataError
from unictr.data.reader import load_split, split_files
from unictr.model import UnifiedCTR
from unictr.train.evaluate import predict_logits
from unictr.train.loop import setup_runtime

METHODS = ("platt", "isotonic")
SCOPES = ("view_type", "surface", "global")
DAY_MS = 86_400_000
ROOT: tuple[str, ...] = ()  # the global key; a surface is (surface,), a view key (surface, view type)


class CalibrationError(ValueError):
    """A calibration job that cannot run (bad arguments, or a task with a single class)."""


def scope_key(view_key: tuple[str, str], scope: str) -> tuple[str, ...]:
    """The key a view key's rows are fitted under: (surface, view type), (surface,) or ()."""
    return {"view_type": view_key, "surface": view_key[:1], "global": ROOT}[scope]


def key_label(key: tuple[str, ...]) -> str:
    """'surface/view_type', 'surface' or '*' (global), as the report names keys."""
    return "/".join(key) or "*"


def with_posthoc(cfg: Config, method: str, scope: str = "view_type", knots: int | None = None) -> Config:
    """`cfg` with the post-hoc calibration fields set (validated)."""
    knots_change = {} if knots is None else {"posthoc_knots": knots}
    return with_changes(cfg, "model.calibration", posthoc=method, posthoc_scope=scope, **knots_change)


def without_posthoc(model: UnifiedCTR) -> UnifiedCTR:
    """The model with its post-hoc stage removed (itself if it has none): logits after the learned calibration."""
    if model.cfg.model.calibration.posthoc == "none":
        return model
    base = UnifiedCTR(with_posthoc(model.cfg, "none"))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("calibration.posthoc.")}
    base.load_state_dict(state, strict=True)
    return base.eval()


def fit_posthoc(  # long: one fit per task, then the per-view-key layout of the tensors
    schema: Schema,
    b: Batch,
    logits: Tensor,
    method: str,
    scope: str,
    min_rows: int,
    weights: np.ndarray | None = None,
    prior_strength: float = 0.0,
) -> tuple[dict[str, Tensor], dict[str, dict[str, dict[str, Any]]]]:
    """Fit `method` per scope key and task on the rows of `b` where the task applies.

    Returns the buffers of `PosthocCalibration` laid out per view key × task (isotonic tables padded
    to one width with their last knot) and the report: per task, per key label, rows / fell_back / used.
    Surfaces where a task does not apply take that task's global fit (their scores are never used).
    `weights` (per row; rows of weight 0 are left out) and `prior_strength` (hierarchical shrinkage of
    Platt fits): see `fit_scoped`.
    """
    _check_choices(method, scope)
    leaf = [scope_key(vk, scope) for vk in schema.view_keys]
    z, labels = logits.numpy(), b.labels.numpy()
    view_key, applies = b.view_key.numpy(), b.label_mask.numpy()
    per_task: list[list[dict[str, Tensor]]] = []  # [task][view key] -> tensor name -> fitted value(s)
    report: dict[str, dict[str, dict[str, Any]]] = {}
    for ti, task in enumerate(schema.tasks):
        on = {s for s, row in zip(schema.surfaces, schema.task_mask, strict=True) if row[ti]}
        parents: dict[Hashable, Hashable | None] = {k: k[:-1] for k in leaf if k and k[0] in on}
        parents.update({k[:1]: ROOT for k in parents})
        rows = applies[:, ti] if weights is None else applies[:, ti] & (weights > 0)
        try:
            cal = fit_scoped(
                z[rows, ti], labels[rows, ti], [leaf[k] for k in view_key[rows].tolist()], parents,
                min_rows=min_rows, method=method, weights=None if weights is None else weights[rows],
                prior_strength=prior_strength,
            )
        except ValueError as e:
            raise CalibrationError(f"task {task!r}: {e}") from None
        index = cal.index
        per_task.append([{n: t[index.get(k, index[ROOT])] for n, t in cal.tensors.items()} for k in leaf])
        report[task] = {
            key_label(k): {**r, "used": key_label(r["used"])}
            for k, r in sorted(cal.fallbacks.items(), key=lambda kv: (len(kv[0]), kv[0]))
        }
    if method == "isotonic":  # one table width for every view key and task
        width = max(2, *(t.numel() for rows_ in per_task for row in rows_ for t in row.values()))
        per_task = [[{n: _pad(t, width) for n, t in row.items()} for row in rows_] for rows_ in per_task]
    tensors = {
        n: torch.stack([torch.stack([rows_[k][n] for rows_ in per_task]) for k in range(len(leaf))])
        for n in per_task[0][0]
    }
    return tensors, report


@dataclass(frozen=True)
class Window:
    """Which days of a calibration split a fit uses, and how much each counts.

    Days are calendar days of the `timestamp` column at `utc_offset_hours` (KuaiRand's are Beijing days:
    8). `days`: the newest `days` days present (None: every row); `half_life_days`: a row `age` days
    older than the newest day weighs 0.5 ** (age / half_life_days) (None: every day weighs 1)."""

    days: int | None = None
    half_life_days: float | None = None
    utc_offset_hours: float = 0.0

    def __post_init__(self) -> None:
        if self.days is not None and self.days < 1:
            raise CalibrationError(f"window days must be >= 1, got {self.days}")
        if self.half_life_days is not None and not self.half_life_days > 0:
            raise CalibrationError(f"half-life must be > 0 days, got {self.half_life_days}")

    def day_of(self, timestamp_ms: np.ndarray) -> np.ndarray:
        """Day number (days since 1970-01-01 at the offset) of each timestamp."""
        return (np.asarray(timestamp_ms, dtype=np.int64) + round(self.utc_offset_hours * 3_600_000)) // DAY_MS

    def weights(self, day: np.ndarray) -> np.ndarray:
        """Per row of day numbers `day`: its weight, 0 outside the window."""
        age = (day.max() - day).astype(np.float64)
        w = np.ones_like(age) if self.half_life_days is None else 0.5 ** (age / self.half_life_days)
        return w if self.days is None else np.where(age < self.days, w, 0.0)

    def describe(self, day: np.ndarray) -> dict[str, Any]:
        """The window's settings and each day's (YYYY-MM-DD) rows and weight, for the manifest."""
        w = self.weights(day)
        days = {str(np.datetime64(int(d), "D")): {"rows": int((day == d).sum()), "weight": float(w[day == d][0])}
                for d in np.unique(day)}
        return {"days": self.days, "half_life_days": self.half_life_days,
                "utc_offset_hours": self.utc_offset_hours, "per_day": days}


def split_timestamps(split_dir: Path, column: str) -> np.ndarray:
    """The `column` (timestamps) of every row of a split, in the reader's row order (file by file)."""
    return np.concatenate([pq.read_table(f, columns=[column])[column].to_numpy() for f in split_files(split_dir)])


def calibration_split(data: Path, split: str, allow_eval_split: bool = False) -> Path:
    """The split directory a calibration fits on: `data/split` or the split directory `data`.

    Fitting on `eval` is refused unless `allow_eval_split` (`eval`, the gate and `promote --eval-data`
    then score the rows the map was fitted to, so the ratio reads 1.0 whatever the model does); a
    missing split says how to make a calib split."""
    if split == "eval" and not allow_eval_split:
        raise CalibrationError(
            "refusing to fit calibration on the eval split: eval and the promotion gate score those rows, so "
            "they would report the fit, not the model; fit on --split calib (" + CALIB_HINT + "), or pass "
            "--allow-eval-split if these rows are really held out"
        )
    try:
        return split_path(data, split)
    except DataError as e:
        raise CalibrationError(str(e)) from None


def _check_choices(method: str, scope: str) -> None:
    if method not in METHODS:
        raise CalibrationError(f"method must be one of {METHODS}, got {method!r}")
    if scope not in SCOPES:
        raise CalibrationError(f"scope must be one of {SCOPES}, got {scope!r}")


def _pad(knots: Tensor, width: int) -> Tensor:
    """A knot row padded to `width` with its last value."""
    return torch.cat([knots, knots[-1:].expand(width - knots.numel())])


def calibrate_run(  # long: argument checks, the fit, and the new run's manifest
    run: str | Path,
    data: str | Path,
    out: str | Path,
    method: str,
    scope: str = "view_type",
    split: str = "calib",
    min_rows: int = 1000,
    allow_eval_split: bool = False,
    window: Window | None = None,
    prior_strength: float = 0.0,
) -> dict[str, Any]:
    """Fit post-hoc calibration of `run` on `data/<split>` (or the split directory `data`) into the new run `out`.

    `run` is left unchanged (a calibrated run is re-fitted from its logits before the post-hoc stage).
    `split="eval"` is refused unless `allow_eval_split`: the fit would see the rows it is judged on.
    `window`: fit on the newest days only, recency-weighted (`Window`); `prior_strength`: hierarchical
    shrinkage of each key's Platt fit towards its parent's (`fit_scoped`). The new run differs from
    `run` only in its calibration (tensors `calibration.posthoc.*` and the config's post-hoc fields); its
    manifest names `run` as `parent` with `calibration_only: true`. Returns the new run's manifest.
    """
    run, data, out = Path(run), Path(data), Path(out)
    _check_choices(method, scope)
    if out.resolve() == run.resolve():
        raise CalibrationError(f"{out} is the source run; write the calibrated run to a new directory")
    split_dir = calibration_split(data, split, allow_eval_split)
    if min_rows < 1:
        raise CalibrationError(f"min_rows must be >= 1, got {min_rows}")
    if prior_strength < 0 or (prior_strength > 0 and method != "platt"):
        raise CalibrationError(f"prior strength must be >= 0 and is for --method platt only, got {prior_strength}")
    source, source_manifest = load_model(run)
    base = without_posthoc(source)
    setup_runtime(base.cfg.train.model_copy(update={"device": "cpu"}))
    b = load_split(split_dir, base.schema, base.cfg.data)
    weights, window_info = None, None
    if window is not None:
        day = window.day_of(split_timestamps(split_dir, base.cfg.data.timestamp))
        if day.size != b.num_rows:
            raise CalibrationError(f"{split_dir}: read {b.num_rows} rows but {day.size} timestamps")
        weights, window_info = window.weights(day), window.describe(day)
    tensors, report = fit_posthoc(base.schema, b, predict_logits(base, b), method, scope, min_rows, weights,
                                  prior_strength)
    knots = tensors["x_knots"].shape[-1] if method == "isotonic" else None
    calibrated = UnifiedCTR(with_posthoc(base.cfg, method, scope, knots))
    state = base.state_dict() | {f"calibration.posthoc.{n}": t for n, t in tensors.items()}
    calibrated.load_state_dict(state, strict=True)
    info = {
        "method": method,
        "scope": scope,
        "min_rows": min_rows,
        "knots": knots,
        "data": str(split_dir.resolve()),
        "rows": b.num_rows if weights is None else int((weights > 0).sum()),
        "window": window_info,
        "prior_strength": prior_strength,
        "fit": report,
    }
    parent = {"path": str(run.resolve()), "manifest_sha256": sha256_file(current_dir(run) / MANIFEST),
              "train_state": source_manifest.get("train_state")}
    return write_checkpoint(
        out, calibrated.cfg, {MODEL_FILE: calibrated.state_dict()},
        extra={"calibration": info, "parent": parent, "calibration_only": True},
    )


def split_by_time(
    src: str | Path,
    early: str | Path,
    late: str | Path,
    *,
    fraction: float | None = None,
    at_ms: int | None = None,
    request_id: str = "request_id",
    timestamp: str = "timestamp",
) -> dict[str, int]:
    """Cut the canonical split `src` in time into the split directories `early` and `late`.

    Whole requests move together, placed by their first impression's time: with `fraction`, the first
    `fraction` of requests in time order go early; with `at_ms`, requests that start before it. Files are
    streamed one at a time (each source file gives at most one part per side) and row order is kept.
    Returns the rows written to each side.
    """
    if (fraction is None) == (at_ms is None):
        raise ValueError("give exactly one of fraction or at_ms")
    if fraction is not None and not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    files = split_files(src)
    keys = [pq.read_table(f, columns=[request_id, timestamp]) for f in files]
    ids, req = np.unique(np.concatenate([k[request_id].to_numpy() for k in keys]), return_inverse=True)
    start = np.full(ids.size, np.iinfo(np.int64).max)
    np.minimum.at(start, req, np.concatenate([k[timestamp].to_numpy() for k in keys]))
    if fraction is not None:
        rank = np.empty(start.size, dtype=np.int64)
        rank[np.argsort(start, kind="stable")] = np.arange(start.size)
        early_req = rank < round(fraction * start.size)
    else:
        early_req = start < at_ms
    is_early = np.split(early_req[req], np.cumsum([k.num_rows for k in keys])[:-1])
    written = {"early": 0, "late": 0}
    for side, where in (("early", Path(early)), ("late", Path(late))):
        where.mkdir(parents=True, exist_ok=True)
        for i, (file, mask) in enumerate(zip(files, is_early, strict=True)):
            keep = mask if side == "early" else ~mask
            if keep.any():
                pq.write_table(pq.read_table(file).filter(pa.array(keep)), where / f"part-{i:05d}.parquet",
                               compression="zstd")
                written[side] += int(keep.sum())
    return written
