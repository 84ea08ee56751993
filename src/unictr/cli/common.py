"""What every `unictr` command shares: the Typer apps, the console, and how an error ends a command.

The error rule (docs/architecture.md, Conventions): an exception that escapes a command becomes one
`error: ...` line on stderr and an exit code, never a traceback — `EXIT_INPUT` (2) for input the project
refuses, `EXIT_UNEXPECTED` (1) for anything else, 130 on Ctrl-C (Typer's). `--debug` or `UNICTR_DEBUG=1`
prints the traceback above the same line, with the same exit code.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from unictr.bench import BenchError

# Input the project refuses: ValueError is the base of ConfigError, DataError, CheckpointError (and
# NotAnExport), ExportError, CalibrationError, RegistryError and RequestError, and what the project raises
# for a bad argument (`data simulate --rows 10`); Arrow's ArrowInvalid (an unreadable Parquet file) is one.
# BenchError: the benchmark suites cannot be found or the suite named does not exist.
INPUT_ERRORS: tuple[type[Exception], ...] = (ValueError, BenchError)
EXIT_INPUT = 2
EXIT_UNEXPECTED = 1
DEBUG_ENV = "UNICTR_DEBUG"


class ErrorsToExitCodes(TyperGroup):
    """The root `unictr` group: every command runs inside its `invoke`, so one handler covers them all."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.TyperException, typer.Exit, typer.Abort):
            raise  # Typer's own: usage errors (exit 2), `fail` and `typer.Exit`
        except Exception as e:
            debug = bool(ctx.params.get("debug"))
            if debug:
                traceback.print_exception(e)
            raise typer.Exit(report_error(e, hint=not debug)) from None


def report_error(e: Exception, hint: bool = True) -> int:
    """Print `e` as one `error:` line and return its exit code (see the module docstring)."""
    if isinstance(e, INPUT_ERRORS):
        print_error(str(e))
        return EXIT_INPUT
    print_error(f"{type(e).__name__}: {e}" + (" (unexpected; rerun with --debug for the traceback)" if hint else ""))
    return EXIT_UNEXPECTED


def print_error(msg: str) -> None:
    """Write `error: msg` to stderr as one line: a multi-line message's first line, then its other lines
    joined with '; ' (a config error's head, then each field's problem)."""
    head, *rest = [line.strip() for line in msg.splitlines() if line.strip()] or [""]
    text = f"{head} {'; '.join(rest)}" if rest else head
    typer.echo(f"{typer.style('error:', fg='red')} {text}", err=True)


app = typer.Typer(
    cls=ErrorsToExitCodes, add_completion=False, no_args_is_help=True, help="Unified multi-surface engagement model."
)
data_app = typer.Typer(no_args_is_help=True, help="Make canonical data directories.")
registry_app = typer.Typer(no_args_is_help=True, help="Versioned surface models: publish, promote, roll back.")
experiment_app = typer.Typer(no_args_is_help=True, help="Experiments that compare model designs.")
app.add_typer(data_app, name="data")
app.add_typer(registry_app, name="registry")
app.add_typer(experiment_app, name="experiment")
console = Console()

DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "sim.yaml"


def print_table(table: Table) -> None:
    """Print `table` whole: never cut to "…". On a terminal, cells wrap within its width; elsewhere (a log
    file, a pipe) the table gets the width it needs, so each row stays one line."""
    for column in table.columns:
        column.overflow = "fold"
    if console.is_terminal:
        console.print(table)
    else:
        natural = console.measure(table, options=console.options.update_width(100_000)).maximum
        wide = Console(file=console.file, width=max(console.width, natural), no_color=True)
        wide.print(table)


def set_option() -> Any:
    """`--set SECTION.KEY=VALUE` (repeatable): change the config without copying the YAML."""
    return typer.Option([], "--set", help="Change a config key, validated like the YAML's own: --set train.epochs=1 "
                        "(repeat for more; docs/config.md lists the keys).")


def threads_option() -> Any:
    return typer.Option(None, "--threads", min=1, help="torch intra-op threads (train.threads): 1 when other "
                        "jobs share the cores (docs/performance.md, Threads).")


def overrides(sets: list[str], threads: int | None) -> list[str]:
    """The `--set` items, with `--threads N` as `train.threads=N` last (it wins over a --set of the same key)."""
    return [*sets, *([f"train.threads={threads}"] if threads else [])]


@app.callback()
def global_options(
    debug: bool = typer.Option(
        False, "--debug", envvar=DEBUG_ENV, help=f"On an error, also print its traceback (or set {DEBUG_ENV}=1)."
    ),
) -> None:
    """Options before the command name; `ErrorsToExitCodes.invoke` reads `--debug` from the context."""


def fail(msg: str) -> NoReturn:
    """End a command on input it refuses: one `error:` line and exit 2."""
    print_error(msg)
    raise typer.Exit(EXIT_INPUT)


def write_json(path: Path, obj: dict[str, Any]) -> None:
    from unictr.checkpoint import save_json

    save_json(obj, Path(path))
