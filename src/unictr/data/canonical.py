"""The one writer of the canonical layout (docs/data.md): split Parquet parts and `meta.json`.

Every data-source adapter (the simulator, the KuaiRand converter, a new source) builds Arrow tables in
the canonical columns and hands them here, so file names, Parquet options and the JSON format of
`meta.json` are decided in one place.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from unictr.data.errors import DataError

# The splits a data directory may hold, in time order: the model trains on `train`, post-hoc
# calibration is fitted on `calib` (a slice after training, before evaluation) and `eval` is scored.
SPLITS = ("train", "calib", "eval")
CALIB_HINT = (
    "make one with `unictr data simulate --calib-fraction F` or `unictr data kuairand --calib-from DATE`, "
    "or cut one from a later split with unictr.calibration.job.split_by_time"
)


@dataclass(frozen=True)
class ParquetOptions:
    """Options of `pyarrow.parquet.write_table`; the defaults are pyarrow's own."""

    compression: str = "snappy"
    compression_level: int | None = None
    row_group_size: int | None = None  # None: pyarrow's default row-group size
    use_dictionary: bool = True


def write_split(out: Path, split: str, tables: Iterable[pa.Table], options: ParquetOptions) -> list[str]:
    """Write `tables` as `out/split/part-00000.parquet`, `part-00001.parquet`, ...; return their names
    relative to `out`. Each table must hold whole requests (docs/data.md)."""
    (out / split).mkdir(parents=True, exist_ok=True)
    names = []
    for i, table in enumerate(tables):
        name = f"{split}/part-{i:05d}.parquet"
        pq.write_table(
            table,
            out / name,
            compression=options.compression,
            compression_level=options.compression_level,
            row_group_size=options.row_group_size,
            use_dictionary=options.use_dictionary,
        )
        names.append(name)
    return names


def split_path(data: Path, split: str) -> Path:
    """`data/split`, or `data` itself when it is a split directory (Parquet parts, no sub-directory
    `split`); a missing split raises DataError naming it (and how to make a `calib` split)."""
    data = Path(data)
    if (data / split).is_dir():
        return data / split
    if data.is_dir() and any(data.glob("*.parquet")):
        return data
    hint = f"; {CALIB_HINT}" if split == "calib" else ""
    raise DataError(f"{data}: no {split}/ split (and no Parquet parts directly in it){hint}")


def write_meta(out: Path, meta: dict) -> None:
    """Write `meta` as `out/meta.json` (indented, newline-terminated)."""
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
