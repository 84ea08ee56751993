"""Reading and checking the KuaiRand-Pure CSV files: the logs, the user and the video features."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from unictr.data.encode import hash_strings
from unictr.data.errors import DataError
from unictr.data.kuairand.schema import (
    DURATION_BUCKETS_PER_LOG,
    LABELS,
    LOG_COLUMNS,
    MISSING,
    USER_FEATURES,
    USER_INT_COLUMNS,
    USER_STRING_COLUMNS,
    VIDEO_COLUMNS,
)


def _header(path: Path) -> list[str]:
    """The CSV's header row, stripped; errors name the file."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            row = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read as a CSV file: {e}") from None
    if not row:
        raise DataError(f"{path}: empty file, expected a CSV header")
    return [c.strip() for c in row]


def _read_csv(path: Path, kind: str, required: tuple[str, ...], types: dict[str, pa.DataType]) -> pa.Table:
    """Read `required` columns of a CSV, checking the header first; errors name the file."""
    if not path.is_file():
        raise DataError(f"{path}: {kind} file not found")
    names = _header(path)
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(
            f"{path}: not a KuaiRand {kind} file: missing column(s) {missing} (found {names[:12]}"
            f"{' ...' if len(names) > 12 else ''})"
        )
    try:
        table = pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                include_columns=list(required), column_types={c: types[c] for c in required if c in types}
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise DataError(f"{path}: malformed {kind} file: {e}") from None
    return table


def ints(table: pa.Table, col: str, path: Path, nullable: bool = False) -> np.ndarray:
    """`col` as int64; whole floats are accepted, nulls become MISSING when `nullable`, else an error."""
    arr = table[col]
    if arr.null_count:
        if not nullable:
            raise DataError(f"{path}: column {col!r} has {arr.null_count} empty value(s)")
        arr = pc.fill_null(arr, MISSING)
    if pa.types.is_floating(arr.type):
        vals = arr.to_numpy()
        if not np.all(np.isfinite(vals)) or np.any(vals != np.round(vals)):
            raise DataError(f"{path}: column {col!r} holds non-integer values")
        return vals.astype(np.int64)
    if not pa.types.is_integer(arr.type):
        raise DataError(f"{path}: column {col!r} must be integer, got {arr.type}")
    return arr.to_numpy().astype(np.int64, copy=False)


def _hash_nullable(arr: pa.ChunkedArray) -> np.ndarray:
    """Strings as int64 ids (`hash_strings`), MISSING for nulls."""
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    out = np.full(len(arr), MISSING, dtype=np.int64)
    if valid.any():
        out[valid] = hash_strings(np.asarray(arr.to_numpy(zero_copy_only=False), dtype=object)[valid])
    return out


def read_logs(paths: list[Path]) -> dict[str, np.ndarray]:
    """The LOG_COLUMNS of every log file, concatenated as int64, with 0/1 labels and YYYYMMDD dates."""
    types = {c: pa.int64() for c in LOG_COLUMNS}
    parts = []
    for p in paths:
        t = _read_csv(p, "log", LOG_COLUMNS, types)
        cols = {c: ints(t, c, p) for c in LOG_COLUMNS}
        for lab in LABELS + ("is_rand",):
            bad = ~np.isin(cols[lab], (0, 1))
            if bad.any():
                raise DataError(f"{p}: column {lab!r} must be 0/1, found {np.unique(cols[lab][bad])[:5]}")
        if np.any((cols["date"] < 19000101) | (cols["date"] > 29991231)):
            raise DataError(f"{p}: column 'date' must be YYYYMMDD integers")
        parts.append(cols)
    if not parts:
        raise DataError("no log files given")
    log = {c: np.concatenate([p[c] for p in parts]) for c in LOG_COLUMNS}
    if len(log["user_id"]) == 0:
        raise DataError(f"{', '.join(map(str, paths))}: the log file(s) hold no rows")
    return log


def read_users(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """User ids and their USER_FEATURES as int64 (strings hashed, missing values MISSING)."""
    types: dict[str, pa.DataType] = {"user_id": pa.int64()}
    types |= {c: pa.string() for c in USER_STRING_COLUMNS}
    types |= {c: pa.float64() for c in USER_INT_COLUMNS}
    t = _read_csv(path, "user features", ("user_id", *USER_FEATURES), types)
    uid = ints(t, "user_id", path)
    feats = {c: _hash_nullable(t[c]) for c in USER_STRING_COLUMNS}
    feats |= {c: ints(t, c, path, nullable=True) for c in USER_INT_COLUMNS}
    check_unique(uid, "user_id", path)
    return uid, feats


def read_videos(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Video ids and their attributes: ids (MISSING when absent), `duration_bucket`, the scaled
    `video_duration` and `upload_day` (days since the epoch, NaN when unknown)."""
    types = {
        "video_id": pa.int64(),
        "author_id": pa.float64(),
        "video_type": pa.string(),
        "upload_dt": pa.string(),
        "upload_type": pa.string(),
        "music_type": pa.float64(),
        "tag": pa.string(),
        "video_duration": pa.float64(),
    }
    t = _read_csv(path, "video features", VIDEO_COLUMNS, types)
    vid = ints(t, "video_id", path)
    check_unique(vid, "video_id", path)
    feats = {
        "author_id": ints(t, "author_id", path, nullable=True),
        "video_type": _hash_nullable(t["video_type"]),
        "upload_type": _hash_nullable(t["upload_type"]),
        "music_type": ints(t, "music_type", path, nullable=True),
    }
    # tag: first id of a comma-separated list ("20,43" -> 20); empty or unparsable -> -1
    first = pc.list_element(pc.split_pattern(pc.utf8_trim_whitespace(t["tag"]), ","), 0)
    feats["tag"] = _to_int_or_missing(first)
    dur = t["video_duration"].to_numpy(zero_copy_only=False).astype(np.float64)
    known = np.isfinite(dur) & (dur > 0)
    log_s = np.log1p(np.where(known, dur, 0.0) / 1000.0)
    feats["video_duration"] = np.where(known, log_s / 5.0, 0.0).astype(np.float32)
    feats["duration_bucket"] = np.where(known, np.floor(DURATION_BUCKETS_PER_LOG * log_s), MISSING).astype(np.int64)
    # upload day as days since the epoch (NaN when missing or malformed)
    upload = pc.strptime(
        pc.utf8_slice_codeunits(t["upload_dt"], 0, 10), format="%Y-%m-%d", unit="s", error_is_null=True
    )
    seconds = pc.fill_null(pc.cast(pc.cast(upload, pa.int64()), pa.float64()), np.nan)
    feats["upload_day"] = seconds.to_numpy(zero_copy_only=False) / 86400.0
    return vid, feats


def _to_int_or_missing(arr: pa.ChunkedArray) -> np.ndarray:
    """Decimal strings as int64; nulls and anything else MISSING."""
    s = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=object)
    out = np.full(len(s), MISSING, dtype=np.int64)
    for i, v in enumerate(s):
        if v is not None and v.lstrip("-").isdigit():
            out[i] = int(v)
    return out


def check_unique(ids: np.ndarray, col: str, path: Path) -> None:
    """Fail naming the file if `ids` repeats a value."""
    u, c = np.unique(ids, return_counts=True)
    if np.any(c > 1):
        raise DataError(f"{path}: column {col!r} has duplicate id(s) {u[c > 1][:5].tolist()}")

