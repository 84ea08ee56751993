"""The streaming reader: broadcast layout and error messages naming file and column."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import random_table
from unictr.data.batch import FIELD_NAMES, FIELDS, Batch, Schema, concat_batches
from unictr.data.encode import hash_ids
from unictr.data.errors import DataError
from unictr.data.reader import encode_table, iter_batches, load_split


def _write(tmp_path, table: pa.Table, name: str = "part-00000.parquet"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, tmp_path / name)
    return tmp_path


def test_batch_matches_its_field_spec(sim_config) -> None:
    """The dataclass, and what the reader makes, follow FIELDS: names in order, side and dtype."""
    assert tuple(f.name for f in dataclasses.fields(Batch)) == FIELD_NAMES
    b = encode_table(random_table(sim_config, requests=7, seed=1), Schema.from_config(sim_config), sim_config.data)
    assert b.num_users < b.num_rows
    for f in FIELDS:
        v = getattr(b, f.name)
        if v is None:  # no p_true columns in a random table
            assert f.optional, f.name
            continue
        assert v.dtype == f.dtype, f.name
        assert v.shape[0] == (b.num_users if f.side == "user" else b.num_rows), f.name


def test_docs_table_matches_the_field_spec() -> None:
    """docs/data.md's Batch table lists FIELDS in order, with each field's shape, dtype and side."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    section = text.split("## The `Batch` (broadcast layout)")[1].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| `")]
    assert [r[0].strip("`") for r in rows] == list(FIELD_NAMES)
    for (_, shape, dtype, side), f in zip(rows, FIELDS, strict=True):
        assert shape.startswith(f"`{f.shape}`"), (f.name, shape)
        assert dtype.startswith(str(f.dtype).removeprefix("torch.")), (f.name, dtype)
        assert side == {"user": "user", "row": "candidate"}[f.side], (f.name, side)


def test_broadcast_layout(sim_config) -> None:
    schema = Schema.from_config(sim_config)
    table = random_table(sim_config, requests=9, seed=3)
    b = encode_table(table, schema, sim_config.data)
    rid = table.column("request_id").to_numpy()
    assert b.num_users == len(np.unique(rid)) and b.num_rows == table.num_rows
    assert torch.equal(b.user_index, torch.from_numpy(np.unique(rid, return_inverse=True)[1]))
    # user-side values come from each request's rows; user_segment shares ad_topic's table, which takes ids
    # modulo its size (its `encoding`); ad_id's table hashes them
    first = np.flatnonzero(np.r_[True, rid[1:] != rid[:-1]])
    name, size = schema.user_cat[0], schema.user_cat_sizes[0]
    assert name == "user_segment" and schema.user_cat_modulo[0]
    raw = table.column(name).to_numpy()[first]
    assert torch.equal(b.user_cat[:, 0], torch.from_numpy(np.mod(raw, size)))
    j = schema.cand_cat.index("ad_id")
    assert not schema.cand_cat_modulo[j]
    assert torch.equal(b.cand_cat[:, j], torch.from_numpy(hash_ids(table.column("ad_id").to_numpy(), 20000)))
    assert int(b.user_cat.max()) < max(schema.user_cat_sizes) and int(b.cand_cat.min()) >= 0
    # sequences: left-padded, newest last, capped at max_len
    seq = table.column("seq_item").to_pylist()
    for u, r in enumerate(first):
        items = seq[r][-sim_config.sequence.max_len:]
        n = len(items)
        assert int(b.seq_mask[u].sum()) == n
        if n:
            assert b.seq_mask[u, -n:].all()
            assert torch.equal(b.seq_item[u, -n:], torch.from_numpy(hash_ids(np.array(items), 20000)))
    assert (b.seq_age[b.seq_mask] > 0).all()


def _with_column(table: pa.Table, name: str, values: np.ndarray | pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def test_modulo_encoding_keeps_small_codes_apart(sim_config) -> None:
    """`encoding: modulo`: the 24 hours take the 24 rows of their 24-row table (hashed, ten of the hours
    would share a row with another); -1 takes the last row where no code does."""
    schema = Schema.from_config(sim_config)
    table = random_table(sim_config, requests=40, seed=5)
    col = schema.cand_cat.index("hour")
    hours = np.arange(table.num_rows) % 24
    b = encode_table(_with_column(table, "hour", pa.array(hours, pa.int64())), schema, sim_config.data)
    assert torch.equal(b.cand_cat[:, col], torch.from_numpy(hours))
    assert len(set(hash_ids(np.arange(24), 24).tolist())) == 14
    missing = np.arange(table.num_rows) % 23 - 1  # -1 .. 21
    b = encode_table(_with_column(table, "hour", pa.array(missing, pa.int64())), schema, sim_config.data)
    assert torch.equal(b.cand_cat[:, col], torch.from_numpy(np.where(missing < 0, 23, missing)))


@pytest.mark.parametrize("codes, bad", [([3, 24], 24), ([-2, 5], -2), ([-1, 23], 23)])
def test_modulo_codes_that_would_collide_are_refused(sim_config, codes, bad) -> None:
    """A code the modulo table cannot keep apart (at or above hash_size, below -1, or the last row while
    -1 is there too) is refused, naming the column and the code, not folded onto another code's row."""
    schema = Schema.from_config(sim_config)
    table = random_table(sim_config, requests=20, seed=6)
    hours = np.resize(np.asarray(codes), table.num_rows)
    table = _with_column(table, "hour", pa.array(hours, pa.int64()))
    with pytest.raises(DataError, match=rf"column 'hour' holds the code {bad}, .*hash_size 24"):
        encode_table(table, schema, sim_config.data)


def test_modulo_sequence_codes_are_checked_too(sim_config) -> None:
    """The sequence's side column shares `ad_topic`'s modulo table, so its codes are held to that table."""
    schema = Schema.from_config(sim_config)
    table = random_table(sim_config, requests=20, seed=7)
    size = sim_config.hash_size("ad_topic")
    topics = table.column("seq_topic").combine_chunks()
    values = np.full(len(topics.values), size, dtype=np.int64)
    assert len(values), "the random table needs some sequence events"
    table = _with_column(table, "seq_topic", pa.ListArray.from_arrays(topics.offsets, pa.array(values)))
    with pytest.raises(DataError, match=rf"column 'seq_topic' holds the code {size}, .*hash_size {size}"):
        encode_table(table, schema, sim_config.data)


def test_label_mask_follows_task_surfaces(sim_config) -> None:
    schema = Schema.from_config(sim_config)
    b = encode_table(random_table(sim_config, 30), schema, sim_config.data)
    search = schema.surfaces.index("search")
    save = schema.tasks.index("save")
    assert not b.label_mask[b.surface == search, save].any()
    assert b.label_mask[b.surface != search].all()


def test_streaming_equals_whole(sim_config, tmp_path) -> None:
    schema = Schema.from_config(sim_config)
    d = _write(tmp_path / "split", random_table(sim_config, 40, seed=1))
    _write(d, random_table(sim_config, 5, seed=2), "part-00001.parquet")
    whole = load_split(d, schema, sim_config.data)
    parts = list(iter_batches(d, schema, sim_config.data, batch_rows=17))
    assert len(parts) > 2
    streamed = concat_batches(parts)
    assert streamed.num_rows == whole.num_rows
    torch.testing.assert_close(streamed.cand_cat, whole.cand_cat)
    torch.testing.assert_close(streamed.user_cat[streamed.user_index], whole.user_cat[whole.user_index])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t.drop_columns(["ad_topic"]), r"missing column\(s\) \['ad_topic'\]"),
        (lambda t: t.set_column(t.schema.get_field_index("ad_topic"), "ad_topic",
                                pa.array([str(v) for v in t.column("ad_topic").to_pylist()])),
         "column 'ad_topic' must be an integer type, got string"),
        (lambda t: t.set_column(t.schema.get_field_index("surface"), "surface",
                                pa.array(["shopping"] * t.num_rows)),
         r"column 'surface' has unknown value\(s\) \['shopping'\]"),
        (lambda t: t.set_column(t.schema.get_field_index("view_type"), "view_type",
                                pa.array(["carousel"] * t.num_rows)),
         r"column 'view_type' has unknown value\(s\) \['.*/carousel'\]"),
        (lambda t: t.set_column(t.schema.get_field_index("ad_age_days"), "ad_age_days",
                                pa.array([float("nan")] * t.num_rows, pa.float32())),
         "dense column 'ad_age_days' holds NaN/inf"),
        (lambda t: t.set_column(t.schema.get_field_index("click"), "click", pa.array([2] * t.num_rows)),
         "label column 'click' holds values other than 0/1"),
        (lambda t: t.set_column(t.schema.get_field_index("seq_action"), "seq_action",
                                pa.array([[1]] * t.num_rows, pa.list_(pa.int64()))),
         "sequence column 'seq_action' has lists of other lengths"),
    ],
)
def test_errors_name_file_and_column(sim_config, tmp_path, mutate, message) -> None:
    schema = Schema.from_config(sim_config)
    table = random_table(sim_config, 6, seed=4)
    d = _write(tmp_path / "bad", mutate(table))
    with pytest.raises(DataError, match=message) as e:
        load_split(d, schema, sim_config.data)
    assert "part-00000.parquet" in str(e.value)


def test_future_event_in_sequence_rejected(sim_config, tmp_path) -> None:
    schema = Schema.from_config(sim_config)
    t = random_table(sim_config, 3, seed=5)
    ts = t.column("timestamp").to_pylist()
    t = t.set_column(t.schema.get_field_index("seq_ts"), "seq_ts", pa.array([[v] for v in ts], pa.list_(pa.int64())))
    t = t.set_column(t.schema.get_field_index("seq_item"), "seq_item",
                     pa.array([[1]] * t.num_rows, pa.list_(pa.int64())))
    for col in ("seq_action", "seq_topic"):
        t = t.set_column(t.schema.get_field_index(col), col, pa.array([[0]] * t.num_rows, pa.list_(pa.int64())))
    with pytest.raises(DataError, match="'seq_ts' holds an event at or after its row's timestamp"):
        load_split(_write(tmp_path / "fut", t), schema, sim_config.data)


def test_missing_directory(sim_config, tmp_path) -> None:
    with pytest.raises(DataError, match="no such data file or directory"):
        load_split(tmp_path / "nothing", Schema.from_config(sim_config), sim_config.data)
