"""KuaiRand-Pure adapter: the official CSV logs + user/video features (+ a pre-window history) to the
canonical Parquet layout.

Data: KuaiRand (Gao et al., CIKM 2022), CC BY-SA 4.0. Anything written here is derived from it and
carries the same licence; `meta.json` says so. What every output column holds, and why each choice
keeps it known before the impression is served, is specified in docs/data.md (section KuaiRand-Pure).

The package: `schema` (column names, action ids), `tables` (the CSV files), `history` (the history
Parquet), `sequences` (requests and their sequence events), `features` (feature and counter columns);
this module runs the conversion and writes through `unictr.data.canonical`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from unictr.data.canonical import ParquetOptions, write_meta, write_split
from unictr.data.errors import DataError
from unictr.data.kuairand.features import candidate_columns, counter_columns, surface_columns, user_columns
from unictr.data.kuairand.history import read_history
from unictr.data.kuairand.schema import DEFAULT_SURFACES, LABELS, NUM_ACTIONS, OTHER_SURFACE, OUTPUT_COLUMNS
from unictr.data.kuairand.sequences import (
    Requests,
    Sequences,
    drop_duplicate_rows,
    group_requests,
    ranges,
    request_sequences,
)
from unictr.data.kuairand.tables import read_logs, read_users, read_videos

PARQUET = ParquetOptions(row_group_size=8_192)  # one part per split; row groups for shards


@dataclass(frozen=True)
class _Inputs:
    """The KuaiRand files to convert (see `convert_kuairand`)."""

    logs: list[Path]
    users: Path
    videos: Path
    history: Path | None

    def all(self) -> list[Path]:
        """Every input file, in the order `meta.json` lists their SHA-256."""
        return [*self.logs, self.users, self.videos, *([self.history] if self.history else [])]


@dataclass(frozen=True)
class _Options:
    """The conversion's checked settings (see `convert_kuairand`)."""

    eval_from: str
    eval_until: str | None
    split_day: int  # eval_from as YYYYMMDD, comparable with the log's `date`
    calib_from: str | None
    calib_day: int | None  # calib_from as YYYYMMDD

    def split_code(self, date: np.ndarray) -> np.ndarray:
        """Per log row, the index of its split in `self.splits` (dates before calib/eval_from: 0)."""
        code = (date >= self.split_day).astype(np.int64)
        return code if self.calib_day is None else code + (date >= self.calib_day)

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", "eval") if self.calib_day is None else ("train", "calib", "eval")
    until_day: int | None
    surfaces: dict[int, str]
    max_seq_len: int
    request_gap_s: float
    engaged_only: bool


def convert_kuairand(
    logs: list[Path],
    users: Path,
    videos: Path,
    history: Path | None,
    eval_from: str,
    out: Path,
    surfaces: dict[int, str] | None = None,
    max_seq_len: int = 64,
    request_gap_s: float = 60.0,
    drop_duplicates: bool = True,
    eval_until: str | None = None,
    engaged_only: bool = False,
    calib_from: str | None = None,
) -> dict:
    """Convert KuaiRand-Pure files into `out/{train,eval}/part-00000.parquet` + `out/meta.json`.

    `logs`: the `log_*_pure.csv` files (standard and/or random); `users`: `user_features_pure.csv`;
    `videos`: `video_features_basic_pure.csv`; `history`: optional pre-window history Parquet;
    `eval_from`: first eval day (YYYY-MM-DD, compared with the log's `date`); `surfaces`: tab -> surface
    name (others go to `other`); `max_seq_len`: newest events kept; `request_gap_s`: see docs/data.md;
    `drop_duplicates`: keep one of rows with the same (user_id, video_id, time_ms) (the official logs
    repeat ~3% of impressions, a few with a different hour/date bucket); `eval_until`: first day
    not written at all (rows from it on are dropped, e.g. to hold out the last train day as a
    validation split); None keeps every day from `eval_from` on in eval; `engaged_only`: the log's
    impressions without engagement stay out of the sequences; `calib_from`: first calib day (YYYY-MM-DD,
    before `eval_from`): days from it until `eval_from` go to `calib/` (post-hoc calibration fits there).

    Returns the meta dict written to `meta.json`. Bad inputs raise `DataError` naming the file.
    """
    inputs = _Inputs(
        logs=[Path(p) for p in ([logs] if isinstance(logs, str | Path) else logs)],
        users=Path(users),
        videos=Path(videos),
        history=Path(history) if history is not None else None,
    )
    opts = _check_options(eval_from, eval_until, surfaces, max_seq_len, request_gap_s, engaged_only, calib_from)
    log = read_logs(inputs.logs)
    user_table = read_users(inputs.users)
    video_table = read_videos(inputs.videos)
    if inputs.history is None:
        hist, hist_uid, hist_counts = None, np.zeros(0, np.int64), np.zeros((0, 3), np.int64)
    else:
        hist, hist_uid, hist_counts = read_history(inputs.history)

    raw_rows = len(log["user_id"])
    log, after_until = _drop_from_until(log, opts)
    log, dropped = drop_duplicate_rows(log) if drop_duplicates else (log, 0)
    log, requests = group_requests(log, int(round(request_gap_s * 1000)), opts.split_code(log["date"]))
    sequences = request_sequences(log, hist, engaged_only, video_table, requests, max_seq_len)
    cols = _columns(log, requests, user_table, video_table, (hist_uid, hist_counts), opts.surfaces, inputs.logs)

    counts = {"raw_rows": raw_rows, "duplicates_dropped": dropped, "rows": len(log["user_id"])}
    meta = _meta(inputs, opts, after_until, counts | {"requests": int(len(requests.first))})
    out = Path(out)
    meta["splits"] = _write_splits(out, log, cols, requests, sequences, opts)
    write_meta(out, meta)
    return meta


def _check_options(
    eval_from: str,
    eval_until: str | None,
    surfaces: dict[int, str] | None,
    max_seq_len: int,
    request_gap_s: float,
    engaged_only: bool,
    calib_from: str | None = None,
) -> _Options:
    """The settings, checked: days parsed (calib_from before eval_from), surface names non-empty."""
    if max_seq_len < 0:
        raise DataError(f"max_seq_len must be >= 0, got {max_seq_len}")
    split_day = _parse_day(eval_from)
    until_day = _parse_day(eval_until, "eval_until") if eval_until is not None else None
    calib_day = _parse_day(calib_from, "calib_from") if calib_from is not None else None
    if calib_day is not None and calib_day >= split_day:
        raise DataError(f"calib_from={calib_from}: must be a day before eval_from={eval_from}")
    mapping = dict(DEFAULT_SURFACES if surfaces is None else surfaces)
    for k, v in mapping.items():
        if not isinstance(v, str) or not v:
            raise DataError(f"surfaces: tab {k!r} maps to {v!r}, expected a non-empty name")
    return _Options(
        eval_from, eval_until, split_day, calib_from, calib_day, until_day, mapping, max_seq_len, request_gap_s,
        engaged_only,
    )


def _columns(
    log: dict[str, np.ndarray],
    requests: Requests,
    users: tuple[np.ndarray, dict[str, np.ndarray]],
    videos: tuple[np.ndarray, dict[str, np.ndarray]],
    history: tuple[np.ndarray, np.ndarray],
    surfaces: dict[int, str],
    logs: list[Path],
) -> dict[str, np.ndarray]:
    """Every output column but the sequence lists, one value per (sorted) log row.

    `users`, `videos`: (ids, feature columns); `history`: (ids, counters); `logs` name the logs in errors."""
    cols = {"request_id": requests.id_of_row, "user_id": log["user_id"], "timestamp": log["time_ms"]}
    cols |= surface_columns(log, surfaces)
    cols |= user_columns(log["user_id"], users)
    cols |= candidate_columns(log, videos, logs)
    # Counters at the request's first impression time (strictly earlier rows), shared by its rows.
    cols |= counter_columns(log, history, requests.time[requests.index_of_row])
    return cols | {lab: log[lab] for lab in LABELS}


def _drop_from_until(log: dict[str, np.ndarray], opts: _Options) -> tuple[dict[str, np.ndarray], int]:
    """The log without the rows on or after `eval_until` (when given), and how many those were."""
    if opts.until_day is None:
        return log, 0
    keep = log["date"] < opts.until_day
    if not keep.any():
        raise DataError(f"eval_until={opts.eval_until}: every log row is on or after that day")
    return {k: v[keep] for k, v in log.items()}, int((~keep).sum())


def _meta(inputs: _Inputs, opts: _Options, after_until: int, counts: dict[str, int]) -> dict:
    """`meta.json` without its per-split statistics (`splits` is filled in once they are written).

    `counts`: raw_rows, duplicates_dropped, rows, requests."""
    return {
        "source": "KuaiRand-Pure (Gao et al., CIKM 2022)",
        "licence": "CC BY-SA 4.0: derived data, redistribute under the same licence with attribution",
        "writer": "unictr.data.kuairand.convert_kuairand",
        "files": {
            "logs": [str(p) for p in inputs.logs],
            "users": str(inputs.users),
            "videos": str(inputs.videos),
            "history": str(inputs.history) if inputs.history is not None else None,
        },
        "sha256": {str(p): _sha256(p) for p in inputs.all()},
        "eval_from": opts.eval_from,
        "calib_from": opts.calib_from,
        "eval_until": opts.eval_until,
        "rows_from_eval_until_dropped": after_until,
        "split_rule": "train: log date < eval_from (< calib_from when given); calib: calib_from <= date < "
        "eval_from; eval: eval_from <= date (< eval_until when given)",
        "surfaces": {str(k): v for k, v in sorted(opts.surfaces.items())} | {"*": OTHER_SURFACE},
        "view_type": "is_rand: 0 organic, 1 random",
        "max_seq_len": opts.max_seq_len,
        "request_gap_s": opts.request_gap_s,
        "sequence_actions": {
            "0": "history watch",
            "1": "history long watch",
            "2": "history like",
            "3": "click",
            "4": "long view",
            "5": "like",
            "6": "impression without engagement",
        },
        "engaged_only": opts.engaged_only,
        "num_actions": NUM_ACTIONS,
        **counts,
        "splits": {},
    }


def _write_splits(
    out: Path,
    log: dict[str, np.ndarray],
    cols: dict[str, np.ndarray],
    requests: Requests,
    sequences: Sequences,
    opts: _Options,
) -> dict[str, dict]:
    """Write train, calib (with `calib_from`) and eval by the log's `date`; return their statistics.

    Splits hold whole requests: a request never crosses a day boundary of `date`."""
    code = opts.split_code(log["date"])
    out.mkdir(parents=True, exist_ok=True)
    stats = {}
    for i, split in enumerate(opts.splits):
        rows = np.flatnonzero(code == i)
        if len(rows) == 0:
            lo, hi = int(log["date"].min()), int(log["date"].max())
            raise DataError(f"eval_from={opts.eval_from}, calib_from={opts.calib_from}: the {split} split is "
                            f"empty (log dates run {lo} .. {hi})")
        req = requests.index_of_row[rows]
        lengths = (sequences.end - sequences.start)[req]
        write_split(out, split, [_table(cols, sequences, rows, sequences.start[req], lengths)], PARQUET)
        stats[split] = _split_stats(cols["surface"][rows], {lab: cols[lab][rows] for lab in LABELS}, req, lengths)
    return stats


def _table(
    cols: dict[str, np.ndarray], sequences: Sequences, rows: np.ndarray, starts: np.ndarray, lengths: np.ndarray
) -> pa.Table:
    """`rows` in OUTPUT_COLUMNS order; row i's lists are events [starts[i], starts[i] + lengths[i])."""
    idx, offsets = ranges(starts, lengths)
    arrays: dict[str, pa.Array] = {}
    for c in OUTPUT_COLUMNS:
        if c in ("surface", "view_type"):
            arrays[c] = pa.array(cols[c][rows], type=pa.string())
        elif c in sequences.lists:
            src = sequences.lists[c]
            values = pa.array(src[idx] if len(idx) else np.zeros(0, np.int64), type=pa.int64())
            arrays[c] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)
        else:
            arrays[c] = pa.array(cols[c][rows])
    return pa.Table.from_pydict(arrays)


def _split_stats(
    surface: np.ndarray, labels: dict[str, np.ndarray], req: np.ndarray, seq_len: np.ndarray
) -> dict:
    """Rows, requests, mean sequence length and label rates (overall and per surface) of one split."""
    per: dict[str, dict] = {}
    for s in sorted(set(surface.tolist())):
        m = surface == s
        per[s] = {"rows": int(m.sum())} | {
            f"{lab}_rate": round(float(v[m].mean()), 5) for lab, v in labels.items()
        }
    return {
        "rows": int(len(surface)),
        "requests": int(len(np.unique(req))),
        "mean_seq_len": round(float(seq_len.mean()), 3),
        "click_rate": round(float(labels["is_click"].mean()), 5),
        "per_surface": per,
    }


def _sha256(path: Path) -> str:
    """The file's SHA-256, hex, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _parse_day(value: str, key: str = "eval_from") -> int:
    """A YYYY-MM-DD day as the YYYYMMDD integer the log's `date` uses; errors name `key`."""
    try:
        d = dt.date.fromisoformat(str(value))
    except ValueError:
        raise DataError(f"{key}: expected a date 'YYYY-MM-DD', got {value!r}") from None
    return d.year * 10000 + d.month * 100 + d.day
