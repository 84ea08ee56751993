"""`--set SECTION.KEY=VALUE` on the command line: changes to a config mapping before it is validated."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from unictr.config import ConfigError


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """`raw` (a config mapping, changed in place) with each `section.key=value` set; the value is read as
    YAML (`1`, `0.5`, `true`, `null`, `[a, b]`, `mean_pool`). Sections absent from the file are created;
    an unknown key is refused by the validation that follows."""
    for item in overrides:
        key, sep, value = item.partition("=")
        path = key.strip().split(".")
        if not sep or not all(path):
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. --set train.epochs=1")
        node = raw
        for i, part in enumerate(path[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(f"--set {item!r}: {where} is a {type(node).__name__}, not a section; edit the "
                                  "YAML to change it")
        try:
            node[path[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML: {e}") from None
    return raw
