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
        "all", help="embedding, broadcast, serving, training, floor, all (those five), or scale / dcn (alone: minutes)."
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
        help="Comma-separated arms: unified, separate, shared, lightgbm, din (one FuxiCTR-style DIN per task, "
        "early-stopped on the training window's last day), and the ablations no_sequence, no_mmoe.",
    ),
    bootstrap: int = typer.Option(1000, help="Bootstrap resamples for the AUC-difference intervals."),
    keep_runs: bool = typer.Option(False, help="Keep every model's checkpoint under OUT/runs."),
    sets: list[str] = set_option(),
    threads: int | None = threads_option(),
) -> None:
    """Unified vs one model per surface vs one shared tower vs LightGBM vs DIN (and ablations), same data."""
    import shlex

    from unictr.experiment.run import run_experiment

    cfg = load_config(config, overrides(sets, threads))
    seed_list = _seed_list(seeds)
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


@experiment_app.command("recalibrate")
def experiment_recalibrate(
    config: Path = typer.Option(..., help="YAML config, e.g. configs/kuairand.yaml."),
    data: Path = typer.Option(..., help="Data directory: train/ holds the days up to --train-until, the other "
                              "splits (calib/, eval/) the later days."),
    train_until: str = typer.Option(..., help="Last training day, YYYY-MM-DD."),
    days: str = typer.Option(..., help="Scored days, YYYY-MM-DD, comma-separated (e.g. 2022-04-28,2022-04-29)."),
    out: Path = typer.Option(..., help="Report directory: report.md, report.json."),
    seeds: str = typer.Option("0", help="Comma-separated training seeds."),
    window_days: int = typer.Option(3, help="Windowed method: days before the scored day it fits on."),
    half_life_days: float = typer.Option(1.0, help="Windowed method: recency half-life in days."),
    prior_strength: float = typer.Option(100.0, help="Windowed method: shrinkage towards the parent key's fit, "
                                         "in units of Σp(1-p) (≈ positives at low rates)."),
    min_rows: int = typer.Option(200, help="Keys with fewer fit rows use their parent's fit."),
    utc_offset_hours: float = typer.Option(0.0, help="Days start at midnight at this UTC offset (KuaiRand: 8)."),
    surfaces: str | None = typer.Option(None, help="Comma-separated surfaces the summary averages over "
                                        "(default: all)."),
    sets: list[str] = set_option(),
    threads: int | None = threads_option(),
) -> None:
    """Train once, then per later day refit post-hoc calibration on the days before it and score the day: no
    post-hoc map vs calibrate once vs daily refit vs windowed + shrunk refit (docs/calibration.md)."""
    import shlex

    from unictr.experiment.recalibrate import Plan, run_recalibration

    cfg = load_config(config, overrides(sets, threads))
    seed_list = _seed_list(seeds)
    plan = Plan(train_until, tuple(d.strip() for d in days.split(",") if d.strip()), window_days, half_life_days,
                prior_strength, min_rows, utc_offset_hours)
    named = tuple(s.strip() for s in surfaces.split(",")) if surfaces else None
    command = shlex.join(["unictr", "experiment", "recalibrate", "--config", str(config), "--data", str(data),
                          "--train-until", train_until, "--days", days, "--out", str(out), "--seeds", seeds,
                          "--window-days", str(window_days), "--half-life-days", str(half_life_days),
                          "--prior-strength", str(prior_strength), "--min-rows", str(min_rows),
                          "--utc-offset-hours", str(utc_offset_hours)] + (["--surfaces", surfaces] if surfaces else [])
                         + [f"--set={o}" for o in overrides(sets, threads)])
    report = run_recalibration(cfg, data, out, plan, seed_list, named, command, console)
    table = Table(title=f"summary over {', '.join(report['summary_surfaces'])} × days × seeds")
    for col in ("task", "method", "mean z²", "mean |log ratio|", "mean ECE", "cells"):
        table.add_column(col, justify="left" if col in ("task", "method") else "right")
    for t in report["tasks"]:
        for m in report["methods"]:
            r = report["summary"].get(m, {}).get(t)
            if r:
                table.add_row(t, m, f"{r['mean_z2']:.2f}", f"{r['mean_abs_log_ratio']:.4f}", f"{r['mean_ece']:.4f}",
                              str(r["cells"]))
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
    stage2_epochs: int | None = typer.Option(None, min=1, help="Epochs of stage 2 (default: 3/4 of the config's, "
                                             "rounded up)."),
    stage2_replay: float = typer.Option(1.0, min=0.0, max=1.0, help="Fraction of the old surfaces' requests "
                                        "stage 2 trains on per epoch (a fresh sample each epoch; 1 = all). With "
                                        "few epochs (2: 3/4 rounds up to all of them), e.g. 0.5 at the full count."),
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
    seed_list = _seed_list(seeds)
    command = shlex.join(
        ["unictr", "experiment", "stage", "--config", str(config), "--data", str(data), "--stages", stages,
         "--out", str(out), "--seeds", seeds, "--bootstrap", str(bootstrap)]
        + ["--stage2-epochs", str(stage2_epochs)] * (stage2_epochs is not None)
        + ["--stage2-replay", str(stage2_replay)]
        + ["--keep-runs"] * keep_runs + [f"--set={o}" for o in overrides(sets, threads)])
    report = run_stage_experiment(
        cfg, data, out, stages, seeds=seed_list, stage2_epochs=stage2_epochs,
        stage2_replay=stage2_replay, n_boot=bootstrap,
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


def _seed_list(seeds: str) -> tuple[int, ...]:
    """`--seeds 0,1,2` as integers; anything else refused naming the option."""
    try:
        return tuple(int(s) for s in seeds.split(",") if s.strip())
    except ValueError:
        fail(f"--seeds: expected comma-separated integers, got {seeds!r}")
