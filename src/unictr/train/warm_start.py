"""Warm start: a new model (a config with more surfaces, view types, tasks or larger tables) initialised
from a trained run's verified checkpoint, entry by entry where the two agree.

Tensors are matched by name, and along the axes that a config keys by name, entry by entry by that name:
the fused embedding's rows by (table, row), the view embedding, the learned and post-hoc calibration by
view key (or surface) and task, the MMoE gates by (surface, task, expert), the towers by surface and their
heads by task, the DCN projection's input by (task, expert output). So a config that adds or reorders
surfaces, view types or tasks loads every old cell where it now sits; what has no old counterpart keeps its
fresh initialisation. A table whose hash size grew keeps its old rows (its ids hash differently from now
on: the new rows start fresh). An axis that is not keyed must keep its size; a tensor whose shape cannot
be mapped is refused, all of them in one `WarmStartError`.

Where a new task widens the projection's input, the weights from the new task's block into the old
outputs start at zero (the rest of the new block as initialised), so the warm-started model scores the old
surface × task cells exactly as the old model did until it trains.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from unictr.checkpoint import (
    MODEL_FILE,
    CheckpointError,
    current_dir,
    load_config_from_manifest,
    load_tensors,
    read_manifest,
)
from unictr.config import Config, WarmStartSpec
from unictr.data.batch import Schema

Segments = list[tuple[Hashable, int]]  # an axis keyed by name: (key, entries) blocks in order
# The DCN projection's axes of width tasks × expert_dim (cross layers full or low rank, then the projection).
_PROJECTION_AXES = {"w.weight": (0, 1), "w.bias": (0,), "w.0.weight": (1,), "w.1.weight": (0,), "w.1.bias": (0,),
                    "proj.0.weight": (1,)}


class WarmStartError(CheckpointError):
    """A warm start whose source tensors cannot be mapped onto the new model's shapes."""


@dataclass
class _Layout:
    """How one model's config keys the axes of its tensors."""

    schema: Schema
    tables: Segments
    per_surface_towers: bool
    scope: str
    expert_dim: int
    experts: int
    alias: dict[str, str] = field(default_factory=dict)  # new surface -> the old surface whose entries it takes

    @classmethod
    def of(cls, cfg: Config, alias: Mapping[str, str] | None = None) -> _Layout:
        s = Schema.from_config(cfg)
        owners = [f.name for f in cfg.features if f.kind == "categorical" and f.table is None]
        mm = cfg.model.mmoe
        return cls(s, [(n, cfg.hash_size(n)) for n in owners], cfg.model.tower.per_surface,
                   cfg.model.calibration.scope, mm.expert_dim, mm.experts if mm.enabled else 1, dict(alias or {}))

    def axes(self, name: str, ndim: int) -> dict[int, Segments]:
        """The keyed axes of tensor `name` (the others must keep their size). A surface in `alias` is keyed
        as the old surface it copies, except in the post-hoc calibration (fit on each surface's own rows)."""
        s, tasks = self.schema, self.schema.tasks
        one = lambda keys: [(k, 1) for k in keys]  # noqa: E731
        surfaces = [self.alias.get(sf, sf) for sf in s.surfaces]
        view_keys = [(self.alias.get(sf, sf), v) for sf, v in s.view_keys]
        if name == "embedding.weight":
            return {0: self.tables}
        if name == "view_embedding.weight":
            return {0: one(view_keys)}
        if name.startswith("mmoe.gate."):
            return {0: [((sf, t, e), 1) for sf in surfaces for t in tasks for e in range(self.experts)]}
        if name.startswith("towers.towers.") and ".heads." in name:
            return {0: one(tasks)}
        if name in ("calibration.log_temperature", "calibration.bias"):
            scope_keys = {"view_type": view_keys, "surface": surfaces, "global": ["global"]}[self.scope]
            return {0: one(scope_keys), 1: one(tasks)}
        if name.startswith("calibration.posthoc."):
            return {0: one(s.view_keys), 1: one(tasks)}
        if name.startswith("projection."):  # the DCN's width is tasks × expert_dim
            blocks = [(t, self.expert_dim) for t in tasks]
            return {a: blocks for a in _PROJECTION_AXES.get(name.split(".", 3)[-1] if ".cross." in name
                                                           else name.removeprefix("projection."), ())}
        return {}

    def source_name(self, name: str, old: _Layout) -> str | None:
        """The tensor of the old model that `name` takes its entries from (towers by surface name)."""
        if not (name.startswith("towers.towers.") and self.per_surface_towers and old.per_surface_towers):
            return name
        index, rest = name.removeprefix("towers.towers.").split(".", 1)
        surface = self.schema.surfaces[int(index)]
        surface = self.alias.get(surface, surface)
        if surface not in old.schema.surfaces:
            return None
        return f"towers.towers.{old.schema.surfaces.index(surface)}.{rest}"


@dataclass
class WarmStart:
    """What a warm start did: tensors loaded whole, new, and partly loaded (`resized`: old → new shape,
    entries copied); `frozen`/`lr_multiplier` as applied. `as_dict` is what the run's manifest records."""

    source: str
    surfaces_from: dict[str, str] = field(default_factory=dict)
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    resized: dict[str, dict[str, Any]] = field(default_factory=dict)
    frozen: list[str] = field(default_factory=list)
    lr_multiplier: float = 1.0
    masks: dict[str, Tensor] = field(default_factory=dict, repr=False)  # per tensor: which entries are old

    def as_dict(self) -> dict[str, Any]:
        return {"from": self.source, "surfaces_from": self.surfaces_from, "loaded": self.loaded, "new": self.new,
                "resized": self.resized, "frozen": self.frozen, "lr_multiplier": self.lr_multiplier}

    def summary(self) -> str:
        """The lines `unictr train` prints."""
        lines = [f"warm start from {self.source}: {len(self.loaded)} tensors loaded, {len(self.resized)} resized, "
                 f"{len(self.new)} new"]
        lines += [f"  surface {new} starts as a copy of {old}" for new, old in self.surfaces_from.items()]
        lines += [f"  resized {n}: {r['from']} -> {r['to']} ({r['copied']:,} entries kept)"
                  for n, r in self.resized.items()]
        lines += [f"  new {n}" for n in self.new]
        if self.frozen:
            lines.append(f"  frozen: {', '.join(self.frozen)}")
        return "\n".join(lines)


def _axis_map(new: Segments, old: Segments, growable: bool) -> tuple[Tensor, Tensor] | str:
    """(target indices, source indices) of the entries whose key both axes have, or why they cannot map."""
    where, start = {}, 0
    for key, n in old:
        where[key] = (start, n)
        start += n
    dst, src, at = [], [], 0
    for key, n in new:
        if key in where:
            s0, m = where[key]
            if m != n and not (growable and n > m):
                return f"{key!r} has {m} entries, now {n}"
            dst.append(torch.arange(at, at + min(n, m)))
            src.append(torch.arange(s0, s0 + min(n, m)))
        at += n
    empty = torch.zeros(0, dtype=torch.int64)
    return torch.cat([empty, *dst]), torch.cat([empty, *src])


def _grid(index: list[Tensor]) -> tuple[Tensor, ...]:
    """Open-mesh index tensors (numpy's `ix_`) for advanced indexing along every axis."""
    nd = len(index)
    return tuple(ix.view(*[-1 if a == k else 1 for a in range(nd)]) for k, ix in enumerate(index))


def _copy(name: str, target: Tensor, source: Tensor, new: _Layout, old: _Layout) -> Tensor | str:
    """Copy `source`'s entries into `target` (in place); returns the mask of copied entries or why not."""
    if target.dim() != source.dim():
        return f"{tuple(source.shape)} -> {tuple(target.shape)}"
    keyed_new, keyed_old = new.axes(name, target.dim()), old.axes(name, source.dim())
    dst, src = [], []
    for a in range(target.dim()):
        if a in keyed_new and a in keyed_old:
            mapped = _axis_map(keyed_new[a], keyed_old[a], growable=name == "embedding.weight")
            if isinstance(mapped, str):
                return f"{tuple(source.shape)} -> {tuple(target.shape)} (axis {a}: {mapped})"
            dst.append(mapped[0])
            src.append(mapped[1])
        elif target.shape[a] == source.shape[a]:
            dst.append(torch.arange(target.shape[a]))
            src.append(torch.arange(source.shape[a]))
        else:
            return f"{tuple(source.shape)} -> {tuple(target.shape)}"
    mask = torch.zeros(target.shape, dtype=torch.bool)
    with torch.no_grad():
        target[_grid(dst)] = source[_grid(src)].to(target.dtype)
        mask[_grid(dst)] = True
        if name.startswith("projection.") and target.dim() == 2 and 1 in keyed_new:  # no path new -> old
            rows = dst[0]
            fresh = torch.ones(target.shape[1], dtype=torch.bool)
            fresh[dst[1]] = False
            target[rows[:, None], fresh.nonzero().view(1, -1)] = 0.0
    return mask


def _plan(model: torch.nn.Module, cfg: Config, state: dict[str, Tensor], old_cfg: Config, source: str) -> WarmStart:
    """Copy every mappable entry of `state` into `model`; raise WarmStartError listing what cannot map."""
    targets = model.state_dict()
    alias = cfg.train.warm_start.new_surfaces_from
    wrong = {n: o for n, o in alias.items() if n in old_cfg.surface_names or o not in old_cfg.surface_names}
    if wrong:
        raise WarmStartError(f"train.warm_start.new_surfaces_from {wrong}: each entry maps a surface the old run "
                             f"({source}) lacks to one it has; it has {old_cfg.surface_names}")
    new, old = _Layout.of(cfg, alias), _Layout.of(old_cfg)
    ws, bad = WarmStart(source, dict(alias)), []
    for name, target in targets.items():
        src = new.source_name(name, old)
        if src is None or src not in state:
            ws.new.append(name)
            continue
        got = _copy(name, target, state[src], new, old)
        if isinstance(got, str):
            bad.append(f"{name}: {got}")
        elif bool(got.all()) and target.shape == state[src].shape:
            ws.loaded.append(name)
            ws.masks[name] = got
        elif bool(got.any()):
            ws.resized[name] = {"from": list(state[src].shape), "to": list(target.shape), "copied": int(got.sum())}
            ws.masks[name] = got
        else:
            ws.new.append(name)
    if bad:
        raise WarmStartError(f"{source}: cannot warm-start from it, incompatible shapes (old -> new): "
                             + "; ".join(bad))
    return ws


def warm_start(model: torch.nn.Module, cfg: Config, run: str | Path) -> WarmStart:
    """Load the run's current checkpoint (verified) into `model` wherever names and keys match."""
    where = current_dir(run)
    manifest = read_manifest(where)
    old_cfg = load_config_from_manifest(manifest, str(where))
    return _plan(model, cfg, load_tensors(where, MODEL_FILE, manifest), old_cfg, str(run))


def apply_options(model: torch.nn.Module, opt: torch.optim.Optimizer, ws: WarmStart, spec: WarmStartSpec) -> None:
    """`train.warm_start`: freeze the old entries of the tensors under `spec.freeze` (whole tensors stop
    training; the old entries of a partly loaded one are put back after every step), and put the
    tensors loaded whole into their own parameter groups at `lr_multiplier` times their LR."""
    params = dict(model.named_parameters())
    frozen = sorted(n for n in ws.masks if n.startswith(tuple(spec.freeze)))
    unknown = [p for p in spec.freeze if not any(n.startswith(p) for n in ws.masks)]
    if unknown:
        raise ValueError(f"train.warm_start.freeze: {unknown} match no loaded tensor; loaded: "
                         f"{sorted({n.split('.')[0] for n in ws.masks})}")
    ws.frozen, ws.lr_multiplier = frozen, spec.lr_multiplier
    restore: list[tuple[Tensor, Tensor, Tensor]] = []
    for name in frozen:
        if name in ws.loaded and name in params:
            params[name].requires_grad_(False)
        elif name in params:
            mask = ws.masks[name].to(params[name].device)
            restore.append((params[name], mask, params[name].detach()[mask].clone()))
    if restore:
        opt.register_step_post_hook(lambda *_: _put_back(restore))
    if spec.lr_multiplier != 1.0:
        _split_groups(opt, {id(params[n]) for n in ws.loaded if n in params}, spec.lr_multiplier)
        fused = getattr(getattr(model, "embedding", None), "fused_update", None)
        if fused is not None and "embedding.weight" in ws.loaded:  # its own optimizer, outside the groups
            fused.lr *= spec.lr_multiplier


@torch.no_grad()
def _put_back(saved: list[tuple[Tensor, Tensor, Tensor]]) -> None:
    for param, mask, values in saved:
        param[mask] = values


def _split_groups(opt: torch.optim.Optimizer, old: set[int], multiplier: float) -> None:
    """Move the old tensors of each parameter group into a copy of the group at `multiplier` × its LR."""
    for group in list(opt.param_groups):
        moved = [p for p in group["params"] if id(p) in old]
        if not moved:
            continue
        group["params"] = [p for p in group["params"] if id(p) not in old]
        opt.add_param_group({**{k: v for k, v in group.items() if k != "params"}, "params": moved,
                             "lr": group["lr"] * multiplier})
    opt.param_groups[:] = [g for g in opt.param_groups if g["params"]]
