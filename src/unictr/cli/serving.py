"""`unictr export`, `serve` and `registry …`: per-surface exports, the scoring service, the model registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from unictr.cli.common import app, console, fail, print_table, registry_app
from unictr.config import ServeSpec


@app.command("export")
def export_cmd(
    run: Path = typer.Option(..., help="Run directory of the unified model."),
    surface: str = typer.Option(..., help="Surface to export."),
    out: Path = typer.Option(..., help="Output directory (new, empty, or an earlier export to replace)."),
    fmt: str = typer.Option("safetensors", "--format", help="safetensors, or onnx (adds a checked model.onnx)."),
) -> None:
    """Export one surface's pruned model (trunk + its tower, heads, calibration) with a manifest."""
    from unictr.export.job import export_surface

    manifest = export_surface(run, surface, out, fmt=fmt)
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
        "threads", "Intra-op threads per request (torch's and ONNX Runtime's). 1 measured best on 2 cores (more "
        "requests/s with several clients and a lower p99; docs/serving.md); run a process per core for more.", min=1,
    ),
    max_concurrency: int = _serve_option("max_concurrency", "Score requests in flight before a quick 503."),
    max_connections: int = _serve_option("max_connections", "Open connections before 503."),
    header_timeout: float = _serve_option("header_timeout", "Seconds to a request's last header, then closed."),
    body_timeout: float = _serve_option("body_timeout", "Seconds from the headers to the body's end, then closed."),
    keepalive_timeout: float = _serve_option("keepalive_timeout", "Seconds an idle keep-alive connection stays."),
    backend: str = _serve_option("backend", "auto, eager, compile or onnx (auto: onnx where the export has one)."),
    bf16: bool = _serve_option("bf16", "bf16 autocast for eager/compile (CPUs with AMX or AVX512-BF16)."),
    inline: bool = _serve_option(
        "inline", "Score on the event loop's thread, not a worker thread: less overhead per request, one request at "
        "a time (for one process per core with --threads 1).",
    ),
) -> None:
    """Serve the registry's live models over HTTP (FastAPI + uvicorn)."""
    from pydantic import ValidationError

    from unictr.serving.app import serve

    try:
        spec = ServeSpec(
            host=host, port=port, max_concurrency=max_concurrency, max_unique_users=max_unique_users,
            max_candidates=max_candidates, max_body_bytes=int(max_body_mb * (1 << 20)), poll_seconds=poll_seconds,
            threads=threads, backend=backend, bf16=bf16, inline=inline, max_connections=max_connections,
            header_timeout=header_timeout, body_timeout=body_timeout, keepalive_timeout=keepalive_timeout,
        )
    except ValidationError as e:
        fail("; ".join(f"--{_SERVE_FLAGS.get(err['loc'][0], err['loc'][0])}: {err['msg']}" for err in e.errors()))
    serve(registry, spec)


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
    force: bool = typer.Option(
        False, help="Promote even if the quality gate fails (the report records it); integrity is still checked.",
    ),
    shadow: bool = typer.Option(
        False, help="Only score it beside the live version and record the difference (integrity is checked).",
    ),
    auc_margin: float = typer.Option(0.01, help="Largest AUC drop against the live version, per task."),
    calibration_low: float = typer.Option(0.8, help="Lowest allowed calibration ratio."),
    calibration_high: float = typer.Option(1.25, help="Highest allowed calibration ratio."),
    calibration_task: str | None = typer.Option(None, help="Task whose calibration is gated (default: the first)."),
) -> None:
    """Gate a version and make it live atomically; running servers pick it up without a restart."""
    from unictr.gate import GatePolicy

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
    print_table(table)
    console.print(f"report: {report.path}")
    if not report.promoted:
        fail(f"{surface}: {report.candidate} not promoted (gate failed; --force overrides)")
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
    """Every surface's versions: live, shadow or previous, where each came from, and its integrity."""
    rows = _registry_call(lambda r: [(row, r.integrity(row["surface"], row["version"])) for row in r.listing()],
                          registry)
    table = Table(title=str(registry))
    for col in ("surface", "version", "role", "integrity", "published", "tasks", "source run", "lineage"):
        table.add_column(col)
    for r, integrity in rows:
        lineage = "-" if not r.get("calibration_only") else (
            f"calibration-only of {r.get('parent_version') or Path(r.get('parent_run') or '?').name}")
        table.add_row(r["surface"], r["version"], r["role"], escape(integrity), r.get("published_at", "-"),
                      ",".join(r.get("tasks") or []), str(r.get("source_run") or "-"), lineage)
    print_table(table)


def _registry_call(op: Any, registry: Path) -> Any:
    """Run `op(Registry(registry))` (its errors end the command via `cli.common`'s one handler)."""
    from unictr.serving.registry import Registry

    return op(Registry(registry))
