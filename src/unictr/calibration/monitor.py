"""Calibration monitoring (`unictr monitor`): is a run still calibrated on fresh labelled traffic?

A split is scored with the run (the streamed `score_split` of evaluation) and cut per surface × view
type × task — the surface as a whole and each of its view types — and, with `by="day"`, per UTC day of
the rows' timestamps. Each key gets its rows, positives, calibration ratio Σp/Σy with a 95% interval,
the z-score (Σp − Σy) / sqrt(Σ p(1−p)), ECE and AUC, and the drift of AUC and ratio from what the run
recorded at training (its manifest's `metrics`; none for a run without them, e.g. a calibrated one).

A key is flagged when |z| exceeds the threshold. Given the predictions, a calibrated model's labels are
independent Bernoulli draws, so z is about N(0, 1) on every key whatever its size, and one threshold
serves a big surface and a thin view type alike. The default, `DEFAULT_Z` = 4, is a Bonferroni-style
bound: a morning's report tests K keys, and a perfectly calibrated model raises a false alarm with
probability 1 − (1 − 2(1 − Φ(4)))^K ≈ K × 6.3e-5, about 1.3% for K = 200 (`false_alarm_rate`; the report
states it for its own K). Keys whose variance Σ p(1−p) is under `MIN_VARIANCE` hold too few expected
positives for the normal approximation (a skewed count makes |z| > 4 far likelier than 6e-5): they
are reported, never flagged, and not counted in K.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from unictr.checkpoint import load_model
from unictr.data.batch import Schema
from unictr.data.reader import split_files
from unictr.metrics import auc, calibration_ratio, calibration_z, ece, json_float, ratio_interval
from unictr.train.evaluate import Scored, score_split
from unictr.train.loop import setup_cpu_scoring

DEFAULT_Z = 4.0
MIN_VARIANCE = 5.0  # Σ p(1-p) below this: too few expected positives to test (reported, never flagged)
LEVEL = 0.95  # the ratio interval's level
DAY_MS = 86_400_000
BY = ("none", "day")


def false_alarm_rate(z_threshold: float, keys: int) -> float:
    """Probability that at least one of `keys` independent keys of a calibrated model has |z| > threshold."""
    per_key = 2.0 * (1.0 - NormalDist().cdf(z_threshold))
    return 1.0 - (1.0 - per_key) ** keys


def key_stats(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """The monitored numbers of one key's rows (labels `y`, predictions `p`), JSON-safe."""
    y, p = y.astype(np.float64), p.astype(np.float64)  # float32 sums drift on a million rows
    lo, hi = ratio_interval(y, p, LEVEL)
    return {
        "rows": int(y.size),
        "positives": int(y.sum()),
        "predicted": float(p.sum()),
        "variance": float(np.sum(p * (1.0 - p))),
        "ratio": json_float(calibration_ratio(y, p)),
        "ratio_lo": json_float(lo),
        "ratio_hi": None if math.isnan(hi) or math.isinf(hi) else hi,  # None: unbounded (or undefined)
        "z": json_float(calibration_z(y, p)),
        "ece": json_float(ece(y, p)),
        "auc": json_float(auc(y, p)),
    }


def row_days(split_dir: Path, timestamp: str, rows: int) -> np.ndarray:
    """The UTC day ('YYYY-MM-DD') of each row of the split, in file order (the order `score_split` keeps)."""
    ts = [pq.read_table(f, columns=[timestamp])[timestamp].to_numpy() for f in split_files(split_dir)]
    ms = np.concatenate(ts).astype(np.int64) if ts else np.zeros(0, dtype=np.int64)
    if ms.size != rows:
        raise ValueError(f"{split_dir}: {ms.size} timestamps for {rows} scored rows")
    return np.datetime_as_string((ms // DAY_MS).astype("datetime64[D]"))


def _reference(metrics: dict[str, Any] | None, surface: str, view: str | None, task: str) -> dict[str, Any]:
    """The run's own evaluation block of the key (from its manifest), or {}."""
    surf = (metrics or {}).get("surfaces", {}).get(surface, {})
    block = surf.get(task) if view is None else surf.get("view_types", {}).get(view, {}).get(task)
    return block or {}


def _drift(stats: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """The key's AUC and ratio at training and their change since."""
    out: dict[str, Any] = {"ref_auc": ref.get("auc"), "ref_ratio": ref.get("calibration_ratio")}
    for name, now, then in (("auc", stats["auc"], out["ref_auc"]), ("ratio", stats["ratio"], out["ref_ratio"])):
        out[f"delta_{name}"] = None if now is None or then is None else now - then
    return out


def monitor_scored(
    scored: Scored,
    schema: Schema,
    days: np.ndarray | None,
    reference: dict[str, Any] | None,
    z_threshold: float = DEFAULT_Z,
) -> dict[str, Any]:
    """The report's keys and verdict for scored rows (`days`: each row's day, or None for one period)."""
    if not z_threshold > 0:
        raise ValueError(f"z_threshold must be > 0, got {z_threshold}")
    periods = [(None, np.ones(len(scored.labels), dtype=bool))]
    if days is not None:
        periods = [(d, days == d) for d in np.unique(days).tolist()]
    keys: list[dict[str, Any]] = []
    for si, sname in enumerate(schema.surfaces):
        views = [(None, scored.surface == si)]
        views += [(v, scored.view_key == ki) for ki, (s, v) in enumerate(schema.view_keys) if s == sname]
        for ti, tname in enumerate(schema.tasks):
            if not schema.task_mask[si][ti]:
                continue
            for view, in_view in views:
                ref = _reference(reference, sname, view, tname)
                for day, in_day in periods:
                    rows = in_view & in_day & scored.label_mask[:, ti]
                    if not rows.any():
                        continue
                    stats = key_stats(scored.labels[rows, ti], scored.probs[rows, ti])
                    tested = stats["variance"] >= MIN_VARIANCE and stats["z"] is not None
                    flagged = tested and abs(stats["z"]) > z_threshold
                    keys.append({"surface": sname, "view_type": view, "task": tname, "day": day, **stats,
                                 **_drift(stats, ref), "tested": tested, "flagged": flagged})
    tested = sum(k["tested"] for k in keys)
    return {
        "z_threshold": z_threshold,
        "level": LEVEL,
        "min_variance": MIN_VARIANCE,
        "keys_tested": tested,
        "false_alarm_rate": false_alarm_rate(z_threshold, tested),
        "flagged": [key_name(k) for k in keys if k["flagged"]],
        "keys": keys,
    }


def key_name(k: dict[str, Any]) -> str:
    """'surface/view_type/task' (view type '*' for the whole surface), '@day' when per day."""
    name = f"{k['surface']}/{k['view_type'] or '*'}/{k['task']}"
    return name if k["day"] is None else f"{name}@{k['day']}"


def monitor_run(
    run: str | Path,
    data: str | Path,
    split: str = "eval",
    by: str = "none",
    z_threshold: float = DEFAULT_Z,
    threads: int | None = None,
) -> dict[str, Any]:
    """The monitoring report of `run` on `data/<split>` (or the split directory `data`)."""
    if by not in BY:
        raise ValueError(f"--by must be one of {BY}, got {by!r}")
    run, data = Path(run), Path(data)
    split_dir = data / split if (data / split).is_dir() else data
    model, manifest = load_model(run)
    setup_cpu_scoring(model.cfg.train, threads)
    scored = score_split(model, split_dir)
    days = row_days(split_dir, model.cfg.data.timestamp, len(scored.labels)) if by == "day" else None
    reference = manifest.get("metrics")
    report = monitor_scored(scored, model.schema, days, reference, z_threshold)
    return {"run": str(run.resolve()), "data": str(split_dir.resolve()), "by": by,
            "reference": "run manifest metrics" if reference else None, **report}


def write_report(report: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write report.json, report.md and ratio.png (the ratio per surface over the days) into `out`."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md", "plot": out / "ratio.png"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["md"].write_text(report_markdown(report))
    ratio_plot(report, paths["plot"])
    return paths


def fmt(v: float | None, spec: str = ".3f") -> str:
    """`v` formatted with `spec`, '-' when undefined."""
    return "-" if v is None else format(v, spec)


def ratio_text(k: dict[str, Any]) -> str:
    """'ratio [lo, hi]' of a key ('∞': unbounded above)."""
    return f"{fmt(k['ratio'])} [{fmt(k['ratio_lo'])}, {'∞' if k['ratio_hi'] is None else fmt(k['ratio_hi'])}]"


def report_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: the verdict, then one table row per key (flagged rows marked)."""
    flagged = report["flagged"]
    verdict = (f"**{len(flagged)} key(s) miscalibrated beyond noise** (|z| > {report['z_threshold']:g}): "
               + ", ".join(f"`{k}`" for k in flagged)) if flagged else (
        f"No key miscalibrated beyond noise (|z| ≤ {report['z_threshold']:g} on all).")
    lines = [
        "# Calibration monitor", "",
        f"Run `{report['run']}` on `{report['data']}`" + (", per day" if report["by"] == "day" else "") + ".", "",
        verdict, "",
        f"{report['keys_tested']} keys tested; a perfectly calibrated model would raise an alarm on some key "
        f"with probability {report['false_alarm_rate']:.2%}. Keys with Σp(1−p) < {report['min_variance']:g} "
        "are shown but not tested (`-` in *tested*). Ratio = mean predicted / mean observed with its "
        f"{report['level']:.0%} interval (∞: unbounded); drift = now − at training (the run's manifest).", "",
        "| surface | view | task | day | rows | positives | ratio [interval] | z | ECE | AUC | ΔAUC | Δratio "
        "| tested | flag |",
        "| --- | --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for k in report["keys"]:
        lines.append(
            f"| {k['surface']} | {k['view_type'] or '(all)'} | {k['task']} | {k['day'] or '(all)'} | {k['rows']:,} "
            f"| {k['positives']:,} | {ratio_text(k)} | {fmt(k['z'], '+.2f')} | {fmt(k['ece'], '.4f')} "
            f"| {fmt(k['auc'], '.4f')} | {fmt(k['delta_auc'], '+.4f')} | {fmt(k['delta_ratio'], '+.3f')} "
            f"| {'yes' if k['tested'] else '-'} | {'**FLAG**' if k['flagged'] else ''} |"
        )
    return "\n".join(lines) + "\n"


RATIO_CAP = 10.0  # an unbounded (or larger) upper end is drawn at this ratio


def ratio_plot(report: dict[str, Any], path: str | Path) -> Path:
    """One panel per task: each surface's ratio (whole surface) per day with its interval, on a log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    whole = [k for k in report["keys"] if k["view_type"] is None and k["ratio"] is not None]
    tasks = list(dict.fromkeys(k["task"] for k in report["keys"]))
    days = sorted({k["day"] or "(all)" for k in whole})
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(4.5 * max(len(tasks), 1), 3.8), squeeze=False)
    surfaces = list(dict.fromkeys(k["surface"] for k in whole))  # one colour per surface in every panel
    for ax, task in zip(axes[0], tasks, strict=False):
        for i, surface in enumerate(surfaces):
            pts = [k for k in whole if k["task"] == task and k["surface"] == surface]
            if not pts:
                continue
            x = np.array([days.index(k["day"] or "(all)") for k in pts]) + (i - len(surfaces) / 2) * 0.06
            r = np.array([k["ratio"] for k in pts])
            lo = np.array([k["ratio_lo"] for k in pts])
            hi = np.array([min(k["ratio_hi"] or RATIO_CAP, RATIO_CAP) for k in pts])
            flagged = np.array([k["flagged"] for k in pts])
            ax.errorbar(x, r, yerr=[r - lo, hi - r], marker="o", capsize=3, label=surface, color=f"C{i}")
            ax.scatter(x[flagged], r[flagged], s=120, facecolors="none", edgecolors=f"C{i}")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(FixedLocator([0.25, 0.5, 0.8, 1.0, 1.25, 2.0, 4.0, 8.0]))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(range(len(days)), days, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{task}: mean predicted / observed")
        ax.legend(fontsize=8)
    fig.suptitle(f"calibration ratio, {report['level']:.0%} interval (circled: |z| > {report['z_threshold']:g})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
