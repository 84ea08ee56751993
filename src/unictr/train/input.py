"""One rank's training input for an epoch: its streams' minibatches, merged one step at a time.

Each epoch the split's row groups are dealt into `train.data_shards` streams (`data.stream.epoch_shard`,
seeded by the run's seed and the epoch; balanced by rows). Every stream is a `MinibatchStream` of its own
(its share of the shuffle buffer, a seed of its own) and each step takes one minibatch from every stream
(its share of the global batch):
the step's global minibatch is the union of the streams' minibatches wherever they run. A rank hosts the
streams `rank, rank + world, ...`, so the global minibatches, and so the trained model, do not depend on
the number of processes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import Tensor

from unictr.config import DataSpec, TrainSpec
from unictr.data.batch import Batch, Schema, concat_batches
from unictr.data.errors import DataError
from unictr.data.stream import MinibatchStream, Unit, epoch_shard, estimated_minibatches


def stream_count(spec: TrainSpec, units: list[Unit], world: int) -> int:
    """The epoch's number of streams: `train.data_shards`, at most one per row group, at least one per rank."""
    streams = min(spec.data_shards, len(units))
    if world > streams:
        where = units[0].file.parent if units else "the split"
        raise DataError(
            f"{where}: {world} ranks need at least {world} training streams, and there are {streams} "
            f"(train.data_shards {spec.data_shards}; the split has {len(units)} row group(s) in "
            f"{len({u.file for u in units})} file(s)): raise train.data_shards, or write the split with more "
            "files or smaller row groups (e.g. ParquetOptions.row_group_size), or train on fewer ranks"
        )
    return streams


def unit_cache(spec: TrainSpec, units: list[Unit]) -> dict[Unit, Batch | None] | None:
    """A cache of decoded row groups when the whole split fits the shuffle buffers' budget (later epochs
    then decode nothing), else None: a split larger than the budget is read again each epoch."""
    return {} if sum(u.rows for u in units) <= spec.shuffle_buffer_rows else None


def surface_keep(spec: TrainSpec, schema: Schema) -> Tensor | None:
    """The fraction of each surface's requests an epoch reads (`train.surface_sample`), or None for all."""
    if not spec.surface_sample:
        return None
    return torch.tensor([spec.surface_sample.get(s, 1.0) for s in schema.surfaces])


def epoch_steps(units: list[Unit], spec: TrainSpec, keys: DataSpec, global_batch: int) -> int:
    """About how many steps an epoch takes (the LR schedule's estimate); under `train.surface_sample`, those
    of the expected sample (each surface's rows counted from its column)."""
    if not spec.surface_sample:
        return estimated_minibatches(units, global_batch)
    rows = 0.0
    for file in sorted({u.file for u in units}):
        col = pq.read_table(file, columns=[keys.surface])[keys.surface]
        for item in pc.value_counts(col).to_pylist():
            rows += item["counts"] * spec.surface_sample.get(str(item["values"]), 1.0)
    return max(1, math.ceil(rows / global_batch))


def rank_input(
    units: list[Unit], schema: Schema, keys: DataSpec, spec: TrainSpec, global_batch: int, epoch: int,
    rank: int, world: int, cache: dict[Unit, Batch | None] | None = None,
) -> Iterator[Batch | None]:
    """This rank's minibatch of each step of `epoch` (its streams' minibatches together), then None forever
    once its streams have run out (the other ranks may still have steps to take).

    Each stream's minibatches take its share of the global batch in proportion to its rows, so the streams
    run out together after about `rows / global_batch` steps however unevenly the row groups were dealt.
    """
    streams = stream_count(spec, units, world)
    total = sum(u.rows for u in units)
    buffer = max(1, spec.shuffle_buffer_rows // streams)
    keep = surface_keep(spec, schema)
    mine = []
    for v in range(rank, streams, world):
        shard = epoch_shard(units, spec.seed, epoch, v, streams)
        rows = max(1, round(global_batch * sum(u.rows for u in shard) / total))
        seed = (spec.seed * 1_000_003 + epoch) * 1_009 + v
        mine.append(iter(MinibatchStream(shard, schema, keys, rows, buffer, seed, cache, keep)))
    while True:
        parts = [b for b in (next(s, None) for s in mine) if b is not None]
        yield concat_batches(parts) if len(parts) > 1 else (parts[0] if parts else None)
