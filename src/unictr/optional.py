"""Optional dependencies (the `onnx` extra): import one, or stop with one line naming the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(ValueError):
    """An optional package a command needs is not installed."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """`module`, imported; MissingExtra saying how to install `extra` when it (not one of its own imports)
    is missing."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise MissingExtra(
            f"{purpose} needs the optional package {module!r}; install the '{extra}' extra: "
            f"pip install -c constraints.txt -e '.[{extra}]'"
        ) from None
