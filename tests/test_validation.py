"""Bad data files refused with the file, column and request named; event order decided in one place."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import random_table
from tests.fixtures import same_time_table, table_to_request
from unictr.data.batch import SEQUENCE_FIELDS, Schema
from unictr.data.columns import time_ordered
from unictr.data.errors import DataError
from unictr.data.reader import encode_table, iter_batches, load_split, load_surface_split
from unictr.serving.encoding import RequestEncoder


def _write(path, table: pa.Table):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def _with(table: pa.Table, name: str, values: list, type_: pa.DataType | None = None) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values, type_))


def _reversed_sequences(table: pa.Table, cfg) -> pa.Table:
    """`table` with every sequence list stored newest first."""
    s = cfg.sequence
    for name in (s.item_column, s.action_column, s.time_column, *s.side_features):
        table = _with(table, name, [v[::-1] for v in table.column(name).to_pylist()], pa.list_(pa.int64()))
    return table


@pytest.mark.parametrize("column", ["ad_topic", "seq_item"])
def test_uint64_ids_above_int64_refused(sim_config, tmp_path, column) -> None:
    """A uint64 id of 2**63 or more would wrap around to a negative id (another row of the table)."""
    t = random_table(sim_config, 5, seed=1)
    if column == "seq_item":
        lists = [[2**64 - 1 - k for k in range(len(v))] for v in t.column(column).to_pylist()]
        t = _with(t, column, lists, pa.list_(pa.uint64()))
    else:
        t = _with(t, column, [2**63 + k for k in range(t.num_rows)], pa.uint64())
    path = _write(tmp_path / "big" / "part-00000.parquet", t)
    with pytest.raises(DataError, match=rf"part-00000.parquet: column '{column}' holds the id \d+, above the int64"):
        load_split(path, Schema.from_config(sim_config), sim_config.data)


def test_uint64_ids_in_range_read_as_int64(sim_config) -> None:
    t = random_table(sim_config, 5, seed=1)
    ids = np.abs(t.column("ad_topic").to_numpy())
    schema = Schema.from_config(sim_config)
    as_u64 = encode_table(_with(t, "ad_topic", ids.astype(np.uint64), pa.uint64()), schema, sim_config.data)
    as_i64 = encode_table(_with(t, "ad_topic", ids.astype(np.int64), pa.int64()), schema, sim_config.data)
    assert torch.equal(as_u64.cand_cat, as_i64.cand_cat)


def test_newest_first_sequences_encode_like_oldest_first(sim_config) -> None:
    """The reader keeps the newest max_len events by time, not by position (random_table writes longer ones)."""
    schema = Schema.from_config(sim_config)
    t = random_table(sim_config, 20, seed=2)
    want = encode_table(t, schema, sim_config.data)
    got = encode_table(_reversed_sequences(t, sim_config), schema, sim_config.data)
    assert int(want.seq_mask.sum(1).max()) == sim_config.sequence.max_len
    for name in SEQUENCE_FIELDS:
        assert torch.equal(getattr(got, name), getattr(want, name)), name


def test_reader_and_request_encoder_order_events_alike(sim_config, tmp_path) -> None:
    """Newest-first events in a file and in a score request: the same sequence arrays (no train/serve skew)."""
    table, now = same_time_table(sim_config, 30, seed=3)
    table = _reversed_sequences(table, sim_config)
    path = _write(tmp_path / "rows.parquet", table)
    schema = Schema.from_config(sim_config)
    read = load_surface_split(path, schema, sim_config.data, "search")
    served = RequestEncoder(schema, 1000).encode(table_to_request(table, sim_config, "search", now)).arrays
    assert read.num_users == len(served["seq_item"]) > 1
    for name in SEQUENCE_FIELDS:
        np.testing.assert_array_equal(getattr(read, name).numpy(), served[name], err_msg=name)


@pytest.mark.parametrize("seed", range(20))
def test_time_ordered_is_a_stable_sort_per_user(seed) -> None:
    """Users' events (disjoint spans, gaps and empty ones included) sorted by time, ties in stored order."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 6, size=rng.integers(1, 8))
    gaps = rng.integers(0, 3, size=len(counts))
    lo = np.cumsum(gaps + np.r_[0, counts[:-1]])
    hi = lo + counts
    times = rng.integers(0, 4, size=int(hi[-1]) + 2)
    if seed % 2:  # sorted within users: returned as it is
        for a, b in zip(lo, hi, strict=True):
            times[a:b].sort()
    events = np.stack([np.arange(len(times)), times])  # row 0 tells which event went where
    got, new_lo, new_hi = time_ordered(events, lo, hi)
    for u, (a, b) in enumerate(zip(lo, hi, strict=True)):
        span = events[:, a:b]
        want = span[:, np.argsort(span[-1], kind="stable")]
        np.testing.assert_array_equal(got[:, new_lo[u] : new_hi[u]], want)
    if seed % 2:
        assert got is events


def _move_row_to_end(table: pa.Table, row: int) -> pa.Table:
    order = [i for i in range(table.num_rows) if i != row] + [row]
    return table.take(order)


def test_split_request_refused_with_its_id(sim_config, tmp_path) -> None:
    t = random_table(sim_config, 8, seed=4)
    rid = t.column("request_id").to_numpy()
    first = int(np.flatnonzero(np.bincount(rid)[:-1] > 1)[0])  # a request of several rows, not the last
    bad = _move_row_to_end(t, int(np.flatnonzero(rid == first)[0]))
    path = _write(tmp_path / "split" / "part-00000.parquet", bad)
    with pytest.raises(DataError, match=rf"part-00000.parquet: the rows of request_id {first} are not contiguous"):
        load_split(path, Schema.from_config(sim_config), sim_config.data)


def test_split_request_refused_across_streamed_batches(sim_config, tmp_path) -> None:
    """A request's rows in two batches far apart: each batch alone looks fine, the file does not."""
    t = random_table(sim_config, 30, seed=5)
    rid = t.column("request_id").to_numpy()
    req = int(np.flatnonzero(np.bincount(rid)[:-1] > 1)[0])
    path = _write(tmp_path / "far" / "part-00000.parquet", _move_row_to_end(t, int(np.flatnonzero(rid == req)[0])))
    with pytest.raises(DataError, match=rf"the rows of request_id {req} are not contiguous"):
        list(iter_batches(path, Schema.from_config(sim_config), sim_config.data, batch_rows=4))


@pytest.mark.parametrize("column", ["user_country", "user_activity"])
def test_user_side_differing_within_request_refused(sim_config, tmp_path, column) -> None:
    t = random_table(sim_config, 8, seed=6)
    rid = t.column("request_id").to_numpy()
    req = int(np.flatnonzero(np.bincount(rid) > 1)[0])
    row = int(np.flatnonzero(rid == req)[1])  # the request's second row
    values = t.column(column).to_pylist()
    values[row] = values[row] + 1
    path = _write(tmp_path / "user" / "part-00000.parquet", _with(t, column, values, t.schema.field(column).type))
    message = rf"part-00000.parquet: user-side column '{column}' differs between rows of request_id {req} \(rows"
    with pytest.raises(DataError, match=message):
        load_split(path, Schema.from_config(sim_config), sim_config.data)
    with pytest.raises(DataError, match=message):  # the gate's reader too
        load_surface_split(path, Schema.from_config(sim_config), sim_config.data, sim_config.surfaces[0].name)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a readable Parquet file"),
        (b"request_id,timestamp\n1,2\n", "not a readable Parquet file"),
        (None, "holds no rows"),
    ],
    ids=["zero-byte", "csv", "zero-row"],
)
def test_unreadable_or_empty_file_named(sim_config, tmp_path, content, message) -> None:
    d = tmp_path / "split"
    path = d / "part-00001.parquet"
    if content is None:
        _write(path, random_table(sim_config, 3, seed=7).slice(0, 0))
    else:
        d.mkdir()
        path.write_bytes(content)
    _write(d / "part-00000.parquet", random_table(sim_config, 3, seed=8))
    schema = Schema.from_config(sim_config)
    with pytest.raises(DataError, match=f"part-00001.parquet: {message}"):
        load_split(d, schema, sim_config.data)
    with pytest.raises(DataError, match=f"part-00001.parquet: {message}"):
        load_surface_split(d, schema, sim_config.data, sim_config.surfaces[0].name)
