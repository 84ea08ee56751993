"""The `unictr` command line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from unictr.config import Config, ConfigError, ServeSpec, load_config

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
    plots: Path | None = typer.Option(None, help="Also write one reliability-diagram PNG per surface here."),
) -> None:
    """Evaluate a run per surface × task; write metrics.json and print the table."""
    metrics = evaluate_run(run, data, split, plots)
    _write_json(out, metrics)
    print_metrics(metrics)
    console.print(f"metrics: {out}" + (f"\nreliability diagrams: {plots}" if plots else ""))


@app.command("quickstart")
def quickstart(
    out: Path = typer.Option(Path("quickstart"), help="Output directory."),
    rows: int = typer.Option(1_000_000, help="Impressions to simulate."),
    config: Path = typer.Option(DEFAULT_CONFIG, help="YAML config."),
    seed: int = typer.Option(0, help="Simulator seed."),
) -> None:
    """Simulate → train → evaluate, then print the per-surface table and the paths."""
    from unictr.data.simulate import simulate
    from unictr.export.job import export_all_surfaces
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
    exports = export_all_surfaces(run_dir, out / "exports")
    console.print(f"data: {data_dir}\nrun: {run_dir}\nmetrics: {out / 'metrics.json'}")
    for surface, path in exports.items():
        console.print(f"export ({surface}): {path}")
    console.print(f"total {time.perf_counter() - t0:.0f}s")


def evaluate_run(run: Path, data: Path, split: str = "eval", plots: Path | None = None) -> dict[str, Any]:
    from unictr.checkpoint import load_model
    from unictr.data.reader import load_split
    from unictr.train.evaluate import evaluate
    from unictr.train.loop import setup_runtime

    model, _ = load_model(run)
    setup_runtime(model.cfg.train.model_copy(update={"device": "cpu"}))
    split_dir = data / split if (data / split).is_dir() else data
    return evaluate(model, load_split(split_dir, model.schema, model.cfg.data), plots=plots)


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


def _load(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        _fail(str(e))


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    from unictr.checkpoint import save_json

    save_json(obj, Path(path))


# --- export, serving and the model registry --------------------------------------------------------

registry_app = typer.Typer(no_args_is_help=True, help="Versioned surface models: publish, promote, roll back.")
app.add_typer(registry_app, name="registry")


@app.command("export")
def export_cmd(
    run: Path = typer.Option(..., help="Run directory of the unified model."),
    surface: str = typer.Option(..., help="Surface to export."),
    out: Path = typer.Option(..., help="Output directory (new, empty, or an earlier export to replace)."),
    fmt: str = typer.Option("safetensors", "--format", help="safetensors, or onnx (adds a checked model.onnx)."),
) -> None:
    """Export one surface's pruned model (trunk + its tower, heads, calibration) with a manifest."""
    from unictr.checkpoint import CheckpointError
    from unictr.export import ExportError
    from unictr.export.job import export_surface

    try:
        manifest = export_surface(run, surface, out, fmt=fmt)
    except (ExportError, CheckpointError) as e:
        _fail(str(e))
    for name in manifest["files"]:
        console.print(f"{out / name}  {(out / name).stat().st_size:,} bytes")
    console.print(f"surface {surface}: tasks {manifest['tasks']}; parity {manifest['parity']}")


# The flag of each `ServeSpec` field, where it is not the field's name with dashes.
_SERVE_FLAGS = {name: name.replace("_", "-") for name in ServeSpec.model_fields} | {"max_body_bytes": "max-body-mb"}


def _serve_option(name: str, help: str, **kwargs: Any) -> Any:
    """A `unictr serve` option whose default is the `ServeSpec` field's (defaults are written there, once)."""
    default = ServeSpec.model_fields[name].default
    return typer.Option(default / (1 << 20) if name == "max_body_bytes" else default, help=help, **kwargs)


@app.command("serve")
def serve_cmd(
    registry: Path = typer.Option(..., help="Registry directory."),
    host: str = _serve_option("host", "Interface to bind (localhost by default)."),
    port: int = _serve_option("port", "TCP port."),
    max_unique_users: int = _serve_option("max_unique_users", "Users per forward pass; larger requests are chunked."),
    max_candidates: int = _serve_option("max_candidates", "Candidates per request; more is refused (413)."),
    max_body_mb: float = _serve_option("max_body_bytes", "Largest request body in MiB (413 above)."),
    poll_seconds: float = _serve_option("poll_seconds", "How often the registry pointers are checked."),
    threads: int = _serve_option(
        "threads", "Intra-op threads per request (torch's and ONNX Runtime's). 1 measured best on 2 cores: 21% more "
        "requests/s with 4 clients and a lower p99 (docs/serving.md); run a process per core for more.", min=1,
    ),
    max_concurrency: int = _serve_option("max_concurrency", "Concurrent connections before 503."),
    backend: str = _serve_option("backend", "auto, eager, compile or onnx (auto: onnx where the export has one)."),
    bf16: bool = _serve_option("bf16", "bf16 autocast for eager/compile (CPUs with AMX or AVX512-BF16)."),
    inline: bool = _serve_option(
        "inline", "Score on the event loop's thread, not a worker thread: ~0.5 ms less per request, one request at "
        "a time (for one process per core with --threads 1).",
    ),
) -> None:
    """Serve the registry's live models over HTTP (FastAPI + uvicorn)."""
    from pydantic import ValidationError

    from unictr.serving.app import serve
    from unictr.serving.registry import RegistryError

    try:
        spec = ServeSpec(
            host=host, port=port, max_concurrency=max_concurrency, max_unique_users=max_unique_users,
            max_candidates=max_candidates, max_body_bytes=int(max_body_mb * (1 << 20)), poll_seconds=poll_seconds,
            threads=threads, backend=backend, bf16=bf16, inline=inline,
        )
    except ValidationError as e:
        _fail("; ".join(f"--{_SERVE_FLAGS.get(err['loc'][0], err['loc'][0])}: {err['msg']}" for err in e.errors()))
    try:
        serve(registry, spec)
    except RegistryError as e:
        _fail(str(e))


@registry_app.command("publish")
def registry_publish(
    registry: Path = typer.Option(..., help="Registry directory (created if missing)."),
    surface: str = typer.Option(..., help="Surface the export serves."),
    model: Path = typer.Option(..., help="Export directory from `unictr export`."),
) -> None:
    """Add a verified export as the surface's next version (it does not go live)."""
    version = _registry_call(lambda r: r.publish(surface, model), registry)
    console.print(f"published {surface} {version}; make it live with `unictr registry promote`")


@registry_app.command("promote")
def registry_promote(
    registry: Path = typer.Option(..., help="Registry directory."),
    surface: str = typer.Option(..., help="Surface."),
    version: str | None = typer.Option(None, help="Version to promote (default: the newest)."),
    eval_data: Path | None = typer.Option(None, help="Data directory (reads DATA/eval) or split for the gate."),
    force: bool = typer.Option(False, help="Promote even if the gate fails (the report records it)."),
    shadow: bool = typer.Option(False, help="Only score it beside the live version and record the difference."),
    auc_margin: float = typer.Option(0.01, help="Largest AUC drop against the live version, per task."),
    calibration_low: float = typer.Option(0.8, help="Lowest allowed calibration ratio."),
    calibration_high: float = typer.Option(1.25, help="Highest allowed calibration ratio."),
    calibration_task: str | None = typer.Option(None, help="Task whose calibration is gated (default: the first)."),
) -> None:
    """Gate a version and make it live atomically; running servers pick it up without a restart."""
    from unictr.serving.registry import GatePolicy

    if shadow:
        ptr = _registry_call(lambda r: r.set_shadow(surface, version or r.newest(surface)), registry)
        console.print(f"{surface}: live {ptr.live}, shadow {ptr.shadow} (scored beside live, not served)")
        return
    policy = GatePolicy(auc_margin, (calibration_low, calibration_high), calibration_task)
    report = _registry_call(lambda r: r.promote(surface, version, eval_data, force, policy), registry)
    table = Table(title=f"promotion gate: {surface} {report.candidate} (live: {report.current})")
    for col in ("check", "passed", "detail"):
        table.add_column(col)
    for c in report.checks:
        table.add_row(c["name"], "[green]yes[/green]" if c["passed"] else "[red]no[/red]", c["detail"])
    console.print(table)
    console.print(f"report: {report.path}")
    if not report.promoted:
        _fail(f"{surface}: {report.candidate} not promoted (gate failed; --force overrides)")
    console.print(f"{surface}: {report.candidate} is live" + (" (forced past the gate)" if report.forced else ""))


@registry_app.command("rollback")
def registry_rollback(
    registry: Path = typer.Option(..., help="Registry directory."),
    surface: str = typer.Option(..., help="Surface."),
    shadow: bool = typer.Option(False, help="Stop shadow scoring instead."),
) -> None:
    """Make the previous live version live again (instant: a pointer swap)."""
    ptr = _registry_call(lambda r: r.set_shadow(surface, None) if shadow else r.rollback(surface), registry)
    console.print(f"{surface}: live {ptr.live}, shadow {ptr.shadow}")


@registry_app.command("list")
def registry_list(registry: Path = typer.Option(..., help="Registry directory.")) -> None:
    """Every surface's versions, which one is live, shadow or previous, and where each came from."""
    rows = _registry_call(lambda r: r.listing(), registry)
    table = Table(title=str(registry))
    for col in ("surface", "version", "role", "published", "tasks", "source run"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["surface"], r["version"], r["role"], r.get("published_at", "-"),
                      ",".join(r.get("tasks") or []), str(r.get("source_run") or "-"))
    console.print(table)


def _registry_call(op: Any, registry: Path) -> Any:
    """Run `op(Registry(registry))`, turning registry, checkpoint and data errors into a clean exit."""
    from unictr.checkpoint import CheckpointError
    from unictr.data.errors import DataError
    from unictr.serving.registry import Registry, RegistryError

    try:
        return op(Registry(registry))
    except (RegistryError, CheckpointError, DataError) as e:
        _fail(str(e))


# --- post-hoc calibration ----------------------------------------------------------------------------


@app.command("calibrate")
def calibrate_cmd(
    run: Path = typer.Option(..., help="Run directory to calibrate (left unchanged)."),
    data: Path = typer.Option(..., help="Data directory (reads DATA/<split>) or a split directory: held-out rows "
                              "after the training period, never the rows you evaluate on."),
    out: Path = typer.Option(..., help="New run directory: the run's weights plus the fitted maps."),
    method: str = typer.Option(..., help="platt or isotonic."),
    scope: str = typer.Option("view_type", help="Key each map is fitted per: view_type, surface or global."),
    split: str = typer.Option("eval", help="Split sub-directory to fit on."),
    min_rows: int = typer.Option(1000, help="Keys with fewer rows (or one class) use their parent's fit "
                                 "(view type → surface → global)."),
) -> None:
    """Fit post-hoc calibration per scope key and task; the new run applies it in its forward pass."""
    from unictr.calibration.job import CalibrationError, calibrate_run
    from unictr.checkpoint import CheckpointError
    from unictr.data.errors import DataError

    t0 = time.perf_counter()
    try:
        manifest = calibrate_run(run, data, out, method, scope, split, min_rows)
    except (CalibrationError, CheckpointError, DataError) as e:
        _fail(str(e))
    info = manifest["calibration"]
    table = Table(title=f"{method} calibration per {scope} ({info['rows']:,} rows, min {min_rows} per key)")
    for col in ("task", "key", "rows", "fit used"):
        table.add_column(col, justify="right" if col == "rows" else "left")
    for task, keys in info["fit"].items():
        for key, r in keys.items():
            used = f"[yellow]{r['used']} (fallback)[/yellow]" if r["fell_back"] else r["used"]
            table.add_row(task, key, f"{r['rows']:,}", used)
    console.print(table)
    console.print(f"calibrated run: {out} ({time.perf_counter() - t0:.0f}s)")


@app.command("bench")
def bench_cmd(
    suite: str = typer.Option("all", help="embedding, broadcast, serving, training, floor or all."),
    out: Path | None = typer.Option(None, help="Write the results as JSON here."),
    quick: bool = typer.Option(False, help="Tiny sizes and few repeats: checks that the suites run, measures little."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    threads: int | None = typer.Option(None, help="torch intra-op threads (default: torch's, one per core)."),
) -> None:
    """Benchmark the model: fused embedding, user broadcasting, serving latency, training throughput, FLOP floor."""
    from unictr.bench import BenchError, headlines, run

    try:
        result = run(suite, quick=quick, device=device, threads=threads, log=console.print)
    except (BenchError, ValueError) as e:
        _fail(str(e))
    table = Table(title=f"unictr bench ({suite}{', quick' if quick else ''}; {result['machine']['cpu']})")
    for col in ("measure", "value", "target"):
        table.add_column(col)
    for row in headlines(result):
        table.add_row(*row)
    console.print(table)
    if out is not None:
        _write_json(out, result)
        console.print(f"results: {out}")


# --- real data (KuaiRand) and the unified-versus-separate experiment -------------------------------------

experiment_app = typer.Typer(no_args_is_help=True, help="Experiments that compare model designs.")
app.add_typer(experiment_app, name="experiment")


@data_app.command("kuairand", context_settings={"allow_extra_args": True})
def data_kuairand(
    ctx: typer.Context,
    logs: list[Path] = typer.Option(..., help="KuaiRand-Pure log CSV(s); `--logs A.csv B.csv` or repeat --logs."),
    users: Path = typer.Option(..., help="user_features_pure.csv."),
    videos: Path = typer.Option(..., help="video_features_basic_pure.csv."),
    history: Path | None = typer.Option(None, help="Pre-window history Parquet (optional)."),
    eval_from: str = typer.Option(..., help="First eval day, YYYY-MM-DD (earlier log days are train)."),
    eval_until: str | None = typer.Option(None, help="First day left out entirely (e.g. a validation split)."),
    max_seq_len: int = typer.Option(64, help="Newest sequence events kept per request."),
    engaged_only: bool = typer.Option(
        False, "--engaged-only", help="Sequences hold only engaged impressions (default: every earlier impression)."
    ),
    out: Path = typer.Option(..., help="Output data directory (train/, eval/, meta.json)."),
) -> None:
    """Convert the official KuaiRand-Pure files into canonical Parquet (train before --eval-from, eval after)."""
    from unictr.data.errors import DataError
    from unictr.data.kuairand import convert_kuairand

    extra = [a for a in ctx.args if a.startswith("-")]
    if extra:
        _fail(f"unknown option(s) {extra}")
    t0 = time.perf_counter()
    try:
        meta = convert_kuairand(
            [*logs, *map(Path, ctx.args)], users, videos, history, eval_from, out,
            max_seq_len=max_seq_len, eval_until=eval_until, engaged_only=engaged_only,
        )
    except DataError as e:
        _fail(str(e))
    splits = ", ".join(f"{s} {v['rows']:,} rows" for s, v in meta["splits"].items())
    console.print(f"wrote {out}: {splits} ({meta['duplicates_dropped']:,} duplicates dropped) "
                  f"in {time.perf_counter() - t0:.1f}s")


@experiment_app.command("unify")
def experiment_unify(
    config: Path = typer.Option(..., help="YAML config, e.g. configs/kuairand.yaml."),
    data: Path = typer.Option(..., help="Data directory with train/ and eval/."),
    out: Path = typer.Option(..., help="Report directory: report.md, report.json, auc.png."),
    seeds: str = typer.Option("0", help="Comma-separated training seeds; metrics are averaged over them."),
    arms: str = typer.Option(
        "unified,separate,shared,lightgbm",
        help="Comma-separated arms: unified, separate, shared, lightgbm, and the ablations no_sequence, no_mmoe.",
    ),
    bootstrap: int = typer.Option(1000, help="Bootstrap resamples for the AUC-difference intervals."),
    keep_runs: bool = typer.Option(False, help="Keep every model's checkpoint under OUT/runs."),
) -> None:
    """Unified vs one model per surface vs one shared tower vs LightGBM (and ablations), same data and budget."""
    import shlex

    from unictr.experiment.run import run_experiment

    cfg = _load(config)
    try:
        seed_list = tuple(int(s) for s in seeds.split(",") if s.strip())
    except ValueError:
        _fail(f"--seeds: expected comma-separated integers, got {seeds!r}")
    arm_list = tuple(a.strip() for a in arms.split(",") if a.strip())
    try:
        report = run_experiment(
            cfg, data, out, seeds=seed_list, arms=arm_list, n_boot=bootstrap, keep_runs=keep_runs,
            command=shlex.join(["unictr", "experiment", "unify", "--config", str(config), "--data", str(data),
                                "--out", str(out), "--seeds", seeds, "--arms", arms, "--bootstrap", str(bootstrap)]
                               + ["--keep-runs"] * keep_runs),
            console=console, show_progress=True,
        )
    except ValueError as e:  # DataError and ConfigError are ValueErrors too
        _fail(str(e))
    task = cfg.task_names[0]
    table = Table(title=f"{task} AUC on {data / 'eval'} (mean of seeds {list(seed_list)})")
    names = ["overall", *cfg.surface_names]
    for col in ["arm", *names, "train s", "params"]:
        table.add_column(col, justify="left" if col == "arm" else "right")
    for arm, r in report["arms"].items():
        aucs = [r["overall"][task]["auc"], *(r["surfaces"][s].get(task, {}).get("auc") for s in cfg.surface_names)]
        table.add_row(arm, *("-" if v is None else f"{v:.4f}" for v in aucs), f"{r['train_seconds']:.0f}",
                      f"{r['params']:,}")
    console.print(table)
    console.print(f"report: {out / 'report.md'}")


if __name__ == "__main__":
    app()
