"""`unictr monitor`: per-key calibration of a run on fresh labelled traffic, with an alerting exit code."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from unictr.cli.common import app, console, print_table, threads_option

# `unictr monitor`'s exit code when some key is miscalibrated beyond noise: distinct from 1 (a bug or the
# environment) and 2 (refused input), so a cron job can alert on it alone (docs/calibration.md, Monitoring).
EXIT_MISCALIBRATED = 3


@app.command("monitor")
def monitor_cmd(
    run: Path = typer.Option(..., help="Run directory (model.safetensors + manifest.json)."),
    data: Path = typer.Option(..., help="Data directory (reads DATA/<split>) or a split directory: fresh labelled "
                              "traffic."),
    out: Path = typer.Option(..., help="Report directory: report.json, report.md, ratio.png."),
    split: str = typer.Option("eval", help="Split sub-directory to read."),
    by: str = typer.Option("none", help="none (one period) or day (one row per key and UTC day of the timestamps)."),
    z_threshold: float = typer.Option(4.0, help="Flag a key when |z| exceeds this (4: a calibrated model "
                                      "alarms on ~1.3% of mornings with 200 keys; docs/calibration.md)."),
    threads: int | None = threads_option(),
) -> None:
    """Calibration per surface × view type × task (and day): ratio with its interval, z-score, ECE, AUC and
    drift since training; exits 3 when some key's |z| exceeds the threshold."""
    from unictr.calibration.monitor import fmt, key_name, monitor_run, ratio_text, write_report

    report = monitor_run(run, data, split, by, z_threshold, threads)
    paths = write_report(report, out)
    table = Table(title=f"calibration of {run} (|z| > {z_threshold:g} flagged; {report['keys_tested']} keys tested)")
    for col in ("key", "rows", "positives", "ratio [95%]", "z", "ΔAUC", "flag"):
        table.add_column(col, justify="left" if col in ("key", "flag") else "right")
    for k in report["keys"]:
        if k["view_type"] is None or k["flagged"]:  # whole surfaces, and any flagged view type
            table.add_row(key_name(k), f"{k['rows']:,}", f"{k['positives']:,}", ratio_text(k),
                          fmt(k["z"], "+.2f"), fmt(k["delta_auc"], "+.4f"),
                          "[red]MISCALIBRATED[/red]" if k["flagged"] else "")
    print_table(table)
    console.print(f"report: {paths['md']} ({paths['json'].name}, {paths['plot'].name})")
    if report["flagged"]:
        console.print(f"[red]{len(report['flagged'])} key(s) miscalibrated beyond noise:[/red] "
                      + ", ".join(report["flagged"]))
        raise typer.Exit(EXIT_MISCALIBRATED)
