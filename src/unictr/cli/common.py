"""What every `unictr` command shares: the Typer apps, the console, and the one-line error exit."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from unictr.config import Config, ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Unified multi-surface engagement model.")
data_app = typer.Typer(no_args_is_help=True, help="Make canonical data directories.")
registry_app = typer.Typer(no_args_is_help=True, help="Versioned surface models: publish, promote, roll back.")
experiment_app = typer.Typer(no_args_is_help=True, help="Experiments that compare model designs.")
app.add_typer(data_app, name="data")
app.add_typer(registry_app, name="registry")
app.add_typer(experiment_app, name="experiment")
console = Console()

DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "sim.yaml"


def fail(msg: str) -> NoReturn:
    """Print one `error:` line and exit 2 (the project's own errors never print a traceback)."""
    console.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(2)


def load(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        fail(str(e))


def write_json(path: Path, obj: dict[str, Any]) -> None:
    from unictr.checkpoint import save_json

    save_json(obj, Path(path))
