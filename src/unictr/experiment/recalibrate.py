"""`unictr experiment recalibrate`: rolling evaluation of post-hoc recalibration on later days.

The model is trained once per seed on the days up to `train_until`; then, for each scored day d, every
method fits its Platt maps (per view type → surface → global, `calibration.job.fit_posthoc`) on labelled
days before d only and scores day d:

- `none`: no post-hoc map (the model's learned calibration only);
- `once`: one fit on the first scored day D1 only, used from D2 on and never refitted (on D1 itself,
  before its labels exist, it fits on the day before, like every method);
- `daily`: refitted each day on the previous day only;
- `windowed`: refitted each day on the `window_days` days before it, recency-weighted (half-life) and
  hierarchically shrunk (`prior_strength`, see `calibration.fit.fit_scoped`).

Labelled days before the first scored day are the training days: their logits are in-sample, which the
report says. Per surface × task × day: the calibration ratio with its 95% interval, the z-score
(Σp − Σy)/sqrt(Σp(1−p)), ECE and log loss, averaged over seeds; per method mean z² and mean |log ratio|.
Every map is a monotone Platt map (a > 0), and the AUC within each view key is checked unchanged.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from unictr.calibration.job import Window, fit_posthoc, split_timestamps
from unictr.checkpoint import load_model
from unictr.config import Config, with_changes
from unictr.data.batch import Batch, Schema, concat_batches
from unictr.data.canonical import SPLITS
from unictr.data.errors import DataError
from unictr.data.reader import load_split
from unictr.experiment.report import _f, data_meta, machine_info
from unictr.metrics import auc, calibration_z, ece, json_float, logloss, ratio_interval
from unictr.train.evaluate import predict_logits
from unictr.train.loop import train

METHODS = ("none", "once", "daily", "windowed")


@dataclass(frozen=True)
class Plan:
    """What the rolling evaluation compares: the days and the windowed method's settings."""

    train_until: str  # YYYY-MM-DD, the last training day
    days: tuple[str, ...]  # the scored days, YYYY-MM-DD, each after train_until
    window_days: int = 3
    half_life_days: float = 1.0
    prior_strength: float = 100.0
    min_rows: int = 200
    utc_offset_hours: float = 0.0

    def day_numbers(self) -> tuple[int, list[int]]:
        """(train_until, scored days) as day numbers (days since 1970-01-01)."""
        try:
            d0, ds = _day(self.train_until), [_day(d) for d in self.days]
        except ValueError as e:
            raise DataError(f"recalibrate: expected days as YYYY-MM-DD: {e}") from None
        if not ds or min(ds) <= d0 or ds != sorted(set(ds)):
            raise DataError(f"recalibrate: days {list(self.days)} must be increasing and after {self.train_until}")
        return d0, ds


def _day(text: str) -> int:
    return (dt.date.fromisoformat(text) - dt.date(1970, 1, 1)).days


def _label(day: int) -> str:
    return str(dt.date(1970, 1, 1) + dt.timedelta(days=int(day)))


@dataclass
class Rows:
    """Every labelled row of the data directory (all splits), with its day number."""

    batch: Batch
    day: np.ndarray


def load_rows(data: Path, schema: Schema, cfg: Config, window: Window) -> Rows:
    """All splits of `data` (train, calib, eval as present) as one batch, with each row's day."""
    batches, days = [], []
    for split in (s for s in SPLITS if (data / s).is_dir()):
        batches.append(load_split(data / split, schema, cfg.data))
        days.append(window.day_of(split_timestamps(data / split, cfg.data.timestamp)))
        if days[-1].size != batches[-1].num_rows:
            raise DataError(f"{data / split}: read {batches[-1].num_rows} rows but {days[-1].size} timestamps")
    return Rows(concat_batches(batches), np.concatenate(days))


def method_weights(method: str, plan: Plan, day: np.ndarray, scored: int, first: int) -> np.ndarray | None:
    """Per row, its weight in `method`'s fit for the scored day `scored` (None: no post-hoc map);
    `first` is the first scored day."""
    if method == "none":
        return None
    if method == "once":  # D1's labels from D2 on; before them, like every method, the day before
        return (day == (first if scored > first else first - 1)).astype(np.float64)
    if method == "daily":
        return (day == scored - 1).astype(np.float64)
    age = (scored - 1 - day).astype(np.float64)
    w = 0.5 ** (np.maximum(age, 0.0) / plan.half_life_days)
    return np.where((age >= 0) & (age < plan.window_days), w, 0.0)


def _platt_probs(tensors: dict, logits: np.ndarray, view_key: np.ndarray) -> np.ndarray:
    """Calibrated probabilities [N, T] from per view key × task Platt tensors (a > 0 asserted)."""
    a, b = tensors["a"].numpy().astype(np.float64), tensors["b"].numpy().astype(np.float64)
    if not (a > 0).all():
        raise AssertionError(f"a Platt slope is not positive: the map would not be monotone: {a.tolist()}")
    return 1.0 / (1.0 + np.exp(-(a[view_key] * logits + b[view_key])))


def _check_auc_within_keys(schema: Schema, y: np.ndarray, raw: np.ndarray, cal: np.ndarray, vk: np.ndarray,
                           on: np.ndarray) -> None:
    """AUC per view key × task is unchanged by the map (a monotone map within a key)."""
    for k in np.unique(vk):
        for t in range(len(schema.tasks)):
            m = (vk == k) & on[:, t]
            if m.any() and 0 < y[m, t].sum() < m.sum():
                before, after = auc(y[m, t], raw[m, t]), auc(y[m, t], cal[m, t])
                if abs(before - after) > 1e-9:
                    raise AssertionError(f"AUC of view key {schema.view_keys[k]} task {schema.tasks[t]} changed "
                                         f"from {before} to {after}")


def _stats(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """Rows, positives, ratio with its 95% interval, z, ECE, log loss of one slice."""
    lo, hi = ratio_interval(y, p)
    ratio = float(p.sum() / y.sum()) if y.sum() > 0 else math.nan
    return {"n": int(y.size), "positives": int(y.sum()), "ratio": json_float(ratio), "ratio_lo": json_float(lo),
            "ratio_hi": json_float(hi), "z": json_float(calibration_z(y, p)), "ece": json_float(ece(y, p)),
            "logloss": json_float(logloss(y, p))}


def score_seed(schema: Schema, rows: Rows, logits: np.ndarray, plan: Plan) -> dict[str, Any]:  # long: the grid
    """Per method, day, surface and task: the slice statistics of one seed's model."""
    b, day = rows.batch, rows.day
    _, scored_days = plan.day_numbers()
    y, on, vk, surf = b.labels.numpy(), b.label_mask.numpy(), b.view_key.numpy(), b.surface.numpy()
    raw = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    fits: dict[tuple[str, ...], tuple[dict, dict]] = {}
    out: dict[str, Any] = {m: {} for m in METHODS}
    for d in scored_days:
        rows_d = day == d
        if not rows_d.any():
            raise DataError(f"recalibrate: no rows on the scored day {_label(d)}")
        for method in METHODS:
            w = method_weights(method, plan, day, d, scored_days[0])
            if w is None:
                probs = raw[rows_d]
            else:
                key = ("once", str(min(d, scored_days[0] + 1))) if method == "once" else (method, str(d))
                if key not in fits:
                    if not (w > 0).any():
                        raise DataError(f"recalibrate: {method} has no labelled rows before {_label(d)}")
                    strength = plan.prior_strength if method == "windowed" else 0.0
                    fits[key] = fit_posthoc(schema, b, torch.from_numpy(logits), "platt", "view_type",
                                            plan.min_rows, w, strength)
                probs = _platt_probs(fits[key][0], logits[rows_d], vk[rows_d])
                _check_auc_within_keys(schema, y[rows_d], raw[rows_d], probs, vk[rows_d], on[rows_d])
            out[method][_label(d)] = {
                s: {t: _stats(y[rows_d][m, ti], probs[m, ti])
                    for ti, t in enumerate(schema.tasks)
                    if (m := (surf[rows_d] == si) & on[rows_d][:, ti]).any() and y[rows_d][m, ti].sum() > 0}
                for si, s in enumerate(schema.surfaces)
            }
    return out


def run_recalibration(  # long: train per seed, score, write the report
    cfg: Config,
    data: str | Path,
    out: str | Path,
    plan: Plan,
    seeds: tuple[int, ...] = (0,),
    surfaces: tuple[str, ...] | None = None,
    command: str = "",
    console: Console | None = None,
) -> dict[str, Any]:
    """Train on `data/train` (days up to `plan.train_until`) once per seed, compare the methods on the
    scored days, write `out/report.json` and `out/report.md`; returns the report dict."""
    console = console or Console()
    data, out = Path(data), Path(out)
    d0, _ = plan.day_numbers()
    schema = Schema.from_config(cfg)
    window = Window(utc_offset_hours=plan.utc_offset_hours)
    train_days = window.day_of(split_timestamps(data / "train", cfg.data.timestamp))
    if train_days.max() > d0:
        raise DataError(f"{data}: train/ must hold only the days up to {plan.train_until} (it ends on "
                        f"{_label(train_days.max())}); write it with `unictr data kuairand --eval-from` the day after")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="recal-", dir=out))
    started, per_seed = time.perf_counter(), {}
    try:
        (work / "data").mkdir()
        (work / "data" / "train").symlink_to((data / "train").resolve(), target_is_directory=True)
        for seed in seeds:
            console.print(f"[bold]training seed {seed}[/bold] on the days up to {plan.train_until}")
            train(with_changes(cfg, "train", seed=seed), work / "data", work / f"seed{seed}", console=console,
                  show_progress=False)
            model, _ = load_model(work / f"seed{seed}")
            rows = load_rows(data, model.schema, model.cfg, window)  # the trained model's own encoding
            logits = predict_logits(model, rows.batch).numpy()
            per_seed[seed] = score_seed(model.schema, rows, logits, plan)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = build_recal_report(per_seed, plan, surfaces or tuple(schema.surfaces), schema)
    report |= {"command": command, "seeds": list(seeds), "data": data_meta(data), "machine": machine_info(),
               "wall_seconds": time.perf_counter() - started, "config": cfg.model_dump(mode="json")}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(recal_markdown(report))
    return report


def build_recal_report(per_seed: dict[int, dict], plan: Plan, surfaces: tuple[str, ...], schema: Schema) -> dict:
    """Seed means per method × day × surface × task, and per method × task the summary over `surfaces`:
    mean z², mean |log ratio| (over seeds, days and surfaces), mean ECE and log loss."""
    first = next(iter(per_seed.values()))
    table: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for method, by_day in first.items():
        for day, by_surface in by_day.items():
            for s, by_task in by_surface.items():
                for t in by_task:
                    blocks = [per_seed[seed][method][day][s][t] for seed in per_seed]
                    mean = {k: json_float(float(np.mean([b[k] for b in blocks if b[k] is not None])))
                            if any(b[k] is not None for b in blocks) else None for k in blocks[0]}
                    table.setdefault(method, {}).setdefault(day, {}).setdefault(s, {})[t] = mean
                    if s in surfaces:
                        acc = summary.setdefault(method, {}).setdefault(t, {"z2": [], "abs_log_ratio": [], "ece": [],
                                                                              "logloss": []})
                        for b in blocks:
                            acc["z2"].append(b["z"] ** 2)
                            acc["abs_log_ratio"].append(abs(math.log(b["ratio"])) if b["ratio"] else math.nan)
                            acc["ece"].append(b["ece"])
                            acc["logloss"].append(b["logloss"])
    summary = {m: {t: {f"mean_{k}": json_float(float(np.nanmean(v))) for k, v in acc.items()}
                   | {"cells": len(acc["z2"])} for t, acc in tasks.items()} for m, tasks in summary.items()}
    return {"plan": plan.__dict__ | {"days": list(plan.days)}, "methods": list(METHODS),
            "summary_surfaces": list(surfaces), "tasks": list(schema.tasks), "summary": summary, "table": table}


def recal_markdown(report: dict[str, Any]) -> str:
    """report.md: the summary per task and method, then per task the ratio [95% interval] and z per
    surface × day for each method (seed means)."""
    plan, methods = report["plan"], report["methods"]
    lines = [
        "# Rolling recalibration", "",
        f"Command: `{report.get('command', '')}`", "",
        f"Trained on the days up to {plan['train_until']} (seeds {report.get('seeds')}); scored days "
        f"{', '.join(plan['days'])}. Windowed: {plan['window_days']} days, half-life {plan['half_life_days']} "
        f"days, prior strength {plan['prior_strength']}; min rows per key {plan['min_rows']}; days at UTC"
        f"{plan['utc_offset_hours']:+g} h. `once` fits on the first scored day only (on that day itself, on the "
        f"day before). Fit days up to "
        f"{plan['train_until']} are training days (in-sample logits).", "",
        f"Machine: {report.get('machine', {}).get('cpu')}, {report.get('machine', {}).get('nproc')} cores, "
        f"torch threads {report.get('machine', {}).get('torch_threads')}; wall {report.get('wall_seconds', 0):.0f} s.",
        "", f"## Summary over {', '.join(report['summary_surfaces'])} × days × seeds", "",
        "| task | method | mean z² | mean \\|log ratio\\| | mean ECE | mean log loss | cells |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t in report["tasks"]:
        for m in methods:
            r = report["summary"].get(m, {}).get(t)
            if r:
                lines.append(f"| {t} | {m} | {_f(r['mean_z2'], '.2f')} | {_f(r['mean_abs_log_ratio'])} | "
                             f"{_f(r['mean_ece'])} | {_f(r['mean_logloss'])} | {r['cells']} |")
    for t in report["tasks"]:
        lines += ["", f"## {t}: calibration ratio [95% interval], z (seed means)", "",
                  "| surface | day | " + " | ".join(methods) + " |", "| --- | --- |" + " ---: |" * len(methods)]
        first = report["table"][methods[0]]
        for day, by_surface in first.items():
            for s in by_surface:
                cells = [report["table"][m][day][s].get(t) for m in methods]
                if any(cells):
                    lines.append(f"| {s} | {day} | " + " | ".join(
                        "-" if c is None else f"{_f(c['ratio'], '.3f')} [{_f(c['ratio_lo'], '.2f')}, "
                        f"{_f(c['ratio_hi'], '.2f')}], z {_f(c['z'], '.2f')}" for c in cells) + " |")
    return "\n".join(lines) + "\n"
