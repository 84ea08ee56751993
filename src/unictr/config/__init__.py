"""Configuration: pydantic models loaded from YAML.

One `Config` describes the data columns, the features, the surfaces and view types, the tasks, the
model's hyper-parameters and the training loop. Every field is validated; a bad file raises
`ConfigError` naming the file, the key path and what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, ValidationInfo, model_validator

from unictr.config.base import _Strict
from unictr.config.inputs import DataSpec, FeatureSpec, SequenceSpec, SurfaceSpec, TaskSpec
from unictr.config.jobs import Backend, ServeSpec, TrainSpec, WarmStartSpec
from unictr.config.model import (
    CalibrationSpec,
    DCNSpec,
    MMoESpec,
    ModelSpec,
    SequenceModelSpec,
    TowerSpec,
)

__all__ = [
    "Backend", "CalibrationSpec", "Config", "ConfigError", "DataSpec", "DCNSpec", "FeatureSpec", "MMoESpec",
    "ModelSpec", "SequenceModelSpec", "SequenceSpec", "ServeSpec", "SurfaceSpec", "TaskSpec", "TowerSpec", "TrainSpec",
    "WarmStartSpec",
    "config_from_dict", "cut_train_surfaces", "load_config", "with_changes",
]


class Config(_Strict):
    data: DataSpec = Field(default=DataSpec(), description="Names of the canonical key columns.")
    features: list[FeatureSpec] = Field(min_length=1, description="Input columns (see `features[]`).")
    sequence: SequenceSpec | None = Field(default=None, description="The user action sequence; null = none.")
    surfaces: list[SurfaceSpec] = Field(min_length=1, description="Surfaces and their view types.")
    tasks: list[TaskSpec] = Field(min_length=1, description="Engagement tasks (one head each per surface).")
    model: ModelSpec = Field(default=ModelSpec(), description="Model hyper-parameters.")
    train: TrainSpec = Field(default=TrainSpec(), description="Training loop.")

    @model_validator(mode="after")
    def _cross_check(self, info: ValidationInfo) -> Config:
        _unique("features", [f.name for f in self.features])
        _unique("surfaces", [s.name for s in self.surfaces])
        _unique("tasks", [t.name for t in self.tasks])
        _unique("tasks[].label", [t.label for t in self.tasks])
        for s in self.surfaces:
            _unique(f"surfaces.{s.name}.view_types", s.view_types)
        sizes = {f.name: f.hash_size for f in self.features if f.hash_size}
        if sum(sizes.values()) >= 2**31:  # the fused table's rows: modules/native.py indexes them with int32
            big = max(sizes, key=sizes.__getitem__)
            raise ValueError(f"features.{big}.hash_size: {sizes[big]}; every hash_size together (the fused embedding "
                             f"table's rows) must be at most 2**31 - 1 = 2147483647, got {sum(sizes.values())}")
        surfaces = {s.name for s in self.surfaces}
        by_name = {f.name: f for f in self.features}
        for f in self.features:
            owner = by_name.get(f.table) if f.table else None
            if f.table and (owner is None or owner.kind != "categorical" or owner.table or owner.towers):
                raise ValueError(
                    f"features.{f.name}.table: {f.table!r} must name a categorical trunk feature that owns its table"
                )
            bad = set(f.towers) - surfaces
            if bad:
                raise ValueError(
                    f"features.{f.name}.towers: unknown surface(s) {sorted(bad)}; known {sorted(surfaces)}"
                )
        if self.train.embedding_decay_skip and self.train.embedding_optimizer != "adamw":
            raise ValueError(
                "train.embedding_decay_skip: applies to embedding_optimizer adamw only, got "
                f"{self.train.embedding_optimizer!r}"
            )
        for name in self.train.embedding_decay_skip:
            f = by_name.get(name)
            if f is None or f.kind != "categorical" or f.table:
                raise ValueError(
                    f"train.embedding_decay_skip: {name!r} must name a categorical feature that owns its table"
                )
        for key, named in (("surface_sample", self.train.surface_sample),
                           ("warm_start.new_surfaces_from", self.train.warm_start.new_surfaces_from)):
            bad = set(named) - surfaces
            if bad:
                raise ValueError(f"train.{key}: unknown surface(s) {sorted(bad)}; known {sorted(surfaces)}")
        for t in self.tasks:
            if t.surfaces == [] and not (info.context or {}).get("placeholder_tasks"):
                raise ValueError(f"tasks.{t.name}.surfaces: empty; list at least one surface, or null for all")
            bad = set(t.surfaces or []) - surfaces
            if bad:
                raise ValueError(f"tasks.{t.name}.surfaces: unknown surface(s) {sorted(bad)}; known {sorted(surfaces)}")
        if self.sequence is not None:
            named = {"sequence.item_feature": self.sequence.item_feature}
            named.update({f"sequence.side_features.{c}": n for c, n in self.sequence.side_features.items()})
            for key, name in named.items():
                feat = next((f for f in self.features if f.name == name), None)
                if feat is None or feat.kind != "categorical" or feat.side != "candidate" or feat.towers:
                    raise ValueError(f"{key}: {name!r} must name a candidate-side categorical trunk feature")
        return self

    # Derived views used across the package.
    def table_of(self, name: str) -> str:
        """The feature whose embedding table `name` uses (itself unless it shares one)."""
        return next(f.table or f.name for f in self.features if f.name == name)

    def table_owner(self, name: str) -> FeatureSpec:
        """The spec of the feature that owns `name`'s embedding table (its size and encoding)."""
        owner = self.table_of(name)
        return next(f for f in self.features if f.name == owner)

    def hash_size(self, name: str) -> int:
        return int(self.table_owner(name).hash_size or 0)

    def modulo(self, name: str) -> bool:
        """Whether `name`'s ids become rows by modulo (its table owner's `encoding`), not by hashing."""
        return self.table_owner(name).encoding == "modulo"

    def feature_names(self, side: str, kind: str) -> list[str]:
        return [f.name for f in self.features if f.side == side and f.kind == kind]

    @property
    def surface_names(self) -> list[str]:
        return [s.name for s in self.surfaces]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task_surface_mask(self) -> list[list[bool]]:
        """[surface][task]: whether the task applies on the surface."""
        return [[t.surfaces is None or s.name in t.surfaces for t in self.tasks] for s in self.surfaces]


def _unique(key: str, names: list[str]) -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{key}: duplicate value(s) {dup}; each may appear once")


class ConfigError(ValueError):
    """A config file or dict that does not validate; the message names the key."""


def config_from_dict(raw: object, source: str = "<dict>", *, placeholder_tasks: bool = False) -> Config:
    """`raw` validated; `placeholder_tasks` accepts tasks with `surfaces: []`, which only an export's config
    holds (see `TaskSpec.surfaces`): a config to train from needs each task to apply somewhere."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw, context={"placeholder_tasks": placeholder_tasks})
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "<root>"
            got = err.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{loc}: {err['msg']}{got_s}")
        raise ConfigError(f"{source}: invalid config:\n  " + "\n  ".join(lines)) from None


def cut_train_surfaces(raw: dict[str, Any], keep: set[str]) -> None:
    """Drop the train options keyed by a surface outside `keep` from a dumped config (a config cut to some
    surfaces: an export's, stage 1's)."""
    train = raw["train"]
    train["surface_sample"] = {k: v for k, v in train["surface_sample"].items() if k in keep}
    ws = train["warm_start"]
    ws["new_surfaces_from"] = {k: v for k, v in ws["new_surfaces_from"].items() if k in keep}


def with_changes(cfg: Config, section: str, **changes: Any) -> Config:
    """`cfg` with keys of one section changed, validated again; `section` is dotted (`train`,
    `model.tower`, `model.calibration`, `sequence`, ...)."""
    raw = cfg.model_dump(mode="json")
    node = raw
    for key in section.split("."):
        node = node[key]
    node |= changes
    placeholders = any(t.surfaces == [] for t in cfg.tasks)  # an export's config stays one
    return config_from_dict(raw, f"<config with {section} {changes}>", placeholder_tasks=placeholders)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """The YAML config at `path` with `overrides` (`config_overrides`) applied, then validated as one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not overrides or not isinstance(raw, dict):
        return config_from_dict(raw, str(path))
    from unictr.config_overrides import apply_overrides  # the command line's concern, kept out of the models

    return config_from_dict(apply_overrides(raw, overrides), f"{path} with --set {' --set '.join(overrides)}")
