"""The `unictr` command line."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from unictr.config import ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Unified multi-surface engagement model.")
data_app = typer.Typer(no_args_is_help=True, help="Make canonical data directories.")
app.add_typer(data_app, name="data")
console = Console()

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "sim.yaml"


def _fail(msg: str) -> None:
    console.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(2)


@data_app.command("simulate")
def data_simulate(
    rows: int = typer.Option(300_000, help="Impressions to simulate."),
    seed: int = typer.Option(0, help="Random seed (same seed, same bytes)."),
    out: Path = typer.Option(..., help="Output data directory (train/, eval/, meta.json)."),
) -> None:
    """Write the built-in simulated world (known true probabilities) as canonical Parquet."""
    from unictr.data.simulate import simulate

    t0 = time.perf_counter()
    meta = simulate(rows=rows, seed=seed, out=out)
    console.print(f"wrote {meta.get('rows', rows):,} rows to {out} in {time.perf_counter() - t0:.1f}s")


@app.command("train")
def train_cmd(
    config: Path = typer.Option(DEFAULT_CONFIG, help="YAML config."),
    data: Path = typer.Option(..., help="Data directory with train/ (and eval/)."),
    out: Path = typer.Option(..., help="Run directory for the checkpoint."),
    resume: bool = typer.Option(False, help="Continue from the run directory's last checkpoint."),
) -> None:
    """Train the unified model."""
    from unictr.train.loop import train

    cfg = _load(config)
    train(cfg, data, out, resume=resume, console=console)
    console.print(f"checkpoint: {out}")


@app.command("eval")
def eval_cmd(
    run: Path = typer.Option(..., help="Run directory (model.safetensors + manifest.json)."),
    data: Path = typer.Option(..., help="Data directory (reads DATA/eval) or a split directory."),
    out: Path = typer.Option(Path("metrics.json"), help="Where to write metrics.json."),
    split: str = typer.Option("eval", help="Split sub-directory to read."),
) -> None:
    """Evaluate a run per surface × task; write metrics.json and print the table."""
    metrics = evaluate_run(run, data, split)
    _write_json(out, metrics)
    print_metrics(metrics)
    console.print(f"metrics: {out}")


@app.command("quickstart")
def quickstart(
    out: Path = typer.Option(Path("quickstart"), help="Output directory."),
    rows: int = typer.Option(300_000, help="Impressions to simulate."),
    config: Path = typer.Option(DEFAULT_CONFIG, help="YAML config."),
    seed: int = typer.Option(0, help="Simulator seed."),
) -> None:
    """Simulate → train → evaluate, then print the per-surface table and the paths."""
    from unictr.data.simulate import simulate
    from unictr.train.loop import train

    cfg = _load(config)
    t0 = time.perf_counter()
    data_dir, run_dir = out / "data", out / "run"
    simulate(rows=rows, seed=seed, out=data_dir)
    console.print(f"simulated {rows:,} rows → {data_dir} ({time.perf_counter() - t0:.0f}s)")
    train(cfg, data_dir, run_dir, console=console)
    metrics = evaluate_run(run_dir, data_dir, "eval")
    _write_json(out / "metrics.json", metrics)
    print_metrics(metrics)
    console.print(f"data: {data_dir}\nrun: {run_dir}\nmetrics: {out / 'metrics.json'}")
    console.print(f"total {time.perf_counter() - t0:.0f}s")


def evaluate_run(run: Path, data: Path, split: str = "eval") -> dict[str, Any]:
    from unictr.checkpoint import load_model
    from unictr.data.reader import load_split
    from unictr.train.evaluate import evaluate
    from unictr.train.loop import setup_runtime

    model, _ = load_model(run)
    setup_runtime(model.cfg.train.model_copy(update={"device": "cpu"}))
    split_dir = data / split if (data / split).is_dir() else data
    return evaluate(model, load_split(split_dir, model.schema, model.cfg.data))


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
    console.print(table)


def _load(path: Path):  # noqa: ANN202 - returns Config
    try:
        return load_config(path)
    except ConfigError as e:
        _fail(str(e))


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    from unictr.checkpoint import save_json

    save_json(obj, Path(path))


if __name__ == "__main__":
    app()
