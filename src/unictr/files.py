"""Reading a text document (a manifest, a config) with its two failures turned into one domain error."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def read_parsed(
    path: Path,
    parse: Callable[[str], T],
    parse_error: type[Exception],
    error: type[Exception],
    missing: str,
    invalid: str,
) -> T:
    """`parse` of the text at `path`; raises `error("<path>: <missing>")` when it is not a file and
    `error("<path>: <invalid>: <reason>")` when `parse` raises `parse_error`."""
    if not path.is_file():
        raise error(f"{path}: {missing}")
    try:
        return parse(path.read_text())
    except parse_error as e:
        raise error(f"{path}: {invalid}: {e}") from None
