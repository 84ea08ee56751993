"""Reading a canonical split: `Batch`es in the broadcast layout, streamed by row group.

A split is read unit by unit (`stream.read_unit`: the whole requests starting in one Parquet row
group), so memory holds about one row group and a batch, never a file. Validation and encoding live
in `table` (messages naming the file and the column); the request rules hold per file, across row
groups too (`stream.check_file_requests`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from unictr.config import DataSpec
from unictr.data.batch import Batch, Schema, concat_batches
from unictr.data.errors import DataError
from unictr.data.stream import (
    check_file_requests,
    read_unit_table,
    required_columns,
    split_files,
    split_units,
    user_chunks,
)
from unictr.data.table import check_requests, encode_checked, encode_table

# What callers have imported from here since before the table/stream split.
__all__ = [
    "check_requests",
    "encode_table",
    "iter_batches",
    "load_split",
    "load_surface_split",
    "required_columns",
    "split_files",
]


def iter_batches(
    path: str | Path, schema: Schema, keys: DataSpec, batch_rows: int = 65536
) -> Iterator[Batch]:
    """Stream a split as `Batch`es of whole requests, about `batch_rows` rows each, in row order.

    Units are gathered until they hold `batch_rows` rows, then cut into batches of about that many
    rows; a request larger than `batch_rows` makes one larger batch.
    """
    held: list[Batch] = []
    rows = 0
    for b in _unit_batches(path, schema, keys):
        held.append(b)
        rows += b.num_rows
        if rows >= batch_rows:
            yield from user_chunks(concat_batches(held), batch_rows)
            held, rows = [], 0
    if held:
        yield from user_chunks(concat_batches(held), batch_rows)


def load_split(path: str | Path, schema: Schema, keys: DataSpec) -> Batch:
    """A whole split as one in-memory `Batch` (for small splits: evaluation-sized, tests, baselines)."""
    return concat_batches(list(_unit_batches(path, schema, keys)))


def _unit_batches(path: str | Path, schema: Schema, keys: DataSpec) -> Iterator[Batch]:
    """Each unit's requests of the split, encoded, in row order."""
    for source, table in _unit_tables(path, schema, keys):
        yield encode_checked(table, schema, keys, source)


def _unit_tables(path: str | Path, schema: Schema, keys: DataSpec) -> Iterator[tuple[str, pa.Table]]:
    """(file, the rows of the requests starting in one unit) for each unit of the split in row order,
    their requests checked (each file's request ids as a whole first)."""
    checked: set[Path] = set()
    for unit in split_units(path):
        if unit.file not in checked:
            check_file_requests(unit.file, keys)
            checked.add(unit.file)
        read = read_unit_table(unit, schema, keys)
        if read is not None:
            table, first_row = read
            check_requests(table, schema, keys, str(unit.file), first_row)
            yield str(unit.file), table


def load_surface_split(path: str | Path, schema: Schema, keys: DataSpec, surface: str) -> Batch:
    """The rows of `surface` from a canonical split (file or directory), encoded with `schema`.

    Rows of other surfaces are dropped before encoding, so a pruned model's schema can read a
    split written for the unified model.
    """
    parts = []
    for source, table in _unit_tables(path, schema, keys):
        table = table.filter(pc.equal(table.column(keys.surface), pa.scalar(surface)))
        if table.num_rows:
            parts.append(encode_checked(table, schema, keys, source))
    if not parts:
        raise DataError(f"{path}: no rows of surface {surface!r}")
    return concat_batches(parts)
