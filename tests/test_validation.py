"""Sequence event order decided in one place, for files and requests alike."""

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
from unictr.data.reader import encode_table, load_surface_split
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
