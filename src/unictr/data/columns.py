"""The one encoder of canonical columns into the `Batch` layout, shared by the reader and the request encoder.

Each caller validates its own input form (an Arrow table, a request) and hands over numpy columns;
this module hashes, gathers, pads and lays them out as the `FIELDS` of `data/batch.py`, so a file
and a request encode alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from unictr.data.batch import FIELDS, SEQUENCE_FIELDS, Schema
from unictr.data.encode import table_rows
from unictr.data.errors import DataError

# The sequence fields of a Batch (SEQUENCE_FIELDS, in that order) as numpy arrays.
SequenceArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
FIELD_SET = frozenset(f.name for f in FIELDS)
# Optional fields a caller may leave out (they become None).
OPTIONAL_FIELDS = frozenset(f.name for f in FIELDS if f.optional)


class SideColumns(NamedTuple):
    """Validated feature columns of one side (user or candidate), before encoding.

    `ids`: either one `[F, M]` int64 matrix, hashed in one vectorised call (a request: its cost is the
    number of numpy calls), or one 1-D integer array per feature, each hashed with its table size as a
    scalar (a file: its cost is the rows, and numpy divides by a scalar faster than by an array).
    `dense`: one 1-D numeric array per feature. `take`: the positions of the side's rows in those
    columns (`slice(0, n)`: the first n, in order).
    """

    ids: np.ndarray | Sequence[np.ndarray]
    dense: Sequence[np.ndarray]
    take: np.ndarray | slice


def encode_columns(
    schema: Schema, users: SideColumns, candidates: SideColumns, sequences: SequenceArrays, **rows: np.ndarray | None
) -> dict[str, np.ndarray | None]:
    """The Batch fields (one per entry of `FIELDS`): the users' and candidates' feature matrices (hashed
    ids, float32 dense), the sequence arrays (`pad_sequences`) and the other row fields `rows` as given
    (optional ones left out are None)."""
    fields: dict[str, np.ndarray | None] = {
        "user_cat": id_matrix(users.ids, schema.user_cat_sizes, schema.user_cat_modulo, users.take),
        "user_dense": dense_matrix(users.dense, users.take),
        **dict(zip(SEQUENCE_FIELDS, sequences, strict=True)),
        "cand_cat": id_matrix(candidates.ids, schema.cand_cat_sizes, schema.cand_cat_modulo, candidates.take),
        "cand_dense": dense_matrix(candidates.dense, candidates.take),
        **rows,
    }
    for name in OPTIONAL_FIELDS - rows.keys():
        fields[name] = None
    if fields.keys() != FIELD_SET:
        raise TypeError(f"encode_columns: fields {sorted(fields)}, not the Batch's {sorted(FIELD_SET)}")
    return fields


def id_matrix(
    ids: np.ndarray | Sequence[np.ndarray], sizes: tuple[int, ...], modulo: tuple[bool, ...], take: np.ndarray | slice
) -> np.ndarray:
    """Table rows `[rows of take, F]` int64 of F id columns (see `SideColumns.ids` for the two forms), each
    column by its table's size and encoding (`table_rows`)."""
    if isinstance(ids, np.ndarray):  # [F, M]: one vectorised call (one size per column), then rows in `take` order
        return np.ascontiguousarray(table_rows(ids, np.asarray(sizes)[:, None], np.asarray(modulo)[:, None]).T[take])
    out = np.empty((_rows(take), len(sizes)), dtype=np.int64)
    for j, (col, size, mod) in enumerate(zip(ids, sizes, modulo, strict=True)):
        out[:, j] = table_rows(col[take], size, mod)
    return out


def dense_matrix(columns: Sequence[np.ndarray], take: np.ndarray | slice) -> np.ndarray:
    """Dense values `[rows of take, F]` float32: each column's values at the positions `take`."""
    out = np.empty((_rows(take), len(columns)), dtype=np.float32)
    for j, col in enumerate(columns):
        out[:, j] = col[take]
    return out


def _rows(take: np.ndarray | slice) -> int:
    """How many rows the positions `take` select (a slice here is `slice(0, n)`)."""
    return take.stop if isinstance(take, slice) else len(take)


def no_sequences(users: int) -> SequenceArrays:
    """The placeholder sequence arrays (`L` = 1, nothing visible) of a config without a sequence."""
    z = np.zeros((users, 1), dtype=np.int64)
    side = np.zeros((users, 1, 0), dtype=np.int64)
    return z, side, z.copy(), np.zeros((users, 1), dtype=np.float32), np.zeros((users, 1), dtype=bool)


def pad_sequences(
    lo: np.ndarray, hi: np.ndarray, events: np.ndarray, req_ts: np.ndarray, schema: Schema, source: str
) -> SequenceArrays:
    """Left-padded item `[U, L]`, side `[U, L, Ks]`, action, age and mask `[U, L]` arrays from flat events.

    `events` is `[1 + Ks + 2, E]` int64: rows item, each side column, action, time (ms). User u's events
    are columns `lo[u]:hi[u]`, in any order: `time_ordered` sorts them by time, and the newest L are
    kept, the newest at L-1. Shared by the reader and the serving request encoder so both encode alike.
    All rows are gathered by one call (a serving request is one user, whose cost is the number of calls,
    not the data); each id row (item, sides) is hashed by its own, with its table's size as a scalar:
    numpy divides by a scalar faster than by an array, which is what a reader's million events cost.
    """
    spec = schema.sequence
    assert spec is not None
    events, lo, hi = time_ordered(events, lo, hi)
    length = spec.max_len
    pos = hi[:, None] - length + np.arange(length)[None, :]  # newest event lands at L-1
    mask = pos >= lo[:, None]
    safe = np.where(mask, pos, 0)
    ev = np.take(events, safe, axis=1) if events.shape[1] else np.zeros((len(events), *safe.shape), dtype=np.int64)
    age_ms = req_ts[:, None] - ev[-1]
    if (age_ms[mask] <= 0).any():
        raise DataError(f"{source}: column {spec.time_column!r} holds an event at or after its row's timestamp")
    tables = schema.seq_tables  # each id row's table: (size, modulo)
    ids = np.empty((len(tables), *mask.shape), dtype=np.int64)  # [1 + Ks, U, L]
    for k, (size, mod) in enumerate(tables):
        ids[k] = table_rows(ev[k], size, mod)
    ids *= mask  # padding is row 0
    return (
        ids[0],
        np.ascontiguousarray(np.moveaxis(ids[1:], 0, -1)),
        np.where(mask, ev[-2] % spec.num_actions, 0),
        np.where(mask, age_ms / 1000.0, 0.0).astype(np.float32),
        mask,
    )


def time_ordered(events: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(events, lo, hi) with each user's events `lo[u]:hi[u]` (disjoint, in increasing order) sorted by
    time (the last row of `events`), oldest first; events at equal times keep their stored order.

    The one rule of event order, for files and requests alike (docs/data.md): which events are the
    newest `max_len` depends on their times, never on how they were stored. Only the users' times are
    read (a file's later rows of a request repeat its first row's events); users whose events are
    already in order (every writer here) leave `events` as it is, at one comparison per event.
    """
    counts = hi - lo
    end = np.cumsum(counts)
    total = int(end[-1]) if len(end) else 0
    take = np.repeat(lo - (end - counts), counts) + np.arange(total)  # the users' events, user by user
    t = np.take(events[-1], take)
    back = t[1:] < t[:-1]  # i: event i+1 is older than event i
    between = end[:-1][(end[:-1] > 0) & (end[:-1] < total)] - 1  # i: events i and i+1 of two users
    back[between] = False
    if not back.any():
        return events, lo, hi
    owner = np.repeat(np.arange(len(counts)), counts)
    return events[:, take[np.lexsort((t, owner))]], end - counts, end
