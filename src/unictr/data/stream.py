"""A split as row-group units: the unit of shuffling and sharding, read as whole requests.

Training never holds a split in memory: each epoch shuffles the order of the split's row groups (the
same order on every rank), deals them to ranks balancing rows (`epoch_shard`), and reads each rank's
units through a bounded shuffle buffer of whole requests (`MinibatchStream`). A request that
straddles row groups belongs to the unit it starts in (`read_unit`), so every request is read
exactly once per pass, whole.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from unictr.config import DataSpec
from unictr.data.batch import Batch, Schema, concat_batches
from unictr.data.errors import DataError
from unictr.data.table import check_contiguous, check_requests, encode_checked, int_column


@dataclass(frozen=True)
class Unit:
    """One Parquet row group of one file: the unit of shuffling and sharding."""

    file: Path
    row_group: int
    rows: int


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
    """The columns the reader reads for `schema`, in a fixed order."""
    cols = [keys.request_id, keys.timestamp, keys.surface, keys.view_type]
    cols += [*schema.user_cat, *schema.user_dense, *schema.cand_cat, *schema.cand_dense, *schema.labels]
    if schema.sequence is not None:
        s = schema.sequence
        cols += [s.item_column, s.action_column, s.time_column, *s.side_features]
    return list(dict.fromkeys(cols))


def open_parquet(file: Path) -> pq.ParquetFile:
    """`file` opened, refusing one that is not Parquet or holds no rows, naming it."""
    try:
        pf = pq.ParquetFile(file)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{file}: not a readable Parquet file ({e})") from None
    if pf.metadata.num_rows == 0:
        raise DataError(f"{file}: holds no rows; a data file holds at least one request")
    return pf


def columns_to_read(pf: pq.ParquetFile, file: Path, schema: Schema, keys: DataSpec) -> list[str]:
    """The columns to read from `pf` (the `p_true_*` ones when there), refusing a file lacking one."""
    names = set(pf.schema_arrow.names)
    wanted = required_columns(schema, keys)
    missing = [c for c in wanted if c not in names]
    if missing:
        raise DataError(f"{file}: missing column(s) {missing}; see docs/data.md")
    return wanted + [f"p_true_{t}" for t in schema.tasks if f"p_true_{t}" in names]


def split_units(path: str | Path) -> list[Unit]:
    """Every non-empty row group of every file of a split, in file and row-group order, from the
    Parquet metadata only (no data read)."""
    units = []
    for file in split_files(path):
        with open_parquet(file) as pf:
            meta = pf.metadata
            units += [
                Unit(file, g, meta.row_group(g).num_rows)
                for g in range(meta.num_row_groups)
                if meta.row_group(g).num_rows
            ]
    return units


def estimated_minibatches(units: list[Unit], batch_rows: int) -> int:
    """About how many minibatches of `batch_rows` rows `units` make (whole requests make it inexact)."""
    return math.ceil(sum(u.rows for u in units) / batch_rows)


def epoch_shard(units: list[Unit], seed: int, epoch: int, rank: int, world: int) -> list[Unit]:
    """Rank `rank`'s units of epoch `epoch`, in their shuffled order.

    Every rank shuffles all units alike (a generator seeded from `seed` and `epoch`), then deals them
    in that order, each to the rank with the fewest rows so far (ties to the lowest rank): the shards
    are disjoint, cover every unit, and hold about as many rows each.
    """
    if len(units) < world:
        where = units[0].file.parent if units else "the split"
        files = len({u.file for u in units})
        raise DataError(
            f"{where}: the split has {len(units)} row group(s) in {files} file(s), fewer than the {world} "
            "ranks; every rank needs one: write the split with more files or smaller row groups (e.g. "
            "ParquetOptions.row_group_size), or train on fewer ranks"
        )
    order = np.random.default_rng((seed % 2**64, epoch)).permutation(len(units))
    loads = np.zeros(world, dtype=np.int64)
    mine = []
    for i in order:
        r = int(np.argmin(loads))  # the first of equal minima: ties to the lowest rank
        loads[r] += units[i].rows
        if r == rank:
            mine.append(units[i])
    return mine


def read_unit(unit: Unit, schema: Schema, keys: DataSpec) -> Batch | None:
    """The whole requests that start in `unit`'s row group, validated and encoded; None when the row
    group holds only the tail of a request begun before it."""
    read = read_unit_table(unit, schema, keys)
    if read is None:
        return None
    table, first_row = read
    check_requests(table, schema, keys, str(unit.file), first_row)
    return encode_checked(table, schema, keys, str(unit.file))


def read_unit_table(unit: Unit, schema: Schema, keys: DataSpec) -> tuple[pa.Table, int] | None:
    """(the rows of the requests that start in `unit`, the file row of the first), or None.

    Leading rows that continue the previous row group's last request are left to that unit; the last
    request's rows in the following row groups are read (only those rows' needed columns) and appended.
    """
    with open_parquet(unit.file) as pf:
        cols = columns_to_read(pf, unit.file, schema, keys)
        meta, g = pf.metadata, unit.row_group
        ids = _request_ids(pf, g, unit.file, keys)
        prev = next((k for k in range(g - 1, -1, -1) if meta.row_group(k).num_rows), None)
        skip = _leading(ids, _request_ids(pf, prev, unit.file, keys)[-1]) if prev is not None else 0
        if skip == len(ids):
            return None
        parts = [pf.read_row_group(g, columns=cols).slice(skip)]
        for k in range(g + 1, meta.num_row_groups):
            nxt = _request_ids(pf, k, unit.file, keys)
            n = _leading(nxt, ids[-1])
            if n:
                parts.append(_head(pf, k, n, cols))
            if n < len(nxt):
                break
        first_row = sum(meta.row_group(k).num_rows for k in range(g)) + skip
        return pa.concat_tables(parts), first_row


def _request_ids(pf: pq.ParquetFile, group: int, file: Path, keys: DataSpec) -> np.ndarray:
    return int_column(pf.read_row_group(group, columns=[keys.request_id]), keys.request_id, str(file))


def _head(pf: pq.ParquetFile, group: int, n: int, cols: list[str]) -> pa.Table:
    """The first `n` rows of row group `group` (decoded only as far as they reach)."""
    batches, got = [], 0
    for rb in pf.iter_batches(batch_size=n, row_groups=[group], columns=cols):
        batches.append(rb)
        got += rb.num_rows
        if got >= n:
            break
    return pa.Table.from_batches(batches).slice(0, n)


def _leading(ids: np.ndarray, rid: int) -> int:
    """How many of `ids`' first rows hold the request id `rid`."""
    other = np.flatnonzero(ids != rid)
    return int(other[0]) if len(other) else len(ids)


def check_file_requests(file: Path, keys: DataSpec) -> None:
    """Refuse a file whose requests are not contiguous, also across row groups (reads only the
    request id column: 8 bytes a row)."""
    with open_parquet(file) as pf:
        table = pf.read(columns=[keys.request_id])
    check_contiguous(int_column(table, keys.request_id, str(file)), keys, str(file))


def chunk_ends(counts: Tensor, rows: int) -> list[int]:
    """Where to cut users with `counts` rows each (in order) into chunks of about `rows` rows: the end
    position of each chunk, the last being `len(counts)`."""
    if not len(counts):
        return []
    ends = torch.cumsum(counts, 0)
    cuts = torch.searchsorted(ends, torch.arange(rows, int(ends[-1]) + rows, rows), right=True).tolist()
    out, start = [], 0
    for cut in [*cuts, len(counts)]:
        if cut > start:
            out.append(cut)
            start = cut
    return out


def user_chunks(b: Batch, rows: int, order: Tensor | None = None) -> Iterator[Batch]:
    """Sub-batches of whole users, taken in `order` (default: user order), of about `rows` impressions each."""
    order = torch.arange(b.num_users) if order is None else order
    start = 0
    for end in chunk_ends(torch.bincount(b.user_index, minlength=b.num_users)[order], rows):
        yield b.take_users(order[start:end])
        start = end


def sample_requests(b: Batch, keep: Tensor, generator: torch.Generator) -> Batch:
    """A uniform sample of `b`'s requests: each request of surface `s` kept with probability `keep[s]`."""
    surface = torch.empty(b.num_users, dtype=b.surface.dtype)
    surface[b.user_index] = b.surface  # a request's surface (the value of its rows)
    kept = torch.rand(b.num_users, generator=generator) < keep[surface]
    return b.take_users(torch.nonzero(kept, as_tuple=True)[0])


class MinibatchStream:
    """Minibatches of whole requests from `units` (read in the given order) through a shuffle buffer.

    When the buffer holds more than `buffer_rows` rows (or the input has ended), its requests are
    permuted (a torch generator seeded with `seed` at the start of each pass) and cut into minibatches
    of about `batch_rows` rows, emitted until fewer than `buffer_rows // 2` rows remain (at the end:
    until none); the rest waits for the next fill. Iterating again gives the same minibatches. At most
    `buffer_rows` rows plus one unit's are held (`peak_rows` records the most); a buffer as large as
    the split makes one permutation of all its requests. The request rules are checked per unit; a
    caller wanting them across a file's row groups too runs `check_file_requests` on it once. `cache`,
    when given, keeps each unit once read (the trainer passes one when the whole split fits the buffer
    budget, so later epochs decode nothing). `keep`, when given, is the fraction of each surface's requests
    (by surface index) a pass reads: a uniform sample drawn per pass (`train.surface_sample`).
    """

    def __init__(
        self, units: list[Unit], schema: Schema, keys: DataSpec, batch_rows: int, buffer_rows: int, seed: int,
        cache: dict[Unit, Batch | None] | None = None, keep: Tensor | None = None,
    ) -> None:
        self.units, self.schema, self.keys = units, schema, keys
        self.batch_rows, self.buffer_rows, self.seed = batch_rows, buffer_rows, seed
        self.cache, self.keep = cache, keep
        self.peak_rows = 0

    def _read(self, unit: Unit) -> Batch | None:
        if self.cache is None:
            return read_unit(unit, self.schema, self.keys)
        if unit not in self.cache:
            self.cache[unit] = read_unit(unit, self.schema, self.keys)
        return self.cache[unit]

    def __iter__(self) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(self.seed)
        held: list[Batch] = []
        for unit in self.units:
            b = self._read(unit)
            if b is not None and self.keep is not None:
                b = sample_requests(b, self.keep, generator)
            if b is not None and b.num_users:
                held.append(b)
            rows = sum(h.num_rows for h in held)
            self.peak_rows = max(self.peak_rows, rows)
            if rows > self.buffer_rows:
                rest = yield from self._drain(concat_batches(held), generator, self.buffer_rows // 2)
                held = [rest] if rest.num_users else []
        if held:
            yield from self._drain(concat_batches(held), generator, 1)

    def _drain(self, b: Batch, generator: torch.Generator, keep_below: int) -> Iterator[Batch]:
        """Emit minibatches of `b`'s permuted requests while at least `keep_below` rows remain; return
        the remaining requests."""
        b = b.take_users(torch.randperm(b.num_users, generator=generator))  # one gather; rows grouped by user
        counts = torch.bincount(b.user_index, minlength=b.num_users)
        left, start = b.num_rows, 0
        for end in chunk_ends(counts, self.batch_rows):
            if left < keep_below:
                break
            yield b.slice_users(start, end)
            left -= int(counts[start:end].sum())
            start = end
        return b.slice_users(start, b.num_users)  # the rest (maybe no one)
