"""`unictr data …`, `train`, `eval`, `quickstart` and `calibrate`: making data, training, evaluating a run."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from unictr.cli.common import (
    DEFAULT_CONFIG,
    app,
    console,
    data_app,
    fail,
    overrides,
    print_table,
    set_option,
    threads_option,
    write_json,
)
from unictr.config import load_config


@data_app.command("simulate")
def data_simulate(
    rows: int = typer.Option(300_000, help="Impressions to simulate."),
    seed: int = typer.Option(0, help="Random seed (same seed, same bytes)."),
    out: Path = typer.Option(..., help="Output data directory (train/, eval/, meta.json)."),
    drift_surface: str | None = typer.Option(None, help="Make this surface's click rate drift day by day."),
    drift_per_day: float = typer.Option(0.15, help="With --drift-surface: click logit added per day (0.15: "
                                        "odds x1.16 a day)."),
    calib_fraction: float = typer.Option(
        0.0, help="Also write calib/: this fraction of requests, in time order between train and eval "
        "(what `unictr calibrate` fits on)."),
) -> None:
    """Write the built-in simulated world (known true probabilities) as canonical Parquet."""
    from unictr.data.simulate import simulate
    from unictr.data.simulate.impressions import Drift

    t0 = time.perf_counter()
    drift = None if drift_surface is None else Drift(drift_surface, drift_per_day)
    meta = simulate(rows=rows, seed=seed, out=out, drift=drift, calib_fraction=calib_fraction)
    splits = ", ".join(f"{s} {v['rows']:,}" for s, v in meta["splits"].items())
    console.print(f"wrote {meta.get('rows', rows):,} rows to {out} ({splits}) in {time.perf_counter() - t0:.1f}s")


@data_app.command("kuairand", context_settings={"allow_extra_args": True})
def data_kuairand(
    ctx: typer.Context,
    logs: list[Path] = typer.Option(..., help="KuaiRand-Pure log CSV(s); `--logs A.csv B.csv` or repeat --logs."),
    users: Path = typer.Option(..., help="user_features_pure.csv."),
    videos: Path = typer.Option(..., help="video_features_basic_pure.csv."),
    history: Path | None = typer.Option(None, help="Pre-window history Parquet (optional)."),
    eval_from: str = typer.Option(..., help="First eval day, YYYY-MM-DD (earlier log days are train)."),
    calib_from: str | None = typer.Option(
        None, help="First calib day, YYYY-MM-DD: days from it until --eval-from go to calib/ "
        "(for `unictr calibrate`)."),
    eval_until: str | None = typer.Option(None, help="First day left out entirely (e.g. a validation split)."),
    max_seq_len: int = typer.Option(64, help="Newest sequence events kept per request."),
    engaged_only: bool = typer.Option(
        False, "--engaged-only", help="Sequences hold only engaged impressions (default: every earlier impression)."
    ),
    out: Path = typer.Option(..., help="Output data directory (train/, eval/, meta.json)."),
) -> None:
    """Convert the official KuaiRand-Pure files into canonical Parquet (train before --eval-from, or before
    --calib-from with calib/ until --eval-from; eval after)."""
    from unictr.data.kuairand import convert_kuairand

    extra = [a for a in ctx.args if a.startswith("-")]
    if extra:
        fail(f"unknown option(s) {extra}")
    t0 = time.perf_counter()
    meta = convert_kuairand(
        [*logs, *map(Path, ctx.args)], users, videos, history, eval_from, out,
        max_seq_len=max_seq_len, eval_until=eval_until, engaged_only=engaged_only, calib_from=calib_from,
    )
    splits = ", ".join(f"{s} {v['rows']:,} rows" for s, v in meta["splits"].items())
    console.print(f"wrote {out}: {splits} ({meta['duplicates_dropped']:,} duplicates dropped) "
                  f"in {time.perf_counter() - t0:.1f}s")


@app.command("train")
def train_cmd(
    config: Path = typer.Option(DEFAULT_CONFIG, help="YAML config."),
    data: Path = typer.Option(..., help="Data directory with train/ (and eval/)."),
    out: Path = typer.Option(..., help="Run directory (checkpoints/ and the current checkpoint's manifest)."),
    resume: bool = typer.Option(False, help="Continue from the run directory's last complete checkpoint."),
    overwrite: bool = typer.Option(False, help="Replace the run in a non-empty run directory."),
    init_from: Path | None = typer.Option(
        None, help="Warm-start from this trained run: every tensor entry whose name (and surface, view type, task, "
        "table row) matches is loaded, the rest initialised fresh (train.warm_start; docs/model.md). A fresh run "
        "only: --resume continues from the run's own checkpoint."),
    sets: list[str] = set_option(),
    threads: int | None = threads_option(),
) -> None:
    """Train the unified model; under `torchrun --nproc-per-node N -m unictr train ...`, on N ranks
    (docs/distributed.md)."""
    from unictr.train.loop import train

    cfg = load_config(config, overrides(sets, threads))
    manifest = train(cfg, data, out, resume=resume, overwrite=overwrite, console=console, init_from=init_from)
    if os.environ.get("RANK", "0") == "0":
        step = manifest.get("train_state", {}).get("step")
        console.print(f"run: {out} (checkpoint at step {step})")


@app.command("eval")
def eval_cmd(
    run: Path = typer.Option(..., help="Run directory (model.safetensors + manifest.json)."),
    data: Path = typer.Option(..., help="Data directory (reads DATA/eval) or a split directory."),
    out: Path = typer.Option(Path("metrics.json"), help="Where to write metrics.json."),
    split: str = typer.Option("eval", help="Split sub-directory to read."),
    plots: Path | None = typer.Option(None, help="Also write one reliability-diagram PNG per surface here."),
    threads: int | None = threads_option(),
) -> None:
    """Evaluate a run per surface × task; write metrics.json and print the table."""
    metrics = evaluate_run(run, data, split, plots, threads)
    write_json(out, metrics)
    print_metrics(metrics)
    console.print(f"metrics: {out}" + (f"\nreliability diagrams: {plots}" if plots else ""))


@app.command("quickstart")
def quickstart(
    out: Path = typer.Option(Path("quickstart"), help="Output directory."),
    rows: int = typer.Option(2_000_000, help="Impressions to simulate."),
    config: Path = typer.Option(DEFAULT_CONFIG, help="YAML config."),
    seed: int = typer.Option(0, help="Simulator seed."),
    sets: list[str] = set_option(),
    threads: int | None = threads_option(),
) -> None:
    """Simulate → train → evaluate → export each surface → publish and promote them in OUT/registry, then
    print the per-surface table, the paths, and the commands that serve the model and score a request."""
    from unictr.data.simulate import simulate
    from unictr.export.job import export_all_surfaces
    from unictr.train.loop import train

    cfg = load_config(config, overrides(sets, threads))
    t0 = time.perf_counter()
    data_dir, run_dir = out / "data", out / "run"
    simulate(rows=rows, seed=seed, out=data_dir)
    console.print(f"simulated {rows:,} rows → {data_dir} ({time.perf_counter() - t0:.0f}s)")
    # the quickstart's own directory; the last epoch's evaluation on data_dir/eval is the run's metrics
    metrics = train(cfg, data_dir, run_dir, console=console, overwrite=True)["metrics"]
    write_json(out / "metrics.json", metrics)
    print_metrics(metrics)
    exports = export_all_surfaces(run_dir, out / "exports")
    console.print(f"data: {data_dir}\nrun: {run_dir}\nmetrics: {out / 'metrics.json'}")
    for surface, path in exports.items():
        console.print(f"export ({surface}): {path}")
    registry, surface, request = publish_quickstart(out, exports, data_dir, cfg)
    console.print(f"total {time.perf_counter() - t0:.0f}s\nserve it:  unictr serve --registry {registry}\n"
                  f"score one request (in another shell):  curl -s -X POST "
                  f"http://127.0.0.1:8000/v1/surfaces/{surface}/score -H 'content-type: application/json' "
                  f"-d @{request}", soft_wrap=True)


def publish_quickstart(out: Path, exports: dict[str, Path], data_dir: Path, cfg: Any) -> tuple[Path, str, Path]:
    """Publish each export into OUT/registry and promote it through the gate on the eval split, and write
    one example request (the first eval request of the first surface); returns (registry, surface, request)."""
    import pyarrow.parquet as pq

    from unictr.data.reader import split_files
    from unictr.data.requests import request_from_rows
    from unictr.serving.registry import Registry

    registry = Registry(out / "registry")
    for surface, path in exports.items():
        report = registry.promote(surface, registry.publish(surface, path), eval_data=data_dir)
        failed = "; ".join(c["detail"] for c in report.checks if not c["passed"])
        state = "live" if report.promoted else f"kept out by the gate: {failed}"
        console.print(f"registry ({surface}): {report.candidate} {state}")
    surface = next(iter(exports))
    first = pq.ParquetFile(split_files(data_dir / "eval")[0]).read_row_group(0)
    request = out / f"request-{surface}.json"
    write_json(request, request_from_rows(first, cfg, surface, max_requests=1))
    return registry.root, surface, request


def evaluate_run(
    run: Path, data: Path, split: str = "eval", plots: Path | None = None, threads: int | None = None
) -> dict[str, Any]:
    """metrics.json of the run's current checkpoint on `data/split` (on the CPU, with the run's threads or
    `threads`)."""
    from unictr.checkpoint import load_model
    from unictr.train.evaluate import evaluate_split
    from unictr.train.loop import setup_cpu_scoring

    model, _ = load_model(run)
    setup_cpu_scoring(model.cfg.train, threads)
    split_dir = data / split if (data / split).is_dir() else data
    return evaluate_split(model, split_dir, plots=plots)


def print_metrics(metrics: dict[str, Any]) -> None:
    table = Table(title="evaluation")
    for col in ["surface", "task", "n", "auc", "oracle auc", "logloss", "oracle ll", "ne", "calib ratio"]:
        table.add_column(col, justify="right" if col not in ("surface", "task") else "left")

    def fmt(v: Any, spec: str = ".4f") -> str:
        return "-" if v is None else format(v, spec)

    rows = [(s, t, m) for s, tasks in metrics["surfaces"].items() for t, m in tasks.items() if t != "view_types"]
    rows += [("overall", t, m) for t, m in metrics["overall"].items()]
    for s, t, m in rows:
        table.add_row(
            s, t, f"{m['n']:,}", fmt(m.get("auc")), fmt(m.get("oracle_auc")), fmt(m.get("logloss")),
            fmt(m.get("oracle_logloss")), fmt(m.get("ne")), fmt(m.get("calibration_ratio"), ".3f"),
        )
    print_table(table)


@app.command("calibrate")
def calibrate_cmd(
    run: Path = typer.Option(..., help="Run directory to calibrate (left unchanged)."),
    data: Path = typer.Option(..., help="Data directory (reads DATA/<split>) or a split directory: held-out rows "
                              "after the training period, never the rows you evaluate on."),
    out: Path = typer.Option(..., help="New run directory: the run's weights plus the fitted maps."),
    method: str = typer.Option(..., help="platt or isotonic."),
    scope: str = typer.Option("view_type", help="Key each map is fitted per: view_type, surface or global."),
    split: str = typer.Option("calib", help="Split sub-directory to fit on (`eval` only with --allow-eval-split)."),
    min_rows: int = typer.Option(1000, help="Keys with fewer rows (or one class) use their parent's fit "
                                 "(view type → surface → global)."),
    allow_eval_split: bool = typer.Option(
        False, "--allow-eval-split", help="Allow --split eval (the rows eval and the gate score: biased)."),
    window_days: int | None = typer.Option(
        None, help="Fit on the newest K days of the split only (days of the timestamp column)."),
    half_life_days: float | None = typer.Option(
        None, help="Recency weights: a row H days older than the newest day counts half."),
    utc_offset_hours: float = typer.Option(0.0, help="Days start at midnight at this UTC offset (KuaiRand: 8)."),
    prior_strength: float = typer.Option(
        0.0, help="Platt only: shrink each key's fit towards its parent's (view type → surface → global), the "
        "prior worth this many units of Σp(1-p) (≈ positives at low rates); 0: no shrinkage."),
) -> None:
    """Fit post-hoc calibration per scope key and task; the new run applies it in its forward pass and differs
    from RUN only in its calibration (a calibration-only version of RUN)."""
    from unictr.calibration.job import Window, calibrate_run

    t0 = time.perf_counter()
    window = (None if window_days is None and half_life_days is None and not utc_offset_hours
              else Window(window_days, half_life_days, utc_offset_hours))
    manifest = calibrate_run(run, data, out, method, scope, split, min_rows, allow_eval_split, window, prior_strength)
    info = manifest["calibration"]
    for day, d in ((info.get("window") or {}).get("per_day") or {}).items():
        console.print(f"day {day}: {d['rows']:,} rows, weight {d['weight']:.3f}")
    table = Table(title=f"{method} calibration per {scope} ({info['rows']:,} rows, min {min_rows} per key)")
    for col in ("task", "key", "rows", "fit used"):
        table.add_column(col, justify="right" if col == "rows" else "left")
    for task, keys in info["fit"].items():
        for key, r in keys.items():
            used = f"[yellow]{r['used']} (fallback)[/yellow]" if r["fell_back"] else r["used"]
            table.add_row(task, key, f"{r['rows']:,}", used)
    print_table(table)
    console.print(f"calibrated run: {out} ({time.perf_counter() - t0:.0f}s)")
