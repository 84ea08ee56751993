"""Canonical Arrow rows → `Batch`: the validation of columns and requests, and the encoding.

Validation happens here, once, with messages that name the source file and the column, so nothing
downstream sees a NaN, an unknown surface, a ragged sequence, a wrapped-around id or a request
whose rows disagree on the user side. The split-level readers (`reader`, `stream`) hand tables of
whole requests here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unictr.config import DataSpec
from unictr.data.batch import Batch, Schema
from unictr.data.columns import SequenceArrays, SideColumns, dense_matrix, encode_columns, no_sequences, pad_sequences
from unictr.data.encode import outside_modulo_table
from unictr.data.errors import DataError


def check_requests(
    table: pa.Table, schema: Schema, keys: DataSpec, source: str = "<table>", first_row: int = 0
) -> None:
    """Refuse rows of one request that are not contiguous, or whose user-side features differ: the
    encoder takes a request's user side from its first row (docs/data.md, "Requests"). `first_row`:
    the source row of the table's first row, so that messages name rows of the file."""
    rid = int_column(table, keys.request_id, source)
    check_contiguous(rid, keys, source, first_row)
    same = rid[1:] == rid[:-1]  # row i+1 continues row i's request
    users = {c: int_column(table, c, source) for c in schema.user_cat}
    users |= dict(zip(schema.user_dense, _dense_columns(table, schema.user_dense, source), strict=True))
    for name, values in users.items():
        differs = np.flatnonzero(same & (values[1:] != values[:-1]))
        if len(differs):
            row = first_row + int(differs[0])
            raise DataError(
                f"{source}: user-side column {name!r} differs between rows of {keys.request_id} "
                f"{rid[differs[0]]} (rows {row} and {row + 1}); a request has one user side"
            )


def check_contiguous(rid: np.ndarray, keys: DataSpec, source: str, first_row: int = 0) -> None:
    """Refuse request ids `rid` (one per row) whose rows have other requests between them."""
    same = rid[1:] == rid[:-1]
    runs = rid[np.r_[True, ~same]] if len(rid) else rid
    ids, count = np.unique(runs, return_counts=True)
    if (count > 1).any():
        bad = ids[count > 1][0]
        rows = np.flatnonzero(rid == bad)
        gap = first_row + rows[np.flatnonzero(np.diff(rows) > 1)[0] :][:2]
        raise DataError(
            f"{source}: the rows of {keys.request_id} {bad} are not contiguous (rows {gap[0]} and {gap[1]}, "
            "other requests between); write each request's rows together, e.g. sorted by request id"
        )


def encode_table(table: pa.Table, schema: Schema, keys: DataSpec, source: str = "<table>") -> Batch:
    """Validate and encode canonical rows holding whole requests (`check_requests`)."""
    check_requests(table, schema, keys, source)
    return encode_checked(table, schema, keys, source)


def encode_checked(table: pa.Table, schema: Schema, keys: DataSpec, source: str) -> Batch:
    """Validate the columns of rows whose requests `check_requests` passed, and encode them."""
    n = table.num_rows
    rid = int_column(table, keys.request_id, source)
    ts = int_column(table, keys.timestamp, source)
    # one user row per run of equal request ids (rows of a request are contiguous)
    starts = np.flatnonzero(np.r_[True, rid[1:] != rid[:-1]]) if n else np.zeros(0, dtype=np.int64)
    user_index = np.cumsum(np.r_[False, rid[1:] != rid[:-1]]) if n else np.zeros(0, dtype=np.int64)

    surface = _index_in(table, keys.surface, list(schema.surfaces), source)
    view_names = [f"{s}\x1f{v}" for s, v in schema.view_keys]
    view_col = pc.binary_join_element_wise(
        _string_column(table, keys.surface, source), _string_column(table, keys.view_type, source), "\x1f"
    )
    view_key = _index_in(pa.table({"v": view_col}), "v", view_names, source, label=keys.view_type)

    user_ids = [int_column(table, c, source) for c in schema.user_cat]
    users = SideColumns(user_ids, _dense_columns(table, schema.user_dense, source), starts)
    cand_ids = [int_column(table, c, source) for c in schema.cand_cat]
    check_codes(schema.user_cat, user_ids, schema.user_cat_sizes, schema.user_cat_modulo, source)
    check_codes(schema.cand_cat, cand_ids, schema.cand_cat_sizes, schema.cand_cat_modulo, source)
    candidates = SideColumns(cand_ids, _dense_columns(table, schema.cand_dense, source), slice(0, n))
    labels = dense_matrix(_dense_columns(table, schema.labels, source, what="label"), slice(0, n))
    bad = ~np.isin(labels, (0.0, 1.0))
    if bad.any():
        col = schema.labels[int(np.nonzero(bad)[1][0])]
        raise DataError(f"{source}: label column {col!r} holds values other than 0/1")
    p_cols = [f"p_true_{t}" for t in schema.tasks]
    p_true = None
    if all(c in table.column_names for c in p_cols):
        p_true = dense_matrix(_dense_columns(table, p_cols, source), slice(0, n))

    seq = _sequences(table, schema, starts, ts[starts], source)
    return Batch.from_numpy(
        encode_columns(
            schema, users, candidates, seq, surface=surface, view_key=view_key,
            user_index=user_index.astype(np.int64), labels=labels,
            label_mask=np.asarray(schema.task_mask, dtype=bool)[surface], p_true=p_true,
        )
    )


def check_codes(
    names: Sequence[str], columns: Sequence[np.ndarray], sizes: Sequence[int], modulo: Sequence[bool], source: str
) -> None:
    """Refuse a code that an `encoding: modulo` table cannot keep apart: below -1, at or above hash_size,
    or the largest row when -1 (which lands on the last row) is there too. Such a code would silently
    share another code's embedding row."""
    for name, col, size, mod in zip(names, columns, sizes, modulo, strict=True):
        if not mod or not len(col):
            continue
        lo, hi = int(col.min()), int(col.max())  # the codes span [lo, hi]: only the ends can fall outside
        outside = outside_modulo_table(np.array([lo, hi]), size)
        if outside.any() or (lo == -1 and hi == size - 1):
            bad = lo if lo < -1 else hi
            raise DataError(
                f"{source}: column {name!r} holds the code {bad}, which its `encoding: modulo` table of "
                f"hash_size {size} cannot keep apart from another code (it holds -1 .. {size - 2}, or "
                f"0 .. {size - 1} without -1); raise the feature's hash_size above its largest code, or use "
                "`encoding: hash`"
            )


def _column(table: pa.Table, name: str, source: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise DataError(f"{source}: missing column {name!r}; see docs/data.md")
    return table.column(name)


def int_column(table: pa.Table, name: str, source: str) -> np.ndarray:
    """The integer column `name` as int64, refusing other types, nulls and ids int64 cannot hold."""
    col = _column(table, name, source)
    if not pa.types.is_integer(col.type):
        raise DataError(f"{source}: column {name!r} must be an integer type, got {col.type}")
    if col.null_count:
        raise DataError(f"{source}: column {name!r} has {col.null_count} null value(s)")
    return _int64(col, name, source).to_numpy().astype(np.int64, copy=False)


def _int64(values: pa.Array | pa.ChunkedArray, name: str, source: str) -> pa.Array | pa.ChunkedArray:
    """Integer `values` that int64 holds as they are: a uint64 above 2**63 - 1 would wrap around to a
    negative id (another feature value) and is refused instead."""
    if values.type == pa.uint64() and len(values) and pc.max(values).as_py() > np.iinfo(np.int64).max:
        raise DataError(
            f"{source}: column {name!r} holds the id {pc.max(values).as_py()}, above the int64 range "
            f"(at most 2**63 - 1); map such ids into int64 before writing, see docs/data.md"
        )
    return values


def _string_column(table: pa.Table, name: str, source: str) -> pa.ChunkedArray:
    col = _column(table, name, source)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise DataError(f"{source}: column {name!r} must be a string, got {col.type}")
    return col


def _index_in(table: pa.Table, name: str, values: list[str], source: str, label: str | None = None) -> np.ndarray:
    col = _string_column(table, name, source)
    idx = pc.index_in(col, value_set=pa.array(values))
    if idx.null_count:
        unknown = pc.unique(pc.filter(col, pc.is_null(idx))).to_pylist()[:5]
        unknown = [u.replace("\x1f", "/") if isinstance(u, str) else u for u in unknown]
        shown = [v.replace("\x1f", "/") for v in values]
        raise DataError(f"{source}: column {label or name!r} has unknown value(s) {unknown}; the config knows {shown}")
    return idx.to_numpy().astype(np.int64)


def _dense_columns(
    table: pa.Table, names: tuple[str, ...] | list[str], source: str, what: str = "dense"
) -> list[np.ndarray]:
    """The named numeric columns as float32 arrays, refusing non-numeric types and NaN/inf/null values."""
    out = []
    for name in names:
        col = _column(table, name, source)
        if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_boolean(col.type)):
            raise DataError(f"{source}: {what} column {name!r} must be numeric, got {col.type}")
        vals = col.to_numpy(zero_copy_only=False).astype(np.float32)
        if not np.isfinite(vals).all():
            raise DataError(f"{source}: {what} column {name!r} holds NaN/inf or null values")
        out.append(vals)
    return out


def _list_column(table: pa.Table, name: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(offsets[N+1] from 0, values of any integer type) of a list<int> column."""
    col = _column(table, name, source)
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)) or not pa.types.is_integer(
        col.type.value_type
    ):
        raise DataError(f"{source}: column {name!r} must be list<int64>, got {col.type}")
    arr = col.combine_chunks()
    if arr.null_count:
        raise DataError(f"{source}: column {name!r} has null lists (use empty lists)")
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = _int64(arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])), name, source)
    return offsets - offsets[0], values.to_numpy()  # zero-copy; the caller converts once


def _sequences(table: pa.Table, schema: Schema, starts: np.ndarray, req_ts: np.ndarray, source: str) -> SequenceArrays:
    """Left-padded sequence arrays (see `pad_sequences`) holding each user's newest L events."""
    if schema.sequence is None:
        return no_sequences(len(starts))
    spec = schema.sequence
    cols = [spec.item_column, *spec.side_features, spec.action_column, spec.time_column]  # pad_sequences' rows
    off, events = _list_column(table, cols[0], source)
    stacked = np.empty((len(cols), len(events)), dtype=np.int64)  # one row per column, filled in place
    stacked[0] = events
    for k, c in enumerate(cols[1:], start=1):
        o, values = _list_column(table, c, source)
        if not np.array_equal(o, off):
            raise DataError(f"{source}: sequence column {c!r} has lists of other lengths than {cols[0]!r}")
        stacked[k] = values
    tables = schema.seq_tables  # (size, modulo) of the item column, then of each side column
    check_codes(cols[: len(tables)], stacked[: len(tables)], *zip(*tables, strict=True), source)
    return pad_sequences(off[starts], off[starts + 1], stacked, req_ts, schema, source)
