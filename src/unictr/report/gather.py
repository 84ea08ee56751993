"""What a report reads: a run directory (its current manifest and `events.jsonl`; with a data directory, its
split scored again) or an experiment's report directory (`report.json`).

A run's manifest holds the metrics of its last evaluation but not the predictions behind them, so the
reliability diagrams need the split itself: with `data`, each run is scored on the same rows by the
streaming evaluator (`train.evaluate.score_split`), and its table comes from that scoring too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unictr.checkpoint import CHECKPOINTS, MANIFEST, POINTER, current_dir, read_manifest
from unictr.data.batch import Schema
from unictr.files import read_parsed
from unictr.train.evaluate import Scored
from unictr.train.events import EVENTS

EXPERIMENT_REPORT = "report.json"


class ReportError(ValueError):
    """A directory the report cannot read: neither a run nor an experiment, or a file in it unreadable."""


@dataclass
class RunView:
    """One run as the report shows it."""

    label: str
    path: Path
    manifest: dict[str, Any]
    steps: list[dict[str, Any]]  # events.jsonl "step" lines: loss, lr, rows_per_s every N steps
    epochs: list[dict[str, Any]]  # "epoch" lines (or the manifest's history): train loss, eval AUC per task
    metrics: dict[str, Any] | None  # the sliced metrics (`train.evaluate.sliced_metrics`)
    metrics_source: str
    schema: Schema | None = None  # with `scored`: the model's schema, for the reliability diagrams
    scored: Scored | None = None
    unreadable_lines: int = 0


@dataclass
class ExperimentView:
    """An experiment's report directory (`unictr experiment unify --out`)."""

    label: str
    path: Path
    report: dict[str, Any] = field(default_factory=dict)


def gather(paths: list[Path], data: Path | None = None, threads: int | None = None) -> list[RunView | ExperimentView]:
    """Each of `paths` read (and, with `data`, each run scored on its eval split), labelled by its directory
    name, or by its whole path where two names clash."""
    names = [Path(p).resolve().name for p in paths]
    views = []
    for p, name in zip(paths, names, strict=True):
        label = str(p) if names.count(name) > 1 else name
        views.append(_read(Path(p), label, data, threads))
    return views


def _read(path: Path, label: str, data: Path | None, threads: int | None) -> RunView | ExperimentView:
    if not path.is_dir():
        raise ReportError(f"{path}: no such directory; expected a run directory or an experiment's report directory")
    if (path / EXPERIMENT_REPORT).is_file():
        return ExperimentView(label, path, read_experiment(path / EXPERIMENT_REPORT))
    if not ((path / CHECKPOINTS / POINTER).is_file() or (path / MANIFEST).is_file()):
        raise ReportError(f"{path}: not a unictr run (no {CHECKPOINTS}/{POINTER} or {MANIFEST}) nor an "
                          f"experiment's report directory (no {EXPERIMENT_REPORT})")
    return read_run(path, label, data, threads)


def read_experiment(path: Path) -> dict[str, Any]:
    """A parsed `report.json`; ReportError naming the file when it is not JSON or has no arms."""
    report = read_parsed(path, json.loads, json.JSONDecodeError, ReportError, missing="missing",
                         invalid="not valid JSON")
    if not isinstance(report, dict) or not isinstance(report.get("arms"), dict) or not report["arms"]:
        raise ReportError(f"{path}: expected an experiment report with 'arms' (unictr experiment unify)")
    return report


def read_run(path: Path, label: str, data: Path | None = None, threads: int | None = None) -> RunView:
    """The run's current manifest and events; with `data`, its metrics and scores on `data`'s eval split."""
    manifest = read_manifest(current_dir(path))
    steps, epochs, unreadable = read_events(path / EVENTS)
    if not (path / EVENTS).is_file():
        epochs = list(manifest.get("history") or [])
    view = RunView(label, path, manifest, steps, epochs, manifest.get("metrics"),
                   "the run's last evaluation (its manifest)", unreadable_lines=unreadable)
    if data is not None:
        _score(view, data, threads)
    return view


def read_events(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """(step lines, epoch lines, count of unreadable lines) of an `events.jsonl` (empty when absent).

    A line cut short by a killed process is counted, not fatal: the rest of the log still draws."""
    steps: list[dict[str, Any]] = []
    epochs: list[dict[str, Any]] = []
    unreadable = 0
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in lines:
        try:
            event = json.loads(line)
            kind, step = event["event"], int(event["step"])
        except (ValueError, KeyError, TypeError):
            unreadable += 1
            continue
        if kind in ("step", "epoch"):
            (steps if kind == "step" else epochs).append(event | {"step": step})
    return steps, epochs, unreadable


def _score(view: RunView, data: Path, threads: int | None) -> None:
    """Score the run's current checkpoint on `data/eval` (or the split directory `data`) on the CPU."""
    from unictr.checkpoint import load_model
    from unictr.train.evaluate import score_split, sliced_metrics
    from unictr.train.loop import setup_cpu_scoring

    split = data / "eval" if (data / "eval").is_dir() else data
    if not split.is_dir():
        raise ReportError(f"{data}: no such data directory (expected DATA/eval or a split directory)")
    model, _ = load_model(view.path)
    setup_cpu_scoring(model.cfg.train, threads)
    view.schema, view.scored = model.schema, score_split(model, split)
    view.metrics, view.metrics_source = sliced_metrics(model.schema, view.scored), f"scored on {split}"
