"""The promotion gate: what a registry version must pass before it goes live.

Integrity (`Registry.verified_dir`: the published manifest, its signature with a key, every file's
sha256), finite scores on a random probe, and on the surface's eval rows: the calibration ratio of
one task within bounds and no task's AUC below the live version's by more than a margin. It loads
data, so it lives outside `serving/`; `Registry.promote` imports it when it runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unictr.data.reader import load_surface_split
from unictr.export.probe import probe_batch
from unictr.metrics import auc, calibration_ratio, json_float
from unictr.model import UnifiedCTR, probabilities
from unictr.serving.registry import Registry, RegistryError, utc_now


@dataclass(frozen=True)
class GatePolicy:
    """Promotion gate: calibration ratio of `calibration_task` (default: the first task) within
    `calibration_bounds`, and no task's AUC below the live version's by more than `auc_margin`."""

    auc_margin: float = 0.01
    calibration_bounds: tuple[float, float] = (0.8, 1.25)
    calibration_task: str | None = None


@dataclass
class GateReport:
    surface: str
    candidate: str
    current: str | None
    eval_data: str | None
    policy: GatePolicy
    rows: int = 0
    metrics: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    forced: bool = False
    promoted: bool = False
    created_at: str = field(default_factory=utc_now)
    path: str | None = None  # where the registry keeps this report

    @property
    def passed(self) -> bool:
        return all(c["passed"] for c in self.checks)

    def check(self, name: str, passed: bool, detail: str) -> None:
        self.checks.append({"name": name, "passed": bool(passed), "detail": detail})

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def run_gate(
    registry: Registry,
    surface: str,
    candidate: str,
    current: str | None,
    eval_data: str | Path | None,
    policy: GatePolicy,
) -> GateReport:
    """Check a candidate version: integrity, finite scores, calibration and AUC against the live one."""
    report = GateReport(surface, candidate, current, None if eval_data is None else str(eval_data), policy)
    try:
        export = registry.load(surface, candidate)
    except RegistryError as e:
        report.check("integrity", False, str(e))
        return report
    model, manifest = export.model, export.manifest
    signed = ", its signature" if registry.key else ""
    report.check("integrity", True, f"verified: the published manifest{signed} and every file's sha256")
    tasks = list(manifest["tasks"])
    probe = probabilities(model, probe_batch(model.schema, surface)).numpy()
    report.check("finite_probe", bool(np.isfinite(probe).all()), f"{probe.size} probabilities on a random probe")
    if eval_data is None:
        report.check("eval_data", False, "no --eval-data: calibration and AUC cannot be checked (or use --force)")
        return report

    cand = _eval_metrics(model, tasks, eval_data, surface)
    report.rows = cand.pop("_rows")
    report.metrics[candidate] = cand
    finite = all(m["finite"] for m in cand.values())
    report.check("finite", finite, f"all probabilities finite on {report.rows} eval rows" if finite else
                 "non-finite probabilities on the eval rows")
    task = policy.calibration_task or tasks[0]
    if task not in cand:
        raise RegistryError(f"calibration task {task!r} does not apply on {surface}; tasks: {tasks}")
    ratio = cand[task]["calibration_ratio"]
    lo, hi = policy.calibration_bounds
    report.check("calibrated", ratio is not None and lo <= ratio <= hi,
                 f"{task} calibration ratio {_fmt(ratio)} (bounds [{lo}, {hi}])")
    if current is not None:
        _compare_with_live(report, registry, current, cand, eval_data)
    return report


def _compare_with_live(
    report: GateReport, registry: Registry, current: str, cand: dict[str, Any], eval_data: str | Path
) -> None:
    """The `auc_<task>` checks: the candidate's AUC against the live version's on the same rows. A live
    version that fails its integrity checks cannot be compared: a failed `live_baseline` check."""
    surface, margin = report.surface, report.policy.auc_margin
    try:
        live_export = registry.load(surface, current)
    except RegistryError as e:
        report.check("live_baseline", False, f"live {current} cannot be loaded to compare AUCs ({e})")
        return
    live = _eval_metrics(live_export.model, list(live_export.manifest["tasks"]), eval_data, surface)
    live.pop("_rows")
    report.metrics[current] = live
    for t in (t for t in cand if t in live):
        a, b = cand[t]["auc"], live[t]["auc"]
        ok = a is not None and (b is None or a >= b - margin)
        report.check(f"auc_{t}", ok, f"{t} AUC {_fmt(a)} vs live {_fmt(b)} (margin {margin})")


def _eval_metrics(model: UnifiedCTR, tasks: list[str], eval_data: str | Path, surface: str) -> dict[str, Any]:
    """Per task: AUC, calibration ratio, rows and finiteness on the eval rows of `surface`."""
    path = Path(eval_data)
    split = path / "eval" if (path / "eval").is_dir() else path
    b = load_surface_split(split, model.schema, model.cfg.data, surface)
    probs = probabilities(model, b).numpy()
    labels = b.labels.numpy()
    out: dict[str, Any] = {"_rows": b.num_rows}
    for t in tasks:
        j = model.schema.tasks.index(t)
        p, y = probs[:, j], labels[:, j]
        out[t] = {
            "auc": json_float(auc(y, p)),
            "calibration_ratio": json_float(calibration_ratio(y, p)),
            "mean_prediction": json_float(float(p.mean())),
            "n": int(y.size),
            "finite": bool(np.isfinite(p).all()),
        }
    return out


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
