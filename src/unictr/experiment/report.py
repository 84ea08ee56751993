"""The experiment's report: metrics per arm, bootstrap intervals of the AUC differences, the data and
machine it ran on, and its markdown and plot renderings."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unictr.data.batch import Batch, Schema
from unictr.data.canonical import SPLITS
from unictr.experiment.arms import ArmRun, split_rows
from unictr.metrics import auc, bootstrap_auc_diff, json_float
from unictr.train.evaluate import Scored, sliced_metrics

# ------------------------------------------------------------------------------------------ numbers

COUNTS = ("n", "positives")  # per slice, the same for every seed and arm
BASELINES = {"lightgbm": "LightGBM", "din": "DIN"}  # arms the unified model is compared with overall


def build_report(schema: Schema, eval_b: Batch, runs: dict[str, dict[int, ArmRun]], n_boot: int) -> dict[str, Any]:
    """Metrics per arm (seed mean and per seed) and bootstrap intervals of the AUC differences."""
    arms: dict[str, Any] = {}
    for arm, by_seed in runs.items():
        per_seed = {}
        for seed, run in by_seed.items():
            m = sliced_metrics(schema, Scored.of(eval_b, run.probs))
            per_seed[str(seed)] = {
                "surfaces": {
                    s: {t: v for t, v in tasks.items() if t != "view_types"} for s, tasks in m["surfaces"].items()
                },
                "overall": m["overall"],
                "train_seconds": run.train_seconds,
                "params": run.params,
                "models": run.models,
            }
        seeds = list(per_seed.values())
        arms[arm] = {
            "surfaces": {
                s: {t: _mean_block([p["surfaces"][s][t] for p in seeds]) for t in tasks}
                for s, tasks in seeds[0]["surfaces"].items()
            },
            "overall": {t: _mean_block([p["overall"][t] for p in seeds]) for t in seeds[0]["overall"]},
            "train_seconds": float(np.mean([p["train_seconds"] for p in seeds])),
            "params": seeds[0]["params"],
            "auc_ci": auc_intervals(schema, eval_b, by_seed, n_boot),
            "per_seed": per_seed,
        }
    report: dict[str, Any] = {"arms": arms}
    for a, b, key, overall in (
        ("unified", "separate", "auc_diff_ci", False),
        *(("unified", base, f"auc_diff_ci_vs_{base}", True) for base in BASELINES),
    ):
        if a in runs and b in runs:
            diff, ci = auc_diff(schema, eval_b, runs[a], runs[b], n_boot, overall)
            report[key] = ci
            report[key.replace("_ci", "")] = diff
            if seed_noise(runs[a], runs[b]):
                report[f"{key}_seeds"] = auc_diff(schema, eval_b, runs[a], runs[b], n_boot, overall, True)[1]
    return report


def seed_noise(a: dict[int, ArmRun], b: dict[int, ArmRun]) -> bool:
    """Whether resampling the arms' seeds can move an interval: both arms trained on 2 or more seeds."""
    return min(len(a), len(b)) >= 2


def auc_diff(
    schema: Schema,
    eval_b: Batch,
    a: dict[int, ArmRun],
    b: dict[int, ArmRun],
    n_boot: int,
    overall: bool = False,
    resample_seeds: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Seed-mean AUC(a) - AUC(b) and its 95% bootstrap interval per surface × task (and overall),
    resampling whole requests (and, with `resample_seeds`, each arm's seeds too)."""
    labels, applies = eval_b.labels.numpy(), eval_b.label_mask.numpy()
    surface, groups = eval_b.surface.numpy(), eval_b.user_index.numpy()
    pa = np.stack([r.probs for r in a.values()])
    pb = np.stack([r.probs for r in b.values()])
    slices = [(s, surface == si, schema.task_mask[si]) for si, s in enumerate(schema.surfaces)]
    if overall:
        slices.append(("overall", np.ones(len(surface), bool), (True,) * len(schema.tasks)))
    diffs: dict[str, Any] = {}
    cis: dict[str, Any] = {}
    for name, on, mask in slices:
        diffs[name], cis[name] = {}, {}
        for ti, task in enumerate(schema.tasks):
            if not mask[ti]:
                continue
            rows = on & applies[:, ti]
            y = labels[rows, ti]
            lo, hi = bootstrap_auc_diff(y, pa[:, rows, ti], pb[:, rows, ti], n_boot=n_boot, groups=groups[rows],
                                        resample_seeds=resample_seeds)
            cis[name][task] = [json_float(lo), json_float(hi)]
            point = np.mean([auc(y, p) for p in pa[:, rows, ti]]) - np.mean([auc(y, p) for p in pb[:, rows, ti]])
            diffs[name][task] = json_float(float(point))
    return diffs, cis


def auc_intervals(schema: Schema, eval_b: Batch, runs: dict[int, ArmRun], n_boot: int) -> dict[str, Any]:
    """95% bootstrap interval of one arm's seed-mean AUC per surface × task and overall (whole requests
    resampled): that of AUC(arm) − AUC(a constant score), which is exactly ½ in every resample."""
    first = next(iter(runs.values()))
    constant = {0: ArmRun(np.zeros_like(first.probs), 0.0, 0)}
    _, cis = auc_diff(schema, eval_b, runs, constant, n_boot, overall=True)
    return {
        s: {t: [None if v is None else v + 0.5 for v in ci] for t, ci in tasks.items()} for s, tasks in cis.items()
    }


def _mean_block(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """Seed mean of each metric (None where a seed has none); `n` and `positives` are the same for every seed."""
    out: dict[str, Any] = {}
    for key, value in blocks[0].items():
        vals = [b[key] for b in blocks if b.get(key) is not None]
        out[key] = value if key in COUNTS else (float(np.mean(vals)) if vals else None)
    return out


def data_meta(data: Path) -> dict[str, Any]:
    """Where the data came from (its `meta.json` keys that matter) and the rows of each split."""
    meta_file = data / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    keep = ("source", "licence", "calib_from", "calib_fraction", "eval_from", "eval_until", "rows")
    return (
        {"dir": str(data)}
        | {k: meta[k] for k in keep if k in meta}
        | {"splits": {s: {"rows": split_rows(data / s)} for s in SPLITS if s != "calib" or (data / s).is_dir()}}
    )


def machine_info() -> dict[str, Any]:
    """What the timings were measured on: cores, CPU model, load, library versions."""
    cpuinfo = Path("/proc/cpuinfo")
    names = (
        [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        if cpuinfo.is_file()
        else []
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": names[0] if names else platform.processor(),
        "loadavg_end": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# ------------------------------------------------------------------------------------------ renderings


def _slices(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(surface or 'overall', task) in table order, from the first arm."""
    first = next(iter(report["arms"].values()))
    rows = [(s, t) for s, tasks in first["surfaces"].items() for t in tasks]
    return [("overall", t) for t in first["overall"]] + rows


def _block(arm: dict[str, Any], surface: str, task: str) -> dict[str, Any]:
    return arm["overall"][task] if surface == "overall" else arm["surfaces"][surface][task]


def plot_report(report: dict[str, Any], path: Path) -> None:
    """One panel per task: AUC per surface (and overall), one bar per arm; whiskers span the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(report["arms"])
    tasks = list(next(iter(report["arms"].values()))["overall"])
    fig, axes = plt.subplots(len(tasks), 1, figsize=(10, 3.2 * len(tasks)), squeeze=False)
    for ax, task in zip(axes[:, 0], tasks, strict=True):
        names = [s for s, t in _slices(report) if t == task]
        x = np.arange(len(names))
        width = 0.8 / len(arms)
        for i, arm in enumerate(arms):
            a = report["arms"][arm]
            mean = [_block(a, s, task)["auc"] or np.nan for s in names]
            seeds = [[_block(p, s, task)["auc"] or np.nan for s in names] for p in a["per_seed"].values()]
            lo, hi = np.min(seeds, 0), np.max(seeds, 0)  # nan where a seed has no AUC: no whisker
            ax.bar(
                x + (i - (len(arms) - 1) / 2) * width,
                mean,
                width,
                label=arm,
                yerr=[np.array(mean) - lo, hi - np.array(mean)],
                capsize=2,
            )
        finite = [v for arm in arms for s in names if (v := _block(report["arms"][arm], s, task)["auc"])]
        ax.set_ylim(max(0.4, min(finite, default=0.5) - 0.05), min(1.0, max(finite, default=1.0) + 0.03))
        ax.set_xticks(x, names)
        ax.set_ylabel(f"{task} AUC")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(ncol=len(arms), fontsize=8)
    axes[0, 0].set_title(f"eval AUC per surface (mean of seeds {report.get('seeds')}; whiskers: min..max)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _f(v: Any, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def _load(v: Any) -> str:
    return "-" if not v else " / ".join(f"{x:.2f}" for x in v)


def report_markdown(report: dict[str, Any]) -> str:
    """The human-readable report: per-arm metrics, AUC differences with intervals, cost, machine."""
    arms = list(report["arms"])
    lines = (
        _md_header(report, arms) + _md_auc(report, arms) + _md_auc_ci(report, arms) + _md_quality(report, arms)
        + _md_cost(report, arms) + _md_per_seed(report, arms) + _md_din(report)
    )
    return "\n".join([*lines, "![AUC per surface](auc.png)", ""])


def _md_header(report: dict[str, Any], arms: list[str]) -> list[str]:
    """Title, command, data, machine and the arms that were skipped."""
    m = report.get("machine", {})
    lines = [
        "# Experiment: " + " vs ".join(arms),
        "",
        f"Command: `{report.get('command', '')}`",
        "",
        f"Data: `{report.get('data', {}).get('dir')}` (eval_from {report.get('data', {}).get('eval_from')}; "
        + ", ".join(f"{k} {v['rows']:,} rows" for k, v in report.get("data", {}).get("splits", {}).items())
        + f"). Seeds {report.get('seeds')}; bootstrap {report.get('n_boot')} resamples of whole requests.",
        "",
        f"Machine: {m.get('nproc')} cores, {m.get('cpu')}, torch {m.get('torch')} ({m.get('torch_threads')} threads);"
        f" load average at start {_load(m.get('loadavg_start'))}, at end {_load(m.get('loadavg_end'))}.",
        "",
    ]
    for arm, why in report.get("arms_skipped", {}).items():
        lines += [f"**{arm} skipped**: {why}", ""]
    return lines


def _md_auc(report: dict[str, Any], arms: list[str]) -> list[str]:
    """The AUC table (with the oracle on simulated data and unified − separate intervals) and vs LightGBM."""
    # simulated data carries the true probabilities: their AUC is the ceiling every arm is measured against
    oracle = any(_block(report["arms"][arms[0]], s, t).get("oracle_auc") is not None for s, t in _slices(report))
    cis = [k for k in CI_TITLES if "auc_diff_ci" + k in report]
    cols = arms + ["oracle"] * oracle + [f"unified − separate [{CI_TITLES[k]}]" for k in cis]
    lines = [
        "## AUC (seed mean)",
        "",
        "| surface | task | n | positives | " + " | ".join(cols) + " |",
        "| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in cols) + " |",
    ]
    for s, t in _slices(report):
        first = _block(report["arms"][arms[0]], s, t)
        cells = [_f(_block(report["arms"][a], s, t)["auc"]) for a in arms] + [_f(first.get("oracle_auc"))] * oracle
        d = report.get("auc_diff", {}).get(s, {}).get(t)
        cells += [diff_ci(d, report["auc_diff_ci" + k].get(s, {}).get(t)) for k in cis]
        lines.append(f"| {s} | {t} | {first['n']:,} | {_f(first.get('positives'), ',')} | " + " | ".join(cells) + " |")
    for base, name in BASELINES.items():
        key = f"auc_diff_ci_vs_{base}"
        if key not in report:
            continue
        seeds = report.get(f"{key}_seeds", {}).get("overall", {})
        parts = [
            f"{t} {diff_ci(report[f'auc_diff_vs_{base}']['overall'][t], ci)}"
            + (f" (seeds too: {interval(seeds[t])})" if t in seeds else "")
            for t, ci in report[key]["overall"].items()
        ]
        lines += ["", f"Unified − {name} (overall): " + ", ".join(parts)]
    return lines


# The two intervals of an AUC difference, by the suffix of their keys: eval requests resampled, and
# requests and each arm's training seeds resampled (bootstrap_auc_diff's resample_seeds).
CI_TITLES = {"": "95% CI", "_seeds": "95% CI, seeds too"}


def interval(ci: Any) -> str:
    """`[-0.0003, +0.0027]`."""
    return f"[{_f(ci[0], '+.4f')}, {_f(ci[1], '+.4f')}]"


def diff_ci(d: Any, ci: Any) -> str:
    """`+0.0012 [-0.0003, +0.0027]`: an AUC difference and its interval ("" where there is none)."""
    return "" if d is None or ci is None else f"{_f(d, '+.4f')} {interval(ci)}"


def _slice_table(
    report: dict[str, Any], arms: list[str], title: str, align: str, cell: Callable[[str, str, str], str]
) -> list[str]:
    """A markdown table with a row per (surface, task) slice and a column per arm, `cell(arm, surface, task)`."""
    lines = [
        "",
        f"## {title}",
        "",
        "| surface | task | " + " | ".join(arms) + " |",
        "| --- | --- | " + " | ".join(align for _ in arms) + " |",
    ]
    for s, t in _slices(report):
        lines.append(f"| {s} | {t} | " + " | ".join(cell(a, s, t) for a in arms) + " |")
    return lines


def _md_auc_ci(report: dict[str, Any], arms: list[str]) -> list[str]:
    """Each arm's AUC with its 95% bootstrap interval (when the report has them)."""
    if any("auc_ci" not in report["arms"][a] for a in arms):
        return []

    def cell(a: str, s: str, t: str) -> str:
        ci = report["arms"][a]["auc_ci"].get(s, {}).get(t)
        return _f(_block(report["arms"][a], s, t)["auc"]) + (f" [{_f(ci[0])}, {_f(ci[1])}]" if ci else "")

    return _slice_table(report, arms, "AUC with 95% bootstrap intervals (seed mean; whole requests resampled)",
                        "---:", cell)


def _md_quality(report: dict[str, Any], arms: list[str]) -> list[str]:
    """Log loss / NE / calibration ratio per slice and arm."""

    def cell(a: str, s: str, t: str) -> str:
        b = _block(report["arms"][a], s, t)
        return f"{_f(b['logloss'])} / {_f(b['ne'], '.3f')} / {_f(b['calibration_ratio'], '.2f')}"

    return _slice_table(report, arms, "Log loss / NE / calibration ratio (seed mean)", "---", cell)


def _md_cost(report: dict[str, Any], arms: list[str]) -> list[str]:
    """Training seconds and parameters per arm."""
    lines = ["", "## Cost", "", "| arm | train seconds (mean per seed) | parameters |", "| --- | ---: | ---: |"]
    for a in arms:
        lines.append(f"| {a} | {report['arms'][a]['train_seconds']:.0f} | {report['arms'][a]['params']:,} |")
    return lines + [
        "",
        "LightGBM parameters: leaf values + split thresholds of all trees. DIN: the sum over its one model per "
        "task. Train seconds: the training passes only (no evaluation), wall clock on a shared machine.",
        "",
    ]


def _md_per_seed(report: dict[str, Any], arms: list[str]) -> list[str]:
    """With several seeds: each arm's overall AUC of the first task per seed (nothing otherwise)."""
    if len(report.get("seeds", [])) <= 1:
        return []
    lines = [
        "## Per seed (click-like first task, overall AUC)",
        "",
        "| arm | " + " | ".join(f"seed {s}" for s in report["seeds"]) + " |",
        "| --- | " + " | ".join("---:" for _ in report["seeds"]) + " |",
    ]
    first_task = _slices(report)[0][1]
    for a in arms:
        per = report["arms"][a]["per_seed"]
        lines.append(
            f"| {a} | "
            + " | ".join(
                _f(per[str(s)]["overall"][first_task]["auc"]) if str(s) in per else "-" for s in report["seeds"]
            )
            + " |"
        )
    return lines + [""]


def _md_din(report: dict[str, Any]) -> list[str]:
    """With a `din` arm: its validation rule and, per seed and task, the best epoch, validation AUC, seconds."""
    din = report["arms"].get("din")
    if din is None:
        return []
    per_seed = din["per_seed"]
    first = next(iter(per_seed.values()))["models"]
    tasks = [t for t in first if t != "validation"]
    lines = [
        "## DIN: early stopping on a validation set carved from the training window",
        "",
        f"Validation: {first['validation']['rule']} ({first['validation']['val_rows']:,} rows; "
        f"{first['validation']['train_rows']:,} rows train). Cells: best epoch / epochs run, "
        "validation AUC at the best epoch, training seconds.",
        "",
        "| seed | " + " | ".join(tasks) + " |",
        "| --- | " + " | ".join("---" for _ in tasks) + " |",
    ]
    for seed, run in per_seed.items():
        m = run["models"]
        lines.append(f"| {seed} | " + " | ".join(
            f"{m[t]['best_epoch']} / {m[t]['epochs_run']}, {_f(m[t]['val_auc'])}, {m[t]['train_seconds']:.0f}s"
            for t in tasks) + " |")
    return lines + [""]
