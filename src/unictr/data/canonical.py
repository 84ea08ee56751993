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


def write_meta(out: Path, meta: dict) -> None:
    """Write `meta` as `out/meta.json` (indented, newline-terminated)."""
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
