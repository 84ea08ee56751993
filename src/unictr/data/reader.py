"""Streaming Parquet reader: canonical impression rows in, `Batch`es in the broadcast layout out.

Validation happens here, once, with messages that name the file and the column, so nothing
downstream sees a NaN, an unknown surface or a ragged sequence.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from unictr.config import DataSpec
from unictr.data.batch import SEQUENCE_FIELDS, Batch, Schema, concat_batches
from unictr.data.encode import hash_ids
from unictr.data.errors import DataError


def split_files(path: str | Path) -> list[Path]:
    """The Parquet files of a split directory (or a single file), in name order."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such data file or directory")
    files = sorted(path.glob("*.parquet"))
    if not files:
        raise DataError(f"{path}: directory holds no .parquet files")
    return files


def required_columns(schema: Schema, keys: DataSpec) -> list[str]:
    cols = [keys.request_id, keys.timestamp, keys.surface, keys.view_type]
    cols += [*schema.user_cat, *schema.user_dense, *schema.cand_cat, *schema.cand_dense, *schema.labels]
    if schema.sequence is not None:
        s = schema.sequence
        cols += [s.item_column, s.action_column, s.time_column, *s.side_features]
    return list(dict.fromkeys(cols))


def iter_batches(
    path: str | Path, schema: Schema, keys: DataSpec, batch_rows: int = 65536
) -> Iterator[Batch]:
    """Stream a split as `Batch`es of about `batch_rows` rows, file by file."""
    wanted = required_columns(schema, keys)
    for file in split_files(path):
        pf = pq.ParquetFile(file)
        names = set(pf.schema_arrow.names)
        missing = [c for c in wanted if c not in names]
        if missing:
            raise DataError(f"{file}: missing column(s) {missing}; see docs/data.md")
        cols = wanted + [f"p_true_{t}" for t in schema.tasks if f"p_true_{t}" in names]
        for rb in pf.iter_batches(batch_size=batch_rows, columns=cols):
            yield encode_table(pa.Table.from_batches([rb]), schema, keys, source=str(file))


def load_split(path: str | Path, schema: Schema, keys: DataSpec) -> Batch:
    """A whole split as one in-memory `Batch` (training shuffles requests from it)."""
    return concat_batches(list(iter_batches(path, schema, keys)))


def load_surface_split(path: str | Path, schema: Schema, keys: DataSpec, surface: str) -> Batch:
    """The rows of `surface` from a canonical split (file or directory), encoded with `schema`.

    Rows of other surfaces are dropped before encoding, so a pruned model's schema can read a
    split written for the unified model.
    """
    wanted = required_columns(schema, keys)
    parts = []
    for file in split_files(path):
        names = set(pq.ParquetFile(file).schema_arrow.names)
        missing = [c for c in wanted if c not in names]
        if missing:
            raise DataError(f"{file}: missing column(s) {missing}; see docs/data.md")
        cols = wanted + [f"p_true_{t}" for t in schema.tasks if f"p_true_{t}" in names]
        table = pq.read_table(file, columns=cols)
        table = table.filter(pc.equal(table.column(keys.surface), pa.scalar(surface)))
        if table.num_rows:
            parts.append(encode_table(table, schema, keys, source=str(file)))
    if not parts:
        raise DataError(f"{path}: no rows of surface {surface!r}")
    return concat_batches(parts)


def encode_table(table: pa.Table, schema: Schema, keys: DataSpec, source: str = "<table>") -> Batch:
    """Validate and encode canonical rows; rows of one request must be contiguous."""
    n = table.num_rows
    rid = _int_column(table, keys.request_id, source)
    ts = _int_column(table, keys.timestamp, source)
    # one user row per run of equal request ids (rows of a request are contiguous)
    starts = np.flatnonzero(np.r_[True, rid[1:] != rid[:-1]]) if n else np.zeros(0, dtype=np.int64)
    user_index = np.cumsum(np.r_[False, rid[1:] != rid[:-1]]) if n else np.zeros(0, dtype=np.int64)

    surface = _index_in(table, keys.surface, list(schema.surfaces), source)
    view_names = [f"{s}\x1f{v}" for s, v in schema.view_keys]
    view_col = pc.binary_join_element_wise(
        _string_column(table, keys.surface, source), _string_column(table, keys.view_type, source), "\x1f"
    )
    view_key = _index_in(pa.table({"v": view_col}), "v", view_names, source, label=keys.view_type)

    user_cat = _cat_matrix(table, schema.user_cat, schema.user_cat_sizes, source)[starts]
    user_dense = _dense_matrix(table, schema.user_dense, source)[starts]
    cand_cat = _cat_matrix(table, schema.cand_cat, schema.cand_cat_sizes, source)
    cand_dense = _dense_matrix(table, schema.cand_dense, source)
    labels = _dense_matrix(table, schema.labels, source, what="label")
    bad = ~np.isin(labels, (0.0, 1.0))
    if bad.any():
        col = schema.labels[int(np.nonzero(bad)[1][0])]
        raise DataError(f"{source}: label column {col!r} holds values other than 0/1")
    label_mask = np.asarray(schema.task_mask, dtype=bool)[surface]
    p_cols = [f"p_true_{t}" for t in schema.tasks]
    p_true = _dense_matrix(table, p_cols, source) if all(c in table.column_names for c in p_cols) else None

    seq = _sequences(table, schema, starts, ts[starts], source)
    return Batch.from_numpy(
        dict(
            user_cat=user_cat,
            user_dense=user_dense,
            **dict(zip(SEQUENCE_FIELDS, seq, strict=True)),
            cand_cat=cand_cat,
            cand_dense=cand_dense,
            surface=surface,
            view_key=view_key,
            user_index=user_index.astype(np.int64),
            labels=labels,
            label_mask=label_mask,
            p_true=p_true,
        )
    )


def _column(table: pa.Table, name: str, source: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise DataError(f"{source}: missing column {name!r}; see docs/data.md")
    return table.column(name)


def _int_column(table: pa.Table, name: str, source: str) -> np.ndarray:
    col = _column(table, name, source)
    if not pa.types.is_integer(col.type):
        raise DataError(f"{source}: column {name!r} must be an integer type, got {col.type}")
    if col.null_count:
        raise DataError(f"{source}: column {name!r} has {col.null_count} null value(s)")
    return col.to_numpy().astype(np.int64, copy=False)


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


def _cat_matrix(table: pa.Table, names: tuple[str, ...], sizes: tuple[int, ...], source: str) -> np.ndarray:
    out = np.empty((table.num_rows, len(names)), dtype=np.int64)
    for j, (name, size) in enumerate(zip(names, sizes, strict=True)):
        out[:, j] = hash_ids(_int_column(table, name, source), size)
    return out


def _dense_matrix(table: pa.Table, names: tuple[str, ...] | list[str], source: str, what: str = "dense") -> np.ndarray:
    out = np.empty((table.num_rows, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        col = _column(table, name, source)
        if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_boolean(col.type)):
            raise DataError(f"{source}: {what} column {name!r} must be numeric, got {col.type}")
        vals = col.to_numpy(zero_copy_only=False).astype(np.float32)
        if not np.isfinite(vals).all():
            raise DataError(f"{source}: {what} column {name!r} holds NaN/inf or null values")
        out[:, j] = vals
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
    values = arr.values.to_numpy()[offsets[0] : offsets[-1]]  # zero-copy; the caller converts once
    return offsets - offsets[0], values


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
    return pad_sequences(off[starts], off[starts + 1], stacked, req_ts, schema, source)


# The sequence fields of a Batch (SEQUENCE_FIELDS, in that order) as numpy arrays.
SequenceArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


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
    are columns `lo[u]:hi[u]`, oldest first; the newest L are kept, the newest at L-1. Shared by the
    reader and the serving request encoder so both encode alike. All rows are gathered by one call (a
    serving request is one user, whose cost is the number of calls, not the data); each id row (item,
    sides) is hashed by its own, with its table's size as a scalar: numpy divides by a scalar ~4x
    faster than by an array, which is what a reader's million events cost.
    """
    spec = schema.sequence
    assert spec is not None
    length = spec.max_len
    pos = hi[:, None] - length + np.arange(length)[None, :]  # newest event lands at L-1
    mask = pos >= lo[:, None]
    safe = np.where(mask, pos, 0)
    ev = np.take(events, safe, axis=1) if events.shape[1] else np.zeros((len(events), *safe.shape), dtype=np.int64)
    age_ms = req_ts[:, None] - ev[-1]
    if (age_ms[mask] <= 0).any():
        raise DataError(f"{source}: column {spec.time_column!r} holds an event at or after its row's timestamp")
    sizes = (schema.item_hash_size, *schema.seq_side_sizes)  # each id row's table
    ids = np.empty((len(sizes), *mask.shape), dtype=np.int64)  # [1 + Ks, U, L]
    for k, size in enumerate(sizes):
        ids[k] = hash_ids(ev[k], size)
    ids *= mask  # padding is row 0
    return (
        ids[0],
        np.ascontiguousarray(np.moveaxis(ids[1:], 0, -1)),
        np.where(mask, ev[-2] % spec.num_actions, 0),
        np.where(mask, age_ms / 1000.0, 0.0).astype(np.float32),
        mask,
    )
