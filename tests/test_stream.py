"""Streaming by row group: whole requests read once, epoch shards, the shuffle buffer, streamed evaluation."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import fields
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from rich.console import Console

from tests.conftest import random_table
from tests.fixtures import small_config
from unictr.checkpoint import load_model
from unictr.config import TrainSpec
from unictr.data.batch import Batch, Schema, concat_batches
from unictr.data.canonical import ParquetOptions, write_split
from unictr.data.errors import DataError
from unictr.data.reader import encode_table, iter_batches, load_split, load_surface_split
from unictr.data.stream import (
    MinibatchStream,
    Unit,
    epoch_shard,
    estimated_minibatches,
    read_unit,
    split_units,
    user_chunks,
)
from unictr.train.evaluate import evaluate, evaluate_split
from unictr.train.input import epoch_steps
from unictr.train.loop import train


def _split(cfg, root: Path, row_group: int, requests=(40, 25), max_cands: int = 6) -> Path:
    """A split of one file per entry of `requests`, in row groups of `row_group` rows."""
    tables = [random_table(cfg, n, seed=i, max_cands=max_cands) for i, n in enumerate(requests)]
    write_split(root, "split", tables, ParquetOptions(row_group_size=row_group))
    return root / "split"


def _reference(d: Path, schema: Schema, keys) -> Batch:
    """The split encoded file by file from whole tables (how the reader read it before streaming)."""
    return concat_batches([encode_table(pq.read_table(f), schema, keys, str(f)) for f in sorted(d.glob("*.parquet"))])


def _assert_same(a: Batch, b: Batch) -> None:
    for f in fields(Batch):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert (x is None) == (y is None), f.name
        if x is not None:
            assert torch.equal(x, y), f.name


def _requests(b: Batch) -> Counter:
    """Each request of `b` as (its user-side values, its rows' candidate ids and labels): a multiset."""
    out: Counter = Counter()
    for u in range(b.num_users):
        rows = (b.user_index == u).nonzero().flatten()
        key = (tuple(b.user_dense[u].tolist()), tuple(b.user_cat[u].tolist()))
        out[key + (tuple(map(tuple, b.cand_cat[rows].tolist())), tuple(map(tuple, b.labels[rows].tolist())))] += 1
    return out


@pytest.mark.parametrize("row_group", [2, 7])
def test_units_read_every_request_once_and_whole(sim_config, tmp_path, row_group) -> None:
    """Requests straddling one or several row groups are read with the unit they start in, whole."""
    schema = Schema.from_config(sim_config)
    d = _split(sim_config, tmp_path, row_group, requests=(25, 10), max_cands=8)
    units = split_units(d)
    files = sorted(d.glob("*.parquet"))
    assert [u.file for u in units] == sorted(u.file for u in units) and {u.file for u in units} == set(files)
    assert sum(u.rows for u in units) == sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    assert all(0 < u.rows <= row_group for u in units)
    read = [read_unit(u, schema, sim_config.data) for u in units]
    if row_group < 8:
        assert any(b is None for b in read)  # a row group holding only a request's tail
    _assert_same(concat_batches([b for b in read if b is not None]), _reference(d, schema, sim_config.data))
    _assert_same(load_split(d, schema, sim_config.data), _reference(d, schema, sim_config.data))
    streamed = concat_batches(list(iter_batches(d, schema, sim_config.data, batch_rows=20)))
    _assert_same(streamed, _reference(d, schema, sim_config.data))


def test_surface_split_streams_alike(sim_config, tmp_path) -> None:
    schema = Schema.from_config(sim_config)
    d = _split(sim_config, tmp_path, 3)
    got = load_surface_split(d, schema, sim_config.data, "search")
    ref = _reference(d, schema, sim_config.data)
    want = ref.take_users(torch.unique(ref.user_index[ref.surface == schema.surfaces.index("search")]))
    _assert_same(got, want)


def test_request_rules_hold_across_row_groups(sim_config, tmp_path) -> None:
    """A request split over far row groups is refused; a user-side mismatch names the file's rows."""
    t = random_table(sim_config, 30, seed=5)
    rid = t.column("request_id").to_numpy()
    req = int(np.flatnonzero(np.bincount(rid)[:-1] > 1)[0])
    moved = int(np.flatnonzero(rid == req)[0])
    bad = t.take([i for i in range(t.num_rows) if i != moved] + [moved])
    write_split(tmp_path, "far", [bad], ParquetOptions(row_group_size=4))
    schema = Schema.from_config(sim_config)
    with pytest.raises(DataError, match=rf"part-00000.parquet: the rows of request_id {req} are not contiguous"):
        load_split(tmp_path / "far", schema, sim_config.data)

    last = int(np.flatnonzero(np.bincount(rid) > 1)[-1])
    row = int(np.flatnonzero(rid == last)[1])
    values = t.column("user_country").to_pylist()
    values[row] += 1
    changed = t.set_column(t.schema.get_field_index("user_country"), "user_country", [values])
    write_split(tmp_path, "user", [changed], ParquetOptions(row_group_size=4))
    message = rf"user-side column 'user_country' differs between rows of request_id {last} \(rows {row - 1} and {row}\)"
    with pytest.raises(DataError, match=message):
        list(iter_batches(tmp_path / "user", schema, sim_config.data))


@pytest.mark.parametrize(
    ("content", "message"), [(b"PAR1 nonsense", "not a readable Parquet file"), (None, "holds no rows")]
)
def test_split_units_name_a_bad_file(sim_config, tmp_path, content, message) -> None:
    d = _split(sim_config, tmp_path, 5, requests=(4,))
    bad = d / "part-00001.parquet"
    if content is None:
        pq.write_table(random_table(sim_config, 3).slice(0, 0), bad)
    else:
        bad.write_bytes(content)
    with pytest.raises(DataError, match=f"part-00001.parquet: {message}"):
        split_units(d)


def _units(rows: list[int], files: int = 2) -> list[Unit]:
    return [Unit(Path(f"d/part-{i % files}.parquet"), i // files, r) for i, r in enumerate(rows)]


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_epoch_shards_are_disjoint_balanced_and_deterministic(world) -> None:
    rows = np.random.default_rng(0).integers(1, 100, size=23).tolist()
    units = _units(rows)
    shards = [epoch_shard(units, seed=7, epoch=1, rank=r, world=world) for r in range(world)]
    dealt = [u for s in shards for u in s]
    assert len(dealt) == len(units) and set(dealt) == set(units)  # each unit on exactly one rank
    loads = [sum(u.rows for u in s) for s in shards]
    assert max(loads) - min(loads) <= max(rows)  # greedy: within one unit of each other
    assert shards == [epoch_shard(units, seed=7, epoch=1, rank=r, world=world) for r in range(world)]
    other = [epoch_shard(units, seed=7, epoch=2, rank=r, world=world) for r in range(world)]
    assert other != shards
    if world == 1:
        assert sorted(shards[0], key=units.index) == units and shards[0] != units  # all of them, shuffled


def test_epoch_shard_refuses_more_ranks_than_row_groups() -> None:
    with pytest.raises(DataError, match=r"d: the split has 3 row group\(s\) in 2 file\(s\), fewer than the 4 ranks; "
                       r".*smaller row groups \(e.g. ParquetOptions.row_group_size\)"):
        epoch_shard(_units([5, 5, 5]), seed=0, epoch=0, rank=0, world=4)


def test_estimated_minibatches() -> None:
    assert estimated_minibatches(_units([10, 10, 5]), 10) == 3
    assert estimated_minibatches(_units([10, 10]), 10) == 2


def test_minibatch_stream_covers_each_request_once_within_its_buffer(sim_config, tmp_path) -> None:
    schema = Schema.from_config(sim_config)
    d = _split(sim_config, tmp_path, 16, requests=(150, 60))
    whole = load_split(d, schema, sim_config.data)
    units = epoch_shard(split_units(d), seed=1, epoch=0, rank=0, world=1)
    stream = MinibatchStream(units, schema, sim_config.data, batch_rows=32, buffer_rows=120, seed=3)
    first, second = list(stream), list(stream)
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        _assert_same(a, b)
    assert _requests(concat_batches(first)) == _requests(whole)  # every request once, whole
    # about batch_rows each: short of it by less than a request (of at most 6 rows)
    assert all(26 < b.num_rows < 32 + 6 for b in first[:-1]) and sum(b.num_rows for b in first) == whole.num_rows
    assert abs(len(first) - estimated_minibatches(units, 32)) <= len(first) // 4
    largest_unit = max(b.num_rows for u in units if (b := read_unit(u, schema, sim_config.data)) is not None)
    assert 120 < stream.peak_rows < 120 + largest_unit < whole.num_rows // 2


def _surface_of_requests(b: Batch, surfaces: int) -> torch.Tensor:
    """Requests per surface index."""
    first = torch.searchsorted(b.user_index, torch.arange(b.num_users))  # rows are grouped by request
    return torch.bincount(b.surface[first], minlength=surfaces)


def test_surface_sample_reads_a_fresh_sample_of_whole_requests_per_pass(sim_config, tmp_path) -> None:
    """`train.surface_sample`: a pass reads each home_feed request with probability 1/4 (whole), every other
    request, a different sample for another seed (epoch); the LR schedule counts the expected rows."""
    schema = Schema.from_config(sim_config)
    d = _split(sim_config, tmp_path, 64, requests=(600, 400))
    whole = load_split(d, schema, sim_config.data)
    units = split_units(d)
    total = _surface_of_requests(whole, 3)
    keep = torch.tensor([0.25, 1.0, 1.0])  # home_feed, search, related
    samples = []
    for seed in (1, 2, 1):
        stream = MinibatchStream(units, schema, sim_config.data, 64, 10_000, seed=seed, keep=keep)
        got = concat_batches(list(stream))
        n = _surface_of_requests(got, 3)
        assert torch.equal(n[1:], total[1:])
        sd = (total[0] * 0.25 * 0.75) ** 0.5
        assert abs(n[0] - 0.25 * total[0]) < 4 * sd, (n, total)
        assert not _requests(got) - _requests(whole)  # whole requests of the split, each at most once
        samples.append(_requests(got))
    assert samples[0] != samples[1] and samples[0] == samples[2]
    home = int((whole.surface == 0).sum())
    spec = TrainSpec(surface_sample={"home_feed": 0.25})
    assert epoch_steps(units, spec, sim_config.data, 64) == math.ceil((whole.num_rows - 0.75 * home) / 64)
    assert epoch_steps(units, TrainSpec(), sim_config.data, 64) == math.ceil(whole.num_rows / 64)


def test_minibatch_stream_is_one_permutation_when_the_buffer_holds_the_split(sim_config, tmp_path) -> None:
    schema = Schema.from_config(sim_config)
    d = _split(sim_config, tmp_path, 9)
    whole = load_split(d, schema, sim_config.data)
    got = list(MinibatchStream(split_units(d), schema, sim_config.data, 25, whole.num_rows, seed=4))
    order = torch.randperm(whole.num_users, generator=torch.Generator().manual_seed(4))
    want = list(user_chunks(whole, 25, order))
    assert len(got) == len(want) > 3
    for a, b in zip(got, want, strict=True):
        _assert_same(a, b)


@pytest.fixture(scope="module")
def small_run(sim_config, tmp_path_factory) -> tuple[Path, Path]:
    """(a run trained on a random split, an eval split in 5-row row groups over two files)."""
    cfg = small_config(sim_config)
    root = tmp_path_factory.mktemp("run")
    _split(cfg, root / "data", 64, requests=(50,))
    (root / "data" / "split").rename(root / "data" / "train")
    train(cfg, root / "data", root / "run", console=Console(quiet=True), show_progress=False)
    return root / "run", _split(cfg, root / "eval", 5, requests=(70, 30))


def _flat(metrics: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        out |= _flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k: v}
    return out


def test_evaluate_split_equals_evaluate(small_run) -> None:
    """Exactly equal when the split is scored in one batch; with batches of 50 rows the forward passes
    differ in float rounding (about one ulp of a probability) and nothing else."""
    run, split = small_run
    model, _ = load_model(run)
    want = evaluate(model, load_split(split, model.schema, model.cfg.data))
    assert json.dumps(evaluate_split(model, split), sort_keys=True) == json.dumps(want, sort_keys=True)
    got = _flat(evaluate_split(model, split, batch_rows=50))
    assert got.keys() == _flat(want).keys()
    assert got == pytest.approx(_flat(want), rel=1e-5, abs=1e-6, nan_ok=True)


def test_evaluate_split_draws_reliability_diagrams(small_run, tmp_path) -> None:
    run, split = small_run
    model, _ = load_model(run)
    evaluate_split(model, split, plots=tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(
        f"reliability_{s}.png" for s in model.schema.surfaces
    )
