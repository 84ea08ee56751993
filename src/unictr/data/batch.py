"""The `Batch` (broadcast layout) and the `Schema` that says which column goes where.

User-side tensors have a leading dimension of unique users (U), candidate-side tensors one row per
impression (N); `user_index[N]` maps each impression to its user. See docs/data.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from unictr.config import Config, SequenceSpec


@dataclass(frozen=True)
class Schema:
    """Column lists derived from a `Config`, in the order the tensors hold them."""

    user_cat: tuple[str, ...]
    user_cat_sizes: tuple[int, ...]
    user_dense: tuple[str, ...]
    cand_cat: tuple[str, ...]
    cand_cat_sizes: tuple[int, ...]
    cand_dense: tuple[str, ...]
    surfaces: tuple[str, ...]
    view_keys: tuple[tuple[str, str], ...]
    tasks: tuple[str, ...]
    labels: tuple[str, ...]
    task_mask: tuple[tuple[bool, ...], ...]
    sequence: SequenceSpec | None
    user_cat_modulo: tuple[bool, ...]  # per categorical feature: rows by modulo, not by hash (`encoding`)
    cand_cat_modulo: tuple[bool, ...]

    @classmethod
    def from_config(cls, cfg: Config) -> Schema:
        def cats(side: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
            names = cfg.feature_names(side, "categorical")
            return tuple(names), tuple(cfg.hash_size(n) for n in names)

        user_cat, user_sizes = cats("user")
        cand_cat, cand_sizes = cats("candidate")
        return cls(
            user_cat=user_cat,
            user_cat_sizes=user_sizes,
            user_dense=tuple(cfg.feature_names("user", "dense")),
            cand_cat=cand_cat,
            cand_cat_sizes=cand_sizes,
            cand_dense=tuple(cfg.feature_names("candidate", "dense")),
            surfaces=tuple(cfg.surface_names),
            view_keys=tuple((s.name, v) for s in cfg.surfaces for v in s.view_types),
            tasks=tuple(cfg.task_names),
            labels=tuple(t.label for t in cfg.tasks),
            task_mask=tuple(tuple(row) for row in cfg.task_surface_mask()),
            sequence=cfg.sequence,
            user_cat_modulo=tuple(cfg.modulo(n) for n in user_cat),
            cand_cat_modulo=tuple(cfg.modulo(n) for n in cand_cat),
        )

    @property
    def seq_tables(self) -> tuple[tuple[int, bool], ...]:
        """(hash size, modulo) of the sequence's item column, then of each side column: those of the
        candidate features whose tables they share."""
        if self.sequence is None:
            return ()
        at = [self.cand_cat.index(f) for f in (self.sequence.item_feature, *self.sequence.side_features.values())]
        return tuple((self.cand_cat_sizes[i], self.cand_cat_modulo[i]) for i in at)

    @property
    def item_hash_size(self) -> int:
        assert self.sequence is not None
        return self.seq_tables[0][0]

    @property
    def seq_side_sizes(self) -> tuple[int, ...]:
        """Hash size of each sequence side column (that of the candidate feature it shares a table with)."""
        return tuple(size for size, _ in self.seq_tables[1:])

    def view_key_surface(self) -> list[int]:
        """Surface index of each flattened (surface, view type) key."""
        return [self.surfaces.index(s) for s, _ in self.view_keys]


@dataclass(frozen=True)
class FieldSpec:
    """One `Batch` field: its side (`user`: leading dim U, `row`: leading dim N), dtype and shape, and
    whether the model reads it (the model's inputs are what an ONNX graph takes, in `MODEL_INPUTS` order)."""

    name: str
    side: Literal["user", "row"]
    dtype: torch.dtype
    shape: str
    model_input: bool = True
    optional: bool = False


# The Batch layout, declared once: the dataclass below, the ONNX inputs, the reader, the request encoder
# and export all derive from this list (docs/data.md has the table).
FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("user_cat", "user", torch.int64, "[U, Fu]"),
    FieldSpec("user_dense", "user", torch.float32, "[U, Du]"),
    FieldSpec("seq_item", "user", torch.int64, "[U, L]"),
    FieldSpec("seq_side", "user", torch.int64, "[U, L, Ks]"),  # side features of each event's item (Ks may be 0)
    FieldSpec("seq_action", "user", torch.int64, "[U, L]"),
    FieldSpec("seq_age", "user", torch.float32, "[U, L]"),  # seconds before the request
    FieldSpec("seq_mask", "user", torch.bool, "[U, L]"),  # left-padded
    FieldSpec("cand_cat", "row", torch.int64, "[N, Fc]"),
    FieldSpec("cand_dense", "row", torch.float32, "[N, Dc]"),
    FieldSpec("surface", "row", torch.int64, "[N]"),
    FieldSpec("view_key", "row", torch.int64, "[N]"),
    FieldSpec("user_index", "row", torch.int64, "[N]"),  # row -> its user
    FieldSpec("labels", "row", torch.float32, "[N, T]", model_input=False),
    FieldSpec("label_mask", "row", torch.bool, "[N, T]", model_input=False),
    FieldSpec("p_true", "row", torch.float32, "[N, T]", model_input=False, optional=True),  # simulator only
)
FIELD_NAMES = tuple(f.name for f in FIELDS)
USER_FIELDS = frozenset(f.name for f in FIELDS if f.side == "user")
# The tensors the model reads, in the order an exported graph takes them.
MODEL_INPUTS = tuple(f.name for f in FIELDS if f.model_input)
# A user's action sequence, in the order `columns.pad_sequences` returns it.
SEQUENCE_FIELDS = tuple(f.name for f in FIELDS if f.name.startswith("seq_"))


@dataclass
class Batch:
    """One batch in the broadcast layout: one attribute per entry of `FIELDS` (its side, dtype and shape)."""

    user_cat: Tensor  # [U, Fu] int64
    user_dense: Tensor  # [U, Du] float32
    seq_item: Tensor  # [U, L] int64
    seq_side: Tensor  # [U, L, Ks] int64: side features of each event's item (Ks may be 0)
    seq_action: Tensor  # [U, L] int64
    seq_age: Tensor  # [U, L] float32 seconds
    seq_mask: Tensor  # [U, L] bool, left-padded
    cand_cat: Tensor  # [N, Fc] int64
    cand_dense: Tensor  # [N, Dc] float32
    surface: Tensor  # [N] int64
    view_key: Tensor  # [N] int64
    user_index: Tensor  # [N] int64
    labels: Tensor  # [N, T] float32
    label_mask: Tensor  # [N, T] bool
    p_true: Tensor | None = None  # [N, T] float32

    @classmethod
    def from_numpy(cls, arrays: Mapping[str, np.ndarray | None]) -> Batch:
        """The Batch over numpy arrays already in its layout (one per field, e.g. an encoded request's):
        tensors that share their memory, nothing copied."""
        return cls(**{name: None if v is None else torch.from_numpy(v) for name, v in arrays.items()})

    @property
    def num_users(self) -> int:
        return self.user_cat.shape[0]

    @property
    def num_rows(self) -> int:
        return self.cand_cat.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: _move(getattr(self, f.name), device) for f in fields(self)})

    def take_users(self, users: Tensor) -> Batch:
        """The sub-batch of the given unique users (in that order) and all their rows.

        Rows of a user need not be contiguous; they keep their relative order.
        """
        dev = self.user_index.device
        users = users.to(dev)
        keep = torch.zeros(self.num_users, dtype=torch.bool, device=dev)
        keep[users] = True
        new_pos = torch.full((self.num_users,), -1, dtype=torch.int64, device=dev)
        new_pos[users] = torch.arange(len(users), device=dev)
        rows = torch.nonzero(keep[self.user_index], as_tuple=True)[0]
        # order rows by their user's new position (stable: keeps row order within a user)
        rows = rows[torch.argsort(new_pos[self.user_index[rows]], stable=True)]
        return self._take(users, rows, new_pos[self.user_index[rows]])

    def take_rows(self, rows: Tensor) -> Batch:
        """The sub-batch of the given rows (in that order) and their users, each once (for per-row models
        that shuffle rows across requests, e.g. the DIN baseline)."""
        users, user_index = torch.unique(self.user_index[rows], return_inverse=True)
        return self._take(users, rows, user_index)

    def slice_users(self, start: int, end: int) -> Batch:
        """Users `start:end` and their rows, as views: for a batch whose rows are grouped by user in user
        order (`user_index` non-decreasing, as `take_users` leaves them), where a minibatch is a slice."""
        ui = self.user_index
        first, last = torch.searchsorted(ui, torch.tensor([start, end], device=ui.device)).tolist()
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "user_index":
                out[f.name] = v[first:last] - start
            elif v is not None:
                out[f.name] = v[start:end] if f.name in USER_FIELDS else v[first:last]
            else:
                out[f.name] = None
        return Batch(**out)

    def broadcast_users(self) -> Batch:
        """The same batch with the user side repeated once per row (U == N), for equivalence checks."""
        ui = self.user_index
        rows = torch.arange(self.num_rows, device=ui.device)
        return self._take(ui, rows, rows)

    def _take(self, users: Tensor, rows: Tensor, user_index: Tensor) -> Batch:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "user_index":
                out[f.name] = user_index
            elif v is None:
                out[f.name] = None
            else:
                out[f.name] = v[users] if f.name in USER_FIELDS else v[rows]
        return Batch(**out)

    def with_(self, **changes: object) -> Batch:
        return replace(self, **changes)


def _move(v: Tensor | None, device: torch.device | str) -> Tensor | None:
    return None if v is None else v.to(device, non_blocking=True)


def concat_batches(batches: list[Batch]) -> Batch:
    """Concatenate batches, offsetting `user_index` so rows still point at their users."""
    offsets = np.cumsum([0] + [b.num_users for b in batches[:-1]])
    out = {}
    for f in fields(Batch):
        vals = [getattr(b, f.name) for b in batches]
        if f.name == "user_index":
            out[f.name] = torch.cat([v + int(o) for v, o in zip(vals, offsets, strict=True)])
        elif any(v is None for v in vals):
            out[f.name] = None
        else:
            out[f.name] = torch.cat(vals)
    return Batch(**out)
