"""`unictr report`: a run's (or an experiment's) results as one HTML page that opens offline."""

from __future__ import annotations

from pathlib import Path

import typer

from unictr.cli.common import app, console, fail, threads_option


@app.command("report", context_settings={"allow_extra_args": True})
def report_cmd(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="Run directory, or an experiment's report directory (report.json)."),
    compare: list[Path] = typer.Option([], "--compare", help="Runs (or experiments) to show beside RUN: curves "
                                       "overlaid, tables side by side; `--compare A B` or repeat --compare."),
    out: Path = typer.Option(Path("report.html"), help="The HTML file to write."),
    data: Path | None = typer.Option(None, help="Data directory (reads DATA/eval) or a split directory: score "
                                     "each run on it for the tables and the reliability diagrams."),
    threads: int | None = threads_option(),
) -> None:
    """Write one self-contained HTML page: curves, the per-surface × task metrics, reliability diagrams, and an
    experiment's arms with their intervals (docs/report.md)."""
    from unictr.report import write_report

    extra = [a for a in ctx.args if a.startswith("-")]
    if extra:
        fail(f"unknown option(s) {extra}")
    path = write_report([run, *compare, *map(Path, ctx.args)], out, data, threads)
    console.print(f"report: {path}")
