"""Cut a unified config and its weights down to one surface.

`prune_config` is the one surface-pruning rule for the whole tree: an export keeps the trunk's shapes
(so the unified model's weights slice into it), a model trained on one surface alone (the experiment's
`separate` arm) keeps only what applies there. `prune_state` slices the weights, each parameter by an
explicit rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from unictr.config import Config, config_from_dict, cut_train_surfaces
from unictr.data.batch import Batch, Schema
from unictr.export import ExportError
from unictr.model import UnifiedCTR

# Parameters that every surface shares: copied unchanged.
_SHARED_PREFIXES = (
    "user_dense.", "cand_dense.", "sequence.", "target_attention.", "activation_unit.", "mmoe.first.", "mmoe.w2",
    "mmoe.b2", "projection.",
)
# The learned calibration tensors, keyed by the model's calibration scope.
_SCOPED_CALIBRATION = ("calibration.log_temperature", "calibration.bias")

Slicer = Callable[[Tensor], Tensor]


def prune_config(cfg: Config, surface: str, *, keep_shapes: bool) -> Config:
    """The config of a model that serves only `surface`: that surface, the trunk features and its tower features.

    `keep_shapes=True` (an export, whose weights are sliced from the unified model): every task stays
    (the DCN input is tasks × expert_dim) with `surfaces` set to `[surface]` where it applies there,
    else `[]`; with a shared tower every tower feature stays too, since that tower fuses them all.
    `keep_shapes=False` (a model trained on `surface` alone): only the tasks that apply there, applying
    everywhere, and only `surface`'s own tower features.
    """
    if surface not in cfg.surface_names:
        raise ExportError(f"unknown surface {surface!r}; the run knows {cfg.surface_names}")
    every_tower = keep_shapes and not cfg.model.tower.per_surface
    raw = cfg.model_dump(mode="json")
    raw["surfaces"] = [s for s in raw["surfaces"] if s["name"] == surface]
    cut_train_surfaces(raw, {surface})
    raw["features"] = [
        {**f, "towers": [surface]} if f["towers"] else f
        for f in raw["features"]
        if not f["towers"] or surface in f["towers"] or every_tower
    ]
    applies = dict(zip(cfg.task_names, cfg.task_surface_mask()[cfg.surface_names.index(surface)], strict=True))
    if keep_shapes:
        raw["tasks"] = [{**t, "surfaces": [surface] if applies[t["name"]] else []} for t in raw["tasks"]]
    else:
        raw["tasks"] = [{**t, "surfaces": None} for t in raw["tasks"] if applies[t["name"]]]
    return config_from_dict(raw, f"pruned config for surface {surface!r}", placeholder_tasks=keep_shapes)


@dataclass(frozen=True)
class _SurfaceRows:
    """Where one surface's entries sit in the unified model's tensors that are keyed by surface."""

    surface: int
    num_surfaces: int
    num_view_keys: int
    view_rows: list[int]
    embedding_rows: Tensor  # the kept tables' rows of the fused table, in the pruned order
    scope_rows: list[int]  # rows of the learned calibration tensors
    tower: int

    @classmethod
    def of(cls, full: UnifiedCTR, pruned: UnifiedCTR, surface: str) -> _SurfaceRows:
        fs = full.schema
        s = fs.surfaces.index(surface)
        view_rows = [i for i, (name, _) in enumerate(fs.view_keys) if name == surface]
        starts = full.embedding.table_offsets(pruned.embedding.names).tolist()
        emb_rows = torch.cat([torch.arange(0)] + [
            torch.arange(a, a + size) for a, size in zip(starts, pruned.embedding.sizes, strict=True)
        ])
        scope_rows = {"view_type": view_rows, "surface": [s], "global": [0]}[full.calibration_scope]
        tower = s if full.cfg.model.tower.per_surface else 0
        return cls(s, len(fs.surfaces), len(fs.view_keys), view_rows, emb_rows, scope_rows, tower)


def _rows(idx: list[int] | Tensor) -> Slicer:
    return lambda t: t[torch.as_tensor(idx)]


def _whole(t: Tensor) -> Tensor:
    return t


def _by_key_dim(name: str, at: _SurfaceRows, target: torch.Size) -> Slicer:
    """Calibration tensors other than the learned ones (e.g. post-hoc): sliced by their leading dim."""

    def slice_keys(t: Tensor) -> Tensor:
        if t.shape == target:  # not keyed by view type or surface
            return t
        if t.shape[1:] == target[1:] and t.shape[0] == at.num_view_keys and target[0] == len(at.view_rows):
            return t[torch.as_tensor(at.view_rows)]
        if t.shape[1:] == target[1:] and t.shape[0] == at.num_surfaces and target[0] == 1:
            return t[at.surface : at.surface + 1]
        raise ExportError(
            f"parameter {name!r}: cannot tell how shape {tuple(t.shape)} maps to {tuple(target)}; "
            "add a pruning rule to unictr.export.prune.prune_state"
        )

    return slice_keys


def _rule(name: str, at: _SurfaceRows, target: torch.Size) -> tuple[str, Slicer]:
    """(source name in the unified state dict, slicer) for a pruned parameter name."""
    if name == "embedding.weight":
        return name, _rows(at.embedding_rows)
    if name == "view_embedding.weight":
        return name, _rows(at.view_rows)
    if name.startswith("mmoe.gate."):  # out dim laid out [surface, task, expert]
        return name, lambda t: t.view(at.num_surfaces, -1, *t.shape[1:])[at.surface]
    if name.startswith("towers.towers.0."):
        return name.replace("towers.towers.0.", f"towers.towers.{at.tower}.", 1), _whole
    if name in _SCOPED_CALIBRATION:
        return name, _rows(at.scope_rows)
    if name.startswith("calibration."):
        return name, _by_key_dim(name, at, target)
    if name.startswith(_SHARED_PREFIXES):
        return name, _whole
    raise ExportError(f"no pruning rule for parameter {name!r}; add one to unictr.export.prune.prune_state")


def prune_state(full: UnifiedCTR, pruned: UnifiedCTR, surface: str) -> dict[str, Tensor]:
    """`pruned`'s state dict with every tensor sliced out of `full`'s for `surface`.

    Each parameter has an explicit rule; a name without one, or a slice whose shape differs from
    the pruned model's, raises instead of copying something wrong.
    """
    at = _SurfaceRows.of(full, pruned, surface)
    source = full.state_dict()
    out: dict[str, Tensor] = {}
    for name, target in pruned.state_dict().items():
        src, slicer = _rule(name, at, target.shape)
        if src not in source:
            raise ExportError(f"parameter {name!r}: the unified model has no {src!r}")
        value = slicer(source[src])
        if value.shape != target.shape:
            raise ExportError(
                f"parameter {name!r}: sliced shape {tuple(value.shape)} != pruned model's {tuple(target.shape)}"
            )
        out[name] = value.detach().clone().contiguous()
    return out


def prune_model(full: UnifiedCTR, surface: str) -> UnifiedCTR:
    """The surface model with the unified model's weights, in eval mode."""
    pruned = UnifiedCTR(prune_config(full.cfg, surface, keep_shapes=True))
    pruned.load_state_dict(prune_state(full, pruned, surface), strict=True)
    return pruned.eval()


def to_surface_batch(b: Batch, full: Schema, pruned: Schema) -> Batch:
    """A unified-schema batch of one surface's rows re-expressed in the pruned model's schema."""
    view_index = {key: i for i, key in enumerate(pruned.view_keys)}
    return b.with_(
        cand_cat=b.cand_cat[:, [full.cand_cat.index(n) for n in pruned.cand_cat]],
        surface=torch.zeros_like(b.surface),
        view_key=torch.tensor([view_index[full.view_keys[k]] for k in b.view_key.tolist()], dtype=torch.int64),
        label_mask=torch.tensor(pruned.task_mask[0]).expand_as(b.label_mask).clone(),
    )
