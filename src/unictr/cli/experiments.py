"""`unictr bench` and `unictr experiment …`: measuring the model and comparing designs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from unictr.cli.common import (
    app,
    console,
    experiment_app,
    fail,
    overrides,
    print_table,
    set_option,
    threads_option,
    write_json,
)
from unictr.config import load_config


@app.command("bench")
def bench_cmd(
    suite: str = typer.Option(
        "all", help="embedding, broadcast, serving, training, floor, all (those five), or scale (alone: minutes)."
    ),
    out: Path | None = typer.Option(None, help="Write the results as JSON here."),
    quick: bool = typer.Option(False, help="Tiny sizes and few repeats: checks that the suites run, measures little."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    threads: int | None = typer.Option(None, help="torch intra-op threads (default: torch's, one per core)."),
) -> None:
    """Benchmark the model: fused embedding, user broadcasting, serving latency, training throughput, FLOP floor."""
    from unictr.bench import headlines, run

    result = run(suite, quick=quick, device=device, threads=threads, log=console.print)
    table = Table(title=f"unictr bench ({suite}{', quick' if quick else ''}; {result['machine']['cpu']})")
    for col in ("measure", "value", "target"):
        table.add_column(col)
    for row in headlines(result):
        table.add_row(*row)
    print_table(table)
    if out is not None:
        write_json(out, result)
        console.print(f"results: {out}")


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
    sets: list[str] = set_option(),
    threads: int | None = threads_option(),
) -> None:
    """Unified vs one model per surface vs one shared tower vs LightGBM (and ablations), same data and budget."""
    import shlex

    from unictr.experiment.run import run_experiment

    cfg = load_config(config, overrides(sets, threads))
    try:
        seed_list = tuple(int(s) for s in seeds.split(",") if s.strip())
    except ValueError:
        fail(f"--seeds: expected comma-separated integers, got {seeds!r}")
    arm_list = tuple(a.strip() for a in arms.split(",") if a.strip())
    report = run_experiment(
        cfg, data, out, seeds=seed_list, arms=arm_list, n_boot=bootstrap, keep_runs=keep_runs,
        command=shlex.join(["unictr", "experiment", "unify", "--config", str(config), "--data", str(data),
                            "--out", str(out), "--seeds", seeds, "--arms", arms, "--bootstrap", str(bootstrap)]
                           + ["--keep-runs"] * keep_runs + [f"--set={o}" for o in overrides(sets, threads)]),
        console=console, show_progress=True,
    )
    task = cfg.task_names[0]
    table = Table(title=f"{task} AUC on {data / 'eval'} (mean of seeds {list(seed_list)})")
    names = ["overall", *cfg.surface_names]
    for col in ["arm", *names, "train s", "params"]:
        table.add_column(col, justify="left" if col == "arm" else "right")
    for arm, r in report["arms"].items():
        aucs = [r["overall"][task]["auc"], *(r["surfaces"][s].get(task, {}).get("auc") for s in cfg.surface_names)]
        table.add_row(arm, *("-" if v is None else f"{v:.4f}" for v in aucs), f"{r['train_seconds']:.0f}",
                      f"{r['params']:,}")
    print_table(table)
    console.print(f"report: {out / 'report.md'}")


@experiment_app.command("stage")
def experiment_stage(
    config: Path = typer.Option(..., help="YAML config with every surface, e.g. configs/kuairand.yaml."),
    data: Path = typer.Option(..., help="Data directory with train/ and eval/."),
    stages: str = typer.Option(..., help="Surfaces by stage, 'A,B;C,D': stage 1 trains on A and B's rows, "
                               "stage 2 warm-starts from it and trains on every row."),
    out: Path = typer.Option(..., help="Report directory: report.md, report.json."),
    seeds: str = typer.Option("0", help="Comma-separated training seeds; metrics are averaged over them."),
    stage2_epochs: int | None = typer.Option(None, min=1, help="Epochs of stage 2 (default: half the config's, "
                                             "rounded up)."),
    bootstrap: int = typer.Option(1000, help="Bootstrap resamples for the AUC-difference intervals."),
    latency_repeats: int = typer.Option(200, min=1, help="Timed requests per surface export (p50/p99)."),
    keep_runs: bool = typer.Option(False, help="Keep every model's checkpoint under OUT/runs."),
    sets: list[str] = set_option(),
    threads: int | None = threads_option(),
) -> None:
    """Staged unification: a model of the first surfaces, then all of them warm-started from it, against the
    stage-1 model, one unified model from scratch and separate models for the new surfaces."""
    import shlex

    from unictr.experiment.stage import run_stage_experiment

    cfg = load_config(config, overrides(sets, threads))
    try:
        seed_list = tuple(int(s) for s in seeds.split(",") if s.strip())
    except ValueError:
        fail(f"--seeds: expected comma-separated integers, got {seeds!r}")
    command = shlex.join(
        ["unictr", "experiment", "stage", "--config", str(config), "--data", str(data), "--stages", stages,
         "--out", str(out), "--seeds", seeds, "--bootstrap", str(bootstrap)]
        + ["--stage2-epochs", str(stage2_epochs)] * (stage2_epochs is not None)
        + ["--keep-runs"] * keep_runs + [f"--set={o}" for o in overrides(sets, threads)])
    report = run_stage_experiment(
        cfg, data, out, stages, seeds=seed_list, stage2_epochs=stage2_epochs, n_boot=bootstrap,
        latency_repeats=latency_repeats, command=command, keep_runs=keep_runs, console=console, show_progress=True,
    )
    table = Table(title=f"staged unification: {report['acceptance']['task']} AUC targets")
    for col in ("check", "value", "met"):
        table.add_column(col)
    for name, c in report["acceptance"]["checks"].items():
        v = c["value"]
        table.add_row(name, " vs ".join(f"{x:.0f} s" for x in v) if isinstance(v, list) else
                      ("-" if v is None else f"{v:+.4f}"), "yes" if c["met"] else "no")
    print_table(table)
    console.print(f"report: {out / 'report.md'}")
