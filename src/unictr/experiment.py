"""Unified versus separate (versus shared, versus LightGBM): does one model for every surface win?

Every arm trains on `DATA/train` under the same config (architecture, epochs, learning rate, seed)
and is scored on `DATA/eval` with the metric functions `unictr eval` uses:

* `unified`: the config as given (shared trunk, one tower per surface);
* `separate`: one model per surface with the same architecture, its config pruned to that surface
  and trained on that surface's rows only. Each takes as many optimizer steps as the unified model
  (its batch is the config's batch scaled by the surface's row share, so a small surface is not left
  with a handful of updates); epochs, LR and schedule are the config's;
* `shared`: the unified model with one tower for every surface (`model.tower.per_surface=false`);
* `lightgbm`: gradient-boosted trees (optional `lightgbm` package) on the same columns, hashed the way
  the model sees them (every categorical id as a LightGBM categorical, surface and view type
  included), the dense columns, and per-request sequence counts (length, events per action type),
  since trees cannot read the sequence lists; one booster per task on the rows where it applies.

`run_experiment` writes `report.json` (contract in issue 3), `report.md` and `auc.png`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from rich.console import Console

from unictr.config import Config, config_from_dict, with_changes
from unictr.data.batch import Batch, Schema
from unictr.data.reader import load_split, split_files
from unictr.metrics import auc, bootstrap_auc_diff
from unictr.train.evaluate import predict, sliced_metrics

DEFAULT_ARMS = ("unified", "separate", "shared", "lightgbm")  # the unify experiment; the rest are ablations

# LightGBM settings, chosen on the validation split (train 04-25..28, validate 04-29; docs/results.md):
# strong smoothing of the many sparse categorical columns mattered most.
LIGHTGBM_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.03,
    "num_leaves": 31,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "max_cat_threshold": 16,
    "cat_smooth": 50.0,
    "cat_l2": 30.0,
    "min_data_per_group": 200,
    "max_cat_to_onehot": 8,
    "verbose": -1,
}
LIGHTGBM_ROUNDS = 150


class ArmSkipped(RuntimeError):
    """An arm cannot run here (e.g. its optional package is missing); the message says why."""


@dataclass
class ArmRun:
    """One arm trained once: predictions on every eval row `[N, T]`, cost, and per-model details."""

    probs: np.ndarray
    train_seconds: float
    params: int
    models: dict[str, dict[str, Any]] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ configs


def surface_config(cfg: Config, surface: str) -> Config:
    """`cfg` pruned to one surface: its tasks (applying everywhere), its tower features, nothing else."""
    raw = cfg.model_dump(mode="json")
    raw["surfaces"] = [s for s in raw["surfaces"] if s["name"] == surface]
    if not raw["surfaces"]:
        raise ValueError(f"surface {surface!r} is not in the config ({cfg.surface_names})")
    raw["tasks"] = [t | {"surfaces": None} for t in raw["tasks"] if t["surfaces"] is None or surface in t["surfaces"]]
    raw["features"] = [
        f | {"towers": [surface] if f["towers"] else []}
        for f in raw["features"]
        if not f["towers"] or surface in f["towers"]
    ]
    return config_from_dict(raw, f"<config pruned to {surface}>")


# ------------------------------------------------------------------------------------------ neural arms


def _train_and_predict(
    cfg: Config, data_dir: Path, run_dir: Path, eval_split: Path, console: Console, show_progress: bool
) -> tuple[np.ndarray, float, int, dict[str, Any]]:
    """Train one model, reload its checkpoint, predict `eval_split` (in file row order)."""
    from unictr.checkpoint import load_model
    from unictr.train.loop import train

    manifest = train(cfg, data_dir, run_dir, console=console, show_progress=show_progress)
    model, _ = load_model(run_dir)
    b = load_split(eval_split, model.schema, cfg.data)
    probs = predict(model, b)
    seconds = float(sum(h["train_seconds"] for h in manifest["history"]))
    params = sum(p.numel() for p in model.parameters())
    return probs, seconds, params, {"history": manifest["history"]}


def train_unified(cfg: Config, data: Path, work: Path, eval_b: Batch, console: Console, show_progress: bool) -> ArmRun:
    """The config as given (unified, or shared when the config says so), one model on every row."""
    probs, secs, params, info = _train_and_predict(cfg, data, work, data / "eval", console, show_progress)
    return ArmRun(probs, secs, params, {"all": info | {"train_rows": _rows(data / "train")}})


def train_separate(cfg: Config, data: Path, work: Path, eval_b: Batch, console: Console, show_progress: bool) -> ArmRun:
    """One model per surface on that surface's rows; predictions assembled into the full eval order."""
    schema = Schema.from_config(cfg)
    total = _rows(data / "train")
    probs = np.full((eval_b.num_rows, len(schema.tasks)), np.nan, dtype=np.float32)
    eval_surface = eval_b.surface.numpy()
    seconds, params, models = 0.0, 0, {}
    for si, surface in enumerate(schema.surfaces):
        sub = work / "data" / surface
        rows = {
            split: _write_surface_split(data / split, sub / split, cfg.data.surface, surface)
            for split in ("train", "eval")
        }
        if rows["train"] == 0:
            raise ValueError(f"separate arm: surface {surface!r} has no rows in {data / 'train'}")
        batch = max(1, round(cfg.train.batch_size * rows["train"] / total))
        cfg_s = with_changes(surface_config(cfg, surface), "train", batch_size=batch)
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


def _write_surface_split(src: Path, dst: Path, column: str, surface: str) -> int:
    """Copy the rows of one surface of a split (row order kept); returns the row count."""
    table = pq.read_table(split_files(src))
    table = table.filter(pc.equal(table[column], surface))
    dst.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, dst / "part-00000.parquet")
    return table.num_rows


def _rows(split: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in split_files(split))


# ------------------------------------------------------------------------------------------ LightGBM


def lightgbm_matrix(b: Batch, num_actions: int) -> tuple[np.ndarray, list[int]]:
    """Per-row feature matrix for trees and the indices of its categorical columns.

    Categorical: every user and candidate id column (hashed, as the model sees it), surface, view key.
    Numeric: the dense columns, the sequence length and its count of each of the `num_actions` types.
    """
    ui = b.user_index
    mask = b.seq_mask
    counts = [mask.sum(1)] + [((b.seq_action == a) & mask).sum(1) for a in range(num_actions)]
    cat = torch.cat([b.user_cat[ui], b.cand_cat, b.surface[:, None], b.view_key[:, None]], 1)
    num = torch.cat([b.user_dense[ui], b.cand_dense, torch.stack(counts, 1)[ui].float()], 1)
    return np.concatenate([cat.numpy().astype(np.float64), num.numpy().astype(np.float64)], 1), list(
        range(cat.shape[1])
    )


def train_lightgbm(cfg: Config, data: Path, work: Path, eval_b: Batch, console: Console, show_progress: bool) -> ArmRun:
    """One LightGBM booster per task on the rows where the task applies."""
    try:
        import lightgbm as lgb
    except ImportError as e:
        raise ArmSkipped(
            f"lightgbm arm skipped: the optional package is not installed ({e}); pip install 'unictr[lightgbm]'"
        ) from None
    schema = Schema.from_config(cfg)
    num_actions = cfg.sequence.num_actions if cfg.sequence is not None else 0
    train_b = load_split(data / "train", schema, cfg.data)
    x_tr, cat_cols = lightgbm_matrix(train_b, num_actions)
    x_ev, _ = lightgbm_matrix(eval_b, num_actions)
    params = LIGHTGBM_PARAMS | {"seed": cfg.train.seed, "num_threads": cfg.train.threads}
    probs = np.full((eval_b.num_rows, len(schema.tasks)), np.nan, dtype=np.float32)
    t0, nodes, models = time.perf_counter(), 0, {}
    for ti, task in enumerate(schema.tasks):
        rows = train_b.label_mask[:, ti].numpy()
        ds = lgb.Dataset(x_tr[rows], train_b.labels[rows, ti].numpy(), categorical_feature=cat_cols)
        booster = lgb.train(params, ds, num_boost_round=LIGHTGBM_ROUNDS)
        probs[:, ti] = booster.predict(x_ev)
        trees = booster.num_trees()
        leaves = sum(t["num_leaves"] for t in booster.dump_model()["tree_info"])
        nodes += 2 * leaves - trees  # leaf values + split thresholds
        models[task] = {"train_rows": int(rows.sum()), "trees": trees, "leaves": leaves}
    return ArmRun(probs, time.perf_counter() - t0, nodes, models)


# Each arm: how it trains, and the config it trains with (the separate arm prunes that per surface).
ARM_PLAN: dict[str, tuple[Callable[..., ArmRun], Callable[[Config], Config]]] = {
    "unified": (train_unified, lambda cfg: cfg),
    "separate": (train_separate, lambda cfg: cfg),
    "shared": (train_unified, lambda cfg: with_changes(cfg, "model.tower", per_surface=False)),
    "lightgbm": (train_lightgbm, lambda cfg: cfg),
    "no_sequence": (train_unified, lambda cfg: with_changes(cfg, "model.sequence", enabled=False)),
    "no_mmoe": (train_unified, lambda cfg: with_changes(cfg, "model.mmoe", enabled=False)),
}
ARMS = tuple(ARM_PLAN)


# ------------------------------------------------------------------------------------------ the run


def run_experiment(
    cfg: Config,
    data: str | Path,
    out: str | Path,
    seeds: tuple[int, ...] = (0,),
    arms: tuple[str, ...] = DEFAULT_ARMS,
    n_boot: int = 1000,
    command: str = "",
    keep_runs: bool = False,
    console: Console | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Train every arm once per seed on `data/train`, score `data/eval`, write the report into `out`.

    Runs (checkpoints, per-surface data subsets) go to `out/runs` with `keep_runs`, else to a temporary
    directory removed at the end. Returns the `report.json` dict.
    """
    console = console or Console()
    data, out = Path(data), Path(out)
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms:
        raise ValueError(f"arms: unknown {bad}, expected some of {list(ARMS)}")
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    schema = Schema.from_config(cfg)
    torch.set_num_threads(cfg.train.threads)
    eval_b = load_split(data / "eval", schema, cfg.data)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "runs" if keep_runs else Path(tempfile.mkdtemp(prefix="runs-", dir=out))
    load_before, started = os.getloadavg(), time.perf_counter()
    runs: dict[str, dict[int, ArmRun]] = {}
    skipped: dict[str, str] = {}
    try:
        for seed in seeds:
            for arm in arms:
                if arm in skipped:
                    continue
                trainer, arm_config = ARM_PLAN[arm]
                arm_cfg = with_changes(arm_config(cfg), "train", seed=seed)
                console.print(f"[bold]{arm}[/bold] seed {seed}")
                try:
                    run = trainer(arm_cfg, data, work / arm / f"seed{seed}", eval_b, console, show_progress)
                except ArmSkipped as e:
                    console.print(f"[yellow]{e}[/yellow]")
                    skipped[arm] = str(e)
                    continue
                runs.setdefault(arm, {})[seed] = run
                console.print(f"{arm} seed {seed}: {run.train_seconds:.0f}s training, {run.params:,} parameters")
    finally:
        if not keep_runs:
            shutil.rmtree(work, ignore_errors=True)
    if not runs:
        raise ValueError("no arm ran: " + "; ".join(skipped.values()))
    report = build_report(schema, eval_b, runs, n_boot)
    report |= {
        "seeds": list(seeds),
        "arms_skipped": skipped,
        "n_boot": n_boot,
        "command": command,
        "data": _data_meta(data),
        "machine": machine_info() | {"loadavg_start": load_before},
        "wall_seconds": time.perf_counter() - started,
        "config": cfg.model_dump(mode="json"),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_report(report, out / "auc.png")
    (out / "report.md").write_text(report_markdown(report))
    return report


def build_report(schema: Schema, eval_b: Batch, runs: dict[str, dict[int, ArmRun]], n_boot: int) -> dict[str, Any]:
    """Metrics per arm (seed mean and per seed) and bootstrap intervals of the AUC differences."""
    arms: dict[str, Any] = {}
    for arm, by_seed in runs.items():
        per_seed = {}
        for seed, run in by_seed.items():
            m = sliced_metrics(schema, eval_b, run.probs)
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
            "per_seed": per_seed,
        }
    report: dict[str, Any] = {"arms": arms}
    for a, b, key, overall in (
        ("unified", "separate", "auc_diff_ci", False),
        ("unified", "lightgbm", "auc_diff_ci_vs_lightgbm", True),
    ):
        if a in runs and b in runs:
            diff, ci = auc_diff(schema, eval_b, runs[a], runs[b], n_boot, overall)
            report[key] = ci
            report[key.replace("_ci", "")] = diff
    return report


def auc_diff(
    schema: Schema,
    eval_b: Batch,
    a: dict[int, ArmRun],
    b: dict[int, ArmRun],
    n_boot: int,
    overall: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Seed-mean AUC(a) - AUC(b) and its 95% bootstrap interval per surface × task (and overall),
    resampling whole requests."""
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
            lo, hi = bootstrap_auc_diff(y, pa[:, rows, ti], pb[:, rows, ti], n_boot=n_boot, groups=groups[rows])
            cis[name][task] = [_finite(lo), _finite(hi)]
            point = np.mean([auc(y, p) for p in pa[:, rows, ti]]) - np.mean([auc(y, p) for p in pb[:, rows, ti]])
            diffs[name][task] = _finite(float(point))
    return diffs, cis


def _finite(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _mean_block(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """Seed mean of each metric (None where a seed has none); `n` is the same for every seed."""
    out: dict[str, Any] = {}
    for key, value in blocks[0].items():
        vals = [b[key] for b in blocks if b.get(key) is not None]
        out[key] = value if key == "n" else (float(np.mean(vals)) if vals else None)
    return out


def _data_meta(data: Path) -> dict[str, Any]:
    meta_file = data / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    keep = ("source", "licence", "eval_from", "eval_until", "rows")
    return (
        {"dir": str(data)}
        | {k: meta[k] for k in keep if k in meta}
        | {"splits": {s: {"rows": _rows(data / s)} for s in ("train", "eval")}}
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


# ------------------------------------------------------------------------------------------ output


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


def report_markdown(report: dict[str, Any]) -> str:
    """The human-readable report: per-arm metrics, AUC differences with intervals, cost, machine."""
    arms = list(report["arms"])
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
    # simulated data carries the true probabilities: their AUC is the ceiling every arm is measured against
    oracle = any(_block(report["arms"][arms[0]], s, t).get("oracle_auc") is not None for s, t in _slices(report))
    cols = arms + ["oracle"] * oracle
    lines += [
        "## AUC (seed mean)",
        "",
        "| surface | task | n | "
        + " | ".join(cols)
        + (" | unified − separate [95% CI] |" if "auc_diff_ci" in report else " |"),
        "| --- | --- | ---: | " + " | ".join("---:" for _ in cols) + (" | ---: |" if "auc_diff_ci" in report else " |"),
    ]
    for s, t in _slices(report):
        first = _block(report["arms"][arms[0]], s, t)
        row = f"| {s} | {t} | {first['n']:,} | " + " | ".join(
            [_f(_block(report["arms"][a], s, t)["auc"]) for a in arms] + [_f(first.get("oracle_auc"))] * oracle
        )
        if "auc_diff_ci" in report:
            d, ci = report["auc_diff"].get(s, {}).get(t), report["auc_diff_ci"].get(s, {}).get(t)
            row += " | " + (f"{_f(d, '+.4f')} [{_f(ci[0], '+.4f')}, {_f(ci[1], '+.4f')}]" if ci else "")
        lines.append(row + " |")
    if "auc_diff_ci_vs_lightgbm" in report:
        lines += [
            "",
            "Unified − LightGBM (overall): "
            + ", ".join(
                f"{t} {_f(report['auc_diff_vs_lightgbm']['overall'][t], '+.4f')} "
                f"[{_f(ci[0], '+.4f')}, {_f(ci[1], '+.4f')}]"
                for t, ci in report["auc_diff_ci_vs_lightgbm"]["overall"].items()
            ),
        ]
    lines += [
        "",
        "## Log loss / NE / calibration ratio (seed mean)",
        "",
        "| surface | task | " + " | ".join(arms) + " |",
        "| --- | --- | " + " | ".join("---" for _ in arms) + " |",
    ]
    for s, t in _slices(report):
        cells = []
        for a in arms:
            b = _block(report["arms"][a], s, t)
            cells.append(f"{_f(b['logloss'])} / {_f(b['ne'], '.3f')} / {_f(b['calibration_ratio'], '.2f')}")
        lines.append(f"| {s} | {t} | " + " | ".join(cells) + " |")
    lines += ["", "## Cost", "", "| arm | train seconds (mean per seed) | parameters |", "| --- | ---: | ---: |"]
    for a in arms:
        lines.append(f"| {a} | {report['arms'][a]['train_seconds']:.0f} | {report['arms'][a]['params']:,} |")
    lines += [
        "",
        "LightGBM parameters: leaf values + split thresholds of all trees. Train seconds: the training "
        "passes only (no evaluation), wall clock on a shared machine.",
        "",
    ]
    if len(report.get("seeds", [])) > 1:
        lines += [
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
        lines.append("")
    lines += ["![AUC per surface](auc.png)", ""]
    return "\n".join(lines)


def _load(v: Any) -> str:
    return "-" if not v else " / ".join(f"{x:.2f}" for x in v)
