"""KuaiRand-Pure adapter: the official CSV logs + user/video features (+ a pre-window history) to
the canonical Parquet layout of docs/data.md.

Data: KuaiRand (Gao et al., CIKM 2022), CC BY-SA 4.0. Anything written here is derived from it and
carries the same licence; `meta.json` says so.

Choices, all made so that every output value is known before the impression is served:

* **Rows.** One row per logged impression of every log file passed. The official logs repeat ~3% of
  impressions (same `user_id`, `video_id`, `time_ms`; a few with another hour/date bucket, which
  could put one copy in train and one in eval); only the first copy is kept (`drop_duplicates`).
  `timestamp` is the log's `time_ms` (UTC ms). Train/eval are split on the log's own `date` column
  (Beijing day): `date < eval_from` is train, the rest eval. A request never straddles the split
  (see below). Eval request ids all follow the train ones.
* **Surface.** `tab` 1, 0, 4, 6, 2 are the surfaces `tab1`, `tab0`, `tab4`, `tab6`, `tab2`; every
  other tab is `other` (the raw `tab` is also kept as a candidate feature so `other` can tell its
  tabs apart). The `surfaces` argument overrides the mapping (unmapped tabs go to `other`).
* **View type.** KuaiRand has no view type. We use `is_rand`: `organic` (0) or `random` (1). It is
  known at serving time (the system chose to show a random video) and it changes what a click
  means. The standard log is all `organic`; `random` rows come from `log_random_*_pure.csv`.
* **Request.** A user's impressions are taken in time order; consecutive ones on the same `tab`, in
  the same `(date, hourmin)` bucket (the log's clock is hourly) and no more than `request_gap_s`
  (60 s) after the previous one form one request. The rows of a request share the user side and
  one sequence snapshot, taken strictly before the request's first impression. Request ids grow
  with the request's first impression time; rows are sorted by request id, then time.
* **Sequence** (`seq_item` video ids, `seq_action`, `seq_ts`; oldest first, the newest
  `max_seq_len` kept). Two sources:

  - the pre-window history file: `watch_seq` is the user's latest (<= 50) watches, oldest first;
    `long_watch_seq` and `like_seq` are the latest (<= 50) long-watched / liked videos, sub-streams
    of the watches, truncated separately; there are no per-event times. One event per `watch_seq`
    entry, with action 2 (history like) if that occurrence (the k-th newest of the same video) is in
    `like_seq`, else 1 (history long watch) if it is in `long_watch_seq`, else 0 (history watch).
    Long watches / likes older than the watch window come first (interleaved by relative position).
    Every history event is stamped `last_time_ms`, the only time known (an upper bound).
  - the user's own logged impressions (all log files) with `time_ms` strictly before the request's
    first impression: one event per impression, with its strongest action: 3 click, 4 long view,
    5 like (like > long view > click), 6 shown without any engagement. The unengaged impressions tell
    the model what the user was shown and passed over (TransAct's sequences hold such negative
    actions too); on the validation split they add ~0.002 AUC on every task (docs/results.md).
    `engaged_only` drops them (actions 3-5 only).

  Each event also carries its video's side information, looked up like the candidate's (so the
  sequence shares the candidate tables): `seq_author` (author_id), `seq_tag` (tag) and
  `seq_duration` (duration_bucket); -1 for a video missing from the video file.

  Events are ordered by time (history before log events at equal times). An event is included only
  if its time is strictly before the request's time, so `seq_ts < timestamp` for every row.
  `num_actions` must be >= 7. (An action is stamped with its impression's `time_ms`, as the
  KuaiRand README prescribes; on this slice a later impression of the same user starts before
  the earlier one's play ends only ~30 times in 95k rows.)
* **Features.** User side (from `user_features_pure.csv`, a static snapshot): `user_id`, the bucket
  and flag columns (strings hashed with `hash_strings`), `onehot_feat0..17`; missing values and
  users absent from the file are -1. Candidate side: `video_id`, `author_id`, `video_type`,
  `upload_type`, `music_type`, `tag` (first tag of a comma list), `duration_bucket`
  (floor(4 ln(1 + seconds)), -1 when missing), `tab`, `hour` (`hourmin // 100`),
  `day_of_week` (0 = Monday, from `date`); dense `video_duration` = log1p(seconds) / 5 from the video
  file (0 when missing) and `video_age_days` = log1p(days since `upload_dt` at the impression) / 5
  (0 when missing).
* **Counters** (dense, log1p(count) / 5), what a live system's counters would hold when the request
  arrives: `user_history_watches` (the history file's `history_len`, watches before the window),
  `user_history_long_views` / `user_history_likes` (lengths of `long_watch_seq` / `like_seq`, capped
  at 50 by the file; all three 0 without a history), and, over the log rows (all files) strictly
  before the request's first impression, `user_prior_{impressions,clicks,long_views,likes}` for the
  request's user and `video_prior_{impressions,clicks,long_views,likes}` for the candidate video
  (all users). Like the sequence, they use labels of earlier impressions only, and the rows of a
  request share one snapshot.
* **Labels.** `is_click`, `long_view`, `is_like` (int64 0/1).

Fixed constants, nothing fitted on the data. Post-impression columns (`play_time_ms`, `duration_ms`,
`profile_stay_time`, `comment_stay_time`, the other labels) of a row never reach that row's features.

Everything is vectorised with numpy/pyarrow; memory is proportional to the input and output.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from unictr.data.encode import hash_strings
from unictr.data.errors import DataError

DEFAULT_SURFACES: dict[int, str] = {1: "tab1", 0: "tab0", 4: "tab4", 6: "tab6", 2: "tab2"}
OTHER_SURFACE = "other"
VIEW_TYPES = ("organic", "random")
LABELS = ("is_click", "long_view", "is_like")
MISSING = -1

# Action ids of the sequence.
ACT_HIST_WATCH, ACT_HIST_LONG, ACT_HIST_LIKE = 0, 1, 2
ACT_CLICK, ACT_LONG_VIEW, ACT_LIKE, ACT_IMPRESSION = 3, 4, 5, 6
NUM_ACTIONS = 7
DURATION_BUCKETS_PER_LOG = 4  # duration_bucket = floor(4 * ln(1 + seconds))

LOG_COLUMNS = (
    "user_id",
    "video_id",
    "date",
    "hourmin",
    "time_ms",
    "is_click",
    "long_view",
    "is_like",
    "is_rand",
    "tab",
)
USER_STRING_COLUMNS = (
    "user_active_degree",
    "follow_user_num_range",
    "fans_user_num_range",
    "friend_user_num_range",
    "register_days_range",
)
USER_INT_COLUMNS = (
    "is_lowactive_period",
    "is_live_streamer",
    "is_video_author",
    *(f"onehot_feat{i}" for i in range(18)),
)
USER_FEATURES = (
    "user_active_degree",
    "is_lowactive_period",
    "is_live_streamer",
    "is_video_author",
    "follow_user_num_range",
    "fans_user_num_range",
    "friend_user_num_range",
    "register_days_range",
    *(f"onehot_feat{i}" for i in range(18)),
)
VIDEO_COLUMNS = (
    "video_id",
    "author_id",
    "video_type",
    "upload_dt",
    "upload_type",
    "music_type",
    "tag",
    "video_duration",
)
HISTORY_COLUMNS = ("user_id", "history_len", "last_time_ms", "watch_seq", "long_watch_seq", "like_seq")
CAND_CAT = (
    "video_id",
    "author_id",
    "video_type",
    "upload_type",
    "music_type",
    "tag",
    "duration_bucket",
    "tab",
    "hour",
    "day_of_week",
)
# Counters of what happened before the request (log rows strictly earlier; history_len before the window).
USER_COUNTERS = (
    "user_history_watches",
    "user_history_long_views",
    "user_history_likes",
    "user_prior_impressions",
    "user_prior_clicks",
    "user_prior_long_views",
    "user_prior_likes",
)
VIDEO_COUNTERS = ("video_prior_impressions", "video_prior_clicks", "video_prior_long_views", "video_prior_likes")
CAND_DENSE = ("video_duration", "video_age_days", *VIDEO_COUNTERS)
SEQ_COLUMNS = ("seq_item", "seq_action", "seq_ts")
# Per-event side information: list column -> the candidate column (video attribute) it is looked up from.
SEQ_SIDE_COLUMNS = {"seq_author": "author_id", "seq_tag": "tag", "seq_duration": "duration_bucket"}

# Column order of the written Parquet.
OUTPUT_COLUMNS = (
    "request_id",
    "user_id",
    "timestamp",
    "surface",
    "view_type",
    *USER_FEATURES,
    *USER_COUNTERS,
    *CAND_CAT,
    *CAND_DENSE,
    *LABELS,
    *SEQ_COLUMNS,
    *SEQ_SIDE_COLUMNS,
)

_BEIJING_MS = 8 * 3600 * 1000
_DAY_MS = 86400 * 1000


# ----------------------------------------------------------------------------------------- reading


def _header(path: Path) -> list[str]:
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


def _ints(table: pa.Table, col: str, path: Path, nullable: bool = False) -> np.ndarray:
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
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    out = np.full(len(arr), MISSING, dtype=np.int64)
    if valid.any():
        out[valid] = hash_strings(np.asarray(arr.to_numpy(zero_copy_only=False), dtype=object)[valid])
    return out


def _read_logs(paths: list[Path]) -> dict[str, np.ndarray]:
    types = {c: pa.int64() for c in LOG_COLUMNS}
    parts = []
    for p in paths:
        t = _read_csv(p, "log", LOG_COLUMNS, types)
        cols = {c: _ints(t, c, p) for c in LOG_COLUMNS}
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


def _read_users(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    types: dict[str, pa.DataType] = {"user_id": pa.int64()}
    types |= {c: pa.string() for c in USER_STRING_COLUMNS}
    types |= {c: pa.float64() for c in USER_INT_COLUMNS}
    t = _read_csv(path, "user features", ("user_id", *USER_FEATURES), types)
    uid = _ints(t, "user_id", path)
    feats = {c: _hash_nullable(t[c]) for c in USER_STRING_COLUMNS}
    feats |= {c: _ints(t, c, path, nullable=True) for c in USER_INT_COLUMNS}
    _check_unique(uid, "user_id", path)
    return uid, feats


def _read_videos(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
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
    vid = _ints(t, "video_id", path)
    _check_unique(vid, "video_id", path)
    feats = {
        "author_id": _ints(t, "author_id", path, nullable=True),
        "video_type": _hash_nullable(t["video_type"]),
        "upload_type": _hash_nullable(t["upload_type"]),
        "music_type": _ints(t, "music_type", path, nullable=True),
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
    s = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=object)
    out = np.full(len(s), MISSING, dtype=np.int64)
    for i, v in enumerate(s):
        if v is not None and v.lstrip("-").isdigit():
            out[i] = int(v)
    return out


def _check_unique(ids: np.ndarray, col: str, path: Path) -> None:
    u, c = np.unique(ids, return_counts=True)
    if np.any(c > 1):
        raise DataError(f"{path}: column {col!r} has duplicate id(s) {u[c > 1][:5].tolist()}")


def _read_history(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The history events (see `_merge_history`), each history user's id, and their counters: `history_len`
    (watches) and the lengths of `long_watch_seq` and `like_seq` (each capped at 50 by the file)."""
    if not path.is_file():
        raise DataError(f"{path}: history file not found")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a Parquet history file: {e}") from None
    names = pf.schema_arrow.names
    missing = [c for c in HISTORY_COLUMNS if c not in names]
    if missing:
        raise DataError(f"{path}: not a KuaiRand history file: missing column(s) {missing} (found {names})")
    t = pf.read(columns=list(HISTORY_COLUMNS))
    uid = _ints(t, "user_id", path)
    last = _ints(t, "last_time_ms", path)
    watches = _ints(t, "history_len", path)
    _check_unique(uid, "user_id", path)
    streams = {}
    for stream in ("watch_seq", "long_watch_seq", "like_seq"):
        col = t[stream]
        if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)) or not pa.types.is_integer(
            col.type.value_type
        ):
            raise DataError(f"{path}: column {stream!r} must be list<int64>, got {col.type}")
        col = pc.fill_null(col.combine_chunks(), pa.scalar([], col.type))
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)
        flat = pc.list_flatten(col)
        if flat.null_count:
            raise DataError(f"{path}: column {stream!r} holds {flat.null_count} empty list element(s)")
        parent = np.repeat(np.arange(len(lengths)), lengths)
        pos = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        streams[stream] = {
            "row": parent,
            "item": flat.to_numpy(zero_copy_only=False).astype(np.int64),
            "pos": pos,
            "len": lengths[parent],
        }
    lengths = [np.bincount(streams[s]["row"], minlength=len(uid)) for s in ("long_watch_seq", "like_seq")]
    counters = np.stack([watches, *lengths], 1)
    return _merge_history(streams, uid, last), uid, counters


def _occurrence_key(
    row: np.ndarray, item: np.ndarray, pos: np.ndarray, n_items: int, ranks: int
) -> np.ndarray:
    """(row, item, k) as one int64, k = 0 for the newest occurrence of item in the row's list, 1 next..."""
    o = np.lexsort((-pos, item, row))
    r, i = row[o], item[o]
    start = np.r_[True, (r[1:] != r[:-1]) | (i[1:] != i[:-1])]
    idx = np.arange(len(o))
    rank_sorted = idx - np.maximum.accumulate(np.where(start, idx, 0))
    rank = np.empty(len(o), dtype=np.int64)
    rank[o] = rank_sorted
    return (row * n_items + item) * ranks + rank


def _merge_history(streams: dict[str, dict[str, np.ndarray]], uid: np.ndarray, last: np.ndarray) -> dict:
    """One event per `watch_seq` entry, upgraded to long watch / like when the same occurrence (the k-th
    newest of that item) is in `long_watch_seq` / `like_seq` (these are sub-streams of the watches);
    entries of those lists that match no watch in the window are older: they come first, interleaved
    by relative position."""
    w, lw, lk = streams["watch_seq"], streams["long_watch_seq"], streams["like_seq"]
    all_items = np.concatenate([w["item"], lw["item"], lk["item"]])
    uniq = np.unique(all_items)
    ranks = int(max(np.bincount(w["len"]).size, np.bincount(lw["len"]).size, np.bincount(lk["len"]).size)) + 1
    if len(uid) * max(len(uniq), 1) * ranks >= 2**62:
        raise DataError("history: too many distinct ids to index")

    def key(s: dict[str, np.ndarray]) -> np.ndarray:
        return _occurrence_key(s["row"], np.searchsorted(uniq, s["item"]), s["pos"], max(len(uniq), 1), ranks)

    wk, lwk, lkk = key(w), key(lw), key(lk)
    action = np.full(len(wk), ACT_HIST_WATCH, dtype=np.int64)
    action[np.isin(wk, lwk)] = ACT_HIST_LONG
    action[np.isin(wk, lkk)] = ACT_HIST_LIKE  # like > long watch > watch
    old_lw = ~np.isin(lwk, wk)
    old_lk = ~np.isin(lkk, wk)
    parts = [
        # older unmatched long watches / likes first (order in (0, 1)), then the watch window (order >= 1)
        (
            lw["row"][old_lw],
            lw["item"][old_lw],
            ACT_HIST_LONG,
            (lw["pos"] + 1)[old_lw] / (lw["len"] + 1)[old_lw],
        ),
        (
            lk["row"][old_lk],
            lk["item"][old_lk],
            ACT_HIST_LIKE,
            (lk["pos"] + 1)[old_lk] / (lk["len"] + 1)[old_lk],
        ),
        (w["row"], w["item"], action, 1.0 + w["pos"]),
    ]
    row = np.concatenate([p[0] for p in parts])
    n_each = [len(p[0]) for p in parts]
    return {
        "user": uid[row],
        "item": np.concatenate([p[1] for p in parts]),
        "ts": last[row],
        "action": np.concatenate(
            [np.broadcast_to(np.asarray(p[2], np.int64), (k,)) for p, k in zip(parts, n_each, strict=True)]
        ),
        "order": np.concatenate([p[3] for p in parts]).astype(np.float64),
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _parse_day(value: str, key: str = "eval_from") -> int:
    try:
        d = dt.date.fromisoformat(str(value))
    except ValueError:
        raise DataError(f"{key}: expected a date 'YYYY-MM-DD', got {value!r}") from None
    return d.year * 10000 + d.month * 100 + d.day


# ------------------------------------------------------------------------------------- converting


def _lookup(keys: np.ndarray, table_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row of each key in `table_ids` (sorted lookup); second array says whether it was found."""
    if len(table_ids) == 0:
        return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
    order = np.argsort(table_ids, kind="stable")
    sorted_ids = table_ids[order]
    pos = np.minimum(np.searchsorted(sorted_ids, keys), len(sorted_ids) - 1)
    return order[pos], sorted_ids[pos] == keys


def _gather(values: np.ndarray, idx: np.ndarray, found: np.ndarray, fill: float | int) -> np.ndarray:
    out = values[idx] if len(values) else np.zeros(len(idx), dtype=values.dtype)
    return np.where(found, out, np.asarray(fill, dtype=values.dtype)).astype(values.dtype)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated aranges [s, s+l) and their list offsets."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    idx = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
    return idx, offsets


def _scaled_count(count: np.ndarray) -> np.ndarray:
    return (np.log1p(count) / 5.0).astype(np.float32)


def _counts_before(
    key: np.ndarray, ts: np.ndarray, labels: dict[str, np.ndarray], q_key: np.ndarray, q_ts: np.ndarray
) -> list[np.ndarray]:
    """For each query (key, time): the rows with that key and `ts` strictly before the time, and how
    many of them carry each label: [rows, *label sums in `labels` order]."""
    uniq = np.unique(np.concatenate([key, q_key]))
    t0 = min(int(ts.min()), int(q_ts.min()))
    span = max(int(ts.max()), int(q_ts.max())) - t0 + 1
    if len(uniq) * span >= 2**62:
        raise DataError("timestamps span too wide to index (check time_ms units)")
    comb = np.searchsorted(uniq, key) * span + (ts - t0)
    order = np.argsort(comb, kind="stable")
    comb = comb[order]
    base = np.searchsorted(uniq, q_key) * span
    lo = np.searchsorted(comb, base, side="left")
    hi = np.searchsorted(comb, base + (q_ts - t0), side="left")  # strictly earlier
    out = [hi - lo]
    for v in labels.values():
        cum = np.r_[0, np.cumsum(v[order])]
        out.append(cum[hi] - cum[lo])
    return out


def _drop_duplicates(log: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    """Keep the first of rows with the same (user_id, video_id, time_ms): one logged impression."""
    n = len(log["user_id"])
    o = np.lexsort((np.arange(n), log["time_ms"], log["video_id"], log["user_id"]))
    u, v, t = log["user_id"][o], log["video_id"][o], log["time_ms"][o]
    dup = np.zeros(n, dtype=bool)
    dup[1:] = (u[1:] == u[:-1]) & (v[1:] == v[:-1]) & (t[1:] == t[:-1])
    keep = np.sort(o[~dup])
    return {k: a[keep] for k, a in log.items()}, int(dup.sum())


def _request_ids(log: dict[str, np.ndarray], gap_ms: int, split: np.ndarray) -> np.ndarray:
    """Group each user's consecutive impressions (same tab, same (date, hourmin), gap <= gap_ms).

    Ids are numbered by (split, first impression time, user): they grow with time within a split and
    every eval id is above every train id."""
    u, t = log["user_id"], log["time_ms"]
    n = len(u)
    order = np.lexsort((np.arange(n), t, u))
    us, ts = u[order], t[order]
    new = np.ones(n, dtype=bool)
    new[1:] = (
        (us[1:] != us[:-1])
        | (log["tab"][order][1:] != log["tab"][order][:-1])
        | (log["date"][order][1:] != log["date"][order][:-1])
        | (log["hourmin"][order][1:] != log["hourmin"][order][:-1])
        | (np.diff(ts) > gap_ms)
    )
    group = np.cumsum(new) - 1  # in (user, time) order
    first_t = ts[new]
    first_u = us[new]
    first_split = split[order][new]
    rank = np.empty(len(first_t), dtype=np.int64)
    rank[np.lexsort((first_u, first_t, first_split))] = np.arange(len(first_t))
    rid = np.empty(n, dtype=np.int64)
    rid[order] = rank[group]
    return rid


def _events(
    log: dict[str, np.ndarray], history: dict[str, np.ndarray] | None, engaged_only: bool
) -> dict[str, np.ndarray]:
    """All sequence events, sorted by (user, time, source, order)."""
    act = np.select(
        [log["is_like"] == 1, log["long_view"] == 1, log["is_click"] == 1], [ACT_LIKE, ACT_LONG_VIEW, ACT_CLICK],
        ACT_IMPRESSION,
    )
    logged = act != ACT_IMPRESSION if engaged_only else np.ones(len(act), dtype=bool)  # rows that become events
    ev = {
        "user": log["user_id"][logged],
        "item": log["video_id"][logged],
        "ts": log["time_ms"][logged],
        "action": act[logged].astype(np.int64),
        "source": np.ones(int(logged.sum()), dtype=np.int64),
        "order": np.flatnonzero(logged).astype(np.float64),  # stable among equal times
    }
    if history is not None:
        keep = np.isin(history["user"], np.unique(log["user_id"]))
        h = {k: v[keep] for k, v in history.items()}
        ev = {
            "user": np.concatenate([h["user"], ev["user"]]),
            "item": np.concatenate([h["item"], ev["item"]]),
            "ts": np.concatenate([h["ts"], ev["ts"]]),
            "action": np.concatenate([h["action"], ev["action"]]),
            "source": np.concatenate([np.zeros(len(h["user"]), np.int64), ev["source"]]),
            "order": np.concatenate([h["order"], ev["order"]]),
        }
    o = np.lexsort((ev["order"], ev["source"], ev["ts"], ev["user"]))
    return {k: v[o] for k, v in ev.items()}


def _sequence_bounds(
    ev: dict[str, np.ndarray], req_user: np.ndarray, req_time: np.ndarray, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each request, the slice [start, end) of `ev` holding the user's newest events with ts < time."""
    if len(ev["user"]) == 0:
        z = np.zeros(len(req_user), dtype=np.int64)
        return z, z
    users = np.unique(np.concatenate([ev["user"], req_user]))
    ev_code = np.searchsorted(users, ev["user"])
    rq_code = np.searchsorted(users, req_user)
    t0 = min(int(ev["ts"].min()), int(req_time.min()))
    span = max(int(ev["ts"].max()), int(req_time.max())) - t0 + 1
    if len(users) * span >= 2**62:
        raise DataError("timestamps span too wide to index (check time_ms / last_time_ms units)")
    key = ev_code * span + (ev["ts"] - t0)  # sorted, since ev is sorted by (user, ts)
    end = np.searchsorted(key, rq_code * span + (req_time - t0), side="left")  # strictly earlier
    user_start = np.searchsorted(key, rq_code * span, side="left")
    start = np.maximum(user_start, end - max_len)
    return start, end


def _day_of_week(date: np.ndarray, paths: list[Path]) -> np.ndarray:
    """0 = Monday ... 6 = Sunday, from YYYYMMDD integers."""
    uniq, inv = np.unique(date, return_inverse=True)
    try:
        days = np.array(
            [f"{v // 10000:04d}-{v // 100 % 100:02d}-{v % 100:02d}" for v in uniq], dtype="datetime64[D]"
        )
    except ValueError:
        raise DataError(
            f"{', '.join(map(str, paths))}: column 'date' holds an invalid YYYYMMDD date "
            f"among {uniq[:5].tolist()}"
        ) from None
    return ((days.astype(np.int64) + 3) % 7)[inv.reshape(-1)]  # 1970-01-01 was a Thursday


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
) -> dict:
    """Convert KuaiRand-Pure files into `out/{train,eval}/part-00000.parquet` + `out/meta.json`.

    `logs`: the `log_*_pure.csv` files (standard and/or random); `users`: `user_features_pure.csv`;
    `videos`: `video_features_basic_pure.csv`; `history`: optional pre-window history Parquet;
    `eval_from`: first eval day (YYYY-MM-DD, compared with the log's `date`); `surfaces`: tab -> surface
    name (others go to `other`); `max_seq_len`: newest events kept; `request_gap_s`: see the module doc;
    `drop_duplicates`: keep one of rows with the same (user_id, video_id, time_ms) (the official logs
    repeat ~3% of impressions, a few with a different hour/date bucket); `eval_until`: first day
    not written at all (rows from it on are dropped, e.g. to hold out the last train day as a
    validation split); None keeps every day from `eval_from` on in eval; `engaged_only`: the log's
    impressions without engagement stay out of the sequences.

    Returns the meta dict written to `meta.json`. Bad inputs raise `DataError` naming the file.
    """
    logs = [Path(p) for p in ([logs] if isinstance(logs, str | Path) else logs)]
    users, videos, out = Path(users), Path(videos), Path(out)
    history = Path(history) if history is not None else None
    if max_seq_len < 0:
        raise DataError(f"max_seq_len must be >= 0, got {max_seq_len}")
    split_day = _parse_day(eval_from)
    until_day = _parse_day(eval_until, "eval_until") if eval_until is not None else None
    mapping = dict(DEFAULT_SURFACES if surfaces is None else surfaces)
    for k, v in mapping.items():
        if not isinstance(v, str) or not v:
            raise DataError(f"surfaces: tab {k!r} maps to {v!r}, expected a non-empty name")

    log = _read_logs(logs)
    uid, ufeat = _read_users(users)
    vid, vfeat = _read_videos(videos)
    none = np.zeros(0, np.int64)
    hist, hist_uid, hist_counts = (None, none, none.reshape(0, 3)) if history is None else _read_history(history)

    raw_rows = len(log["user_id"])
    after_until = 0
    if until_day is not None:
        keep = log["date"] < until_day
        after_until = int((~keep).sum())
        if not keep.any():
            raise DataError(f"eval_until={eval_until}: every log row is on or after that day")
        log = {k: v[keep] for k, v in log.items()}
    dropped = 0
    if drop_duplicates:
        log, dropped = _drop_duplicates(log)
    n = len(log["user_id"])
    rid = _request_ids(log, int(round(request_gap_s * 1000)), log["date"] >= split_day)
    order = np.lexsort((np.arange(n), log["time_ms"], rid))  # rows by request, then time
    log = {k: v[order] for k, v in log.items()}
    rid = rid[order]

    # Requests: first row of each run of equal ids.
    first = np.flatnonzero(np.r_[True, rid[1:] != rid[:-1]])
    req_of_row = np.cumsum(np.r_[False, rid[1:] != rid[:-1]])
    req_user = log["user_id"][first]
    req_time = log["time_ms"][first]

    ev = _events(log, hist, engaged_only)
    evi, evfound = _lookup(ev["item"], vid)
    ev_lists = {"seq_item": ev["item"], "seq_action": ev["action"], "seq_ts": ev["ts"]}
    ev_lists |= {c: _gather(vfeat[f], evi, evfound, MISSING) for c, f in SEQ_SIDE_COLUMNS.items()}
    seq_start, seq_end = _sequence_bounds(ev, req_user, req_time, max_seq_len)

    # Columns.
    cols: dict[str, np.ndarray] = {
        "request_id": rid,
        "user_id": log["user_id"],
        "timestamp": log["time_ms"],
    }
    tab = log["tab"]
    surface_names = sorted(set(mapping.values()) | {OTHER_SURFACE})
    surf_idx = np.full(n, surface_names.index(OTHER_SURFACE), dtype=np.int64)
    for k, v in mapping.items():
        surf_idx[tab == int(k)] = surface_names.index(v)
    surface = np.asarray(surface_names, dtype=object)[surf_idx]
    view_type = np.asarray(VIEW_TYPES, dtype=object)[log["is_rand"]]

    ui, ufound = _lookup(log["user_id"], uid)
    for c in USER_FEATURES:
        cols[c] = _gather(ufeat[c], ui, ufound, MISSING)
    vi, vfound = _lookup(log["video_id"], vid)
    cols["video_id"] = log["video_id"]
    for c in ("author_id", "video_type", "upload_type", "music_type", "tag", "duration_bucket"):
        cols[c] = _gather(vfeat[c], vi, vfound, MISSING)
    cols["tab"] = tab
    cols["hour"] = log["hourmin"] // 100
    cols["day_of_week"] = _day_of_week(log["date"], logs)
    cols["video_duration"] = _gather(vfeat["video_duration"], vi, vfound, 0.0).astype(np.float32)
    upload_day = _gather(vfeat["upload_day"], vi, vfound, np.nan)
    local_day = (log["time_ms"] + _BEIJING_MS) / _DAY_MS
    age = local_day - upload_day
    cols["video_age_days"] = np.where(np.isfinite(age), np.log1p(np.maximum(age, 0.0)) / 5.0, 0.0).astype(
        np.float32
    )
    # Counters at the request's first impression time (strictly earlier rows), shared by its rows.
    hi, hfound = _lookup(log["user_id"], hist_uid)
    for j, name in enumerate(("watches", "long_views", "likes")):
        cols[f"user_history_{name}"] = _scaled_count(_gather(hist_counts[:, j], hi, hfound, 0))
    t_req = req_time[req_of_row]
    for who in ("user", "video"):
        key = log[f"{who}_id"]
        counts = _counts_before(key, log["time_ms"], {lab: log[lab] for lab in LABELS}, key, t_req)
        for name, c in zip(("impressions", "clicks", "long_views", "likes"), counts, strict=True):
            cols[f"{who}_prior_{name}"] = _scaled_count(c)
    for lab in LABELS:
        cols[lab] = log[lab]

    # Splits (whole requests: a request never crosses a day boundary of `date`).
    is_train = log["date"] < split_day
    meta_splits: dict[str, dict] = {}
    meta: dict = {
        "source": "KuaiRand-Pure (Gao et al., CIKM 2022)",
        "licence": "CC BY-SA 4.0: derived data, redistribute under the same licence with attribution",
        "writer": "unictr.data.kuairand.convert_kuairand",
        "files": {
            "logs": [str(p) for p in logs],
            "users": str(users),
            "videos": str(videos),
            "history": str(history) if history is not None else None,
        },
        "sha256": {str(p): _sha256(p) for p in [*logs, users, videos, *([history] if history else [])]},
        "eval_from": eval_from,
        "eval_until": eval_until,
        "rows_from_eval_until_dropped": after_until,
        "split_rule": "train: log date < eval_from; eval: eval_from <= date (< eval_until when given)",
        "surfaces": {str(k): v for k, v in sorted(mapping.items())} | {"*": OTHER_SURFACE},
        "view_type": "is_rand: 0 organic, 1 random",
        "max_seq_len": max_seq_len,
        "request_gap_s": request_gap_s,
        "sequence_actions": {
            "0": "history watch",
            "1": "history long watch",
            "2": "history like",
            "3": "click",
            "4": "long view",
            "5": "like",
            "6": "impression without engagement",
        },
        "engaged_only": engaged_only,
        "num_actions": NUM_ACTIONS,
        "raw_rows": raw_rows,
        "duplicates_dropped": dropped,
        "rows": n,
        "requests": int(len(first)),
        "splits": meta_splits,
    }
    out.mkdir(parents=True, exist_ok=True)
    for split, mask in (("train", is_train), ("eval", ~is_train)):
        rows = np.flatnonzero(mask)
        if len(rows) == 0:
            lo, hi = int(log["date"].min()), int(log["date"].max())
            raise DataError(f"eval_from={eval_from}: the {split} split is empty (log dates run {lo} .. {hi})")
        req = req_of_row[rows]
        lengths = (seq_end - seq_start)[req]
        idx, offsets = _ranges(seq_start[req], lengths)
        arrays: dict[str, pa.Array] = {}
        for c in OUTPUT_COLUMNS:
            if c == "surface":
                arrays[c] = pa.array(surface[rows], type=pa.string())
            elif c == "view_type":
                arrays[c] = pa.array(view_type[rows], type=pa.string())
            elif c in ev_lists:
                src = ev_lists[c]
                values = pa.array(src[idx] if len(idx) else np.zeros(0, np.int64), type=pa.int64())
                arrays[c] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)
            else:
                arrays[c] = pa.array(cols[c][rows])
        table = pa.Table.from_pydict(arrays)
        (out / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out / split / "part-00000.parquet")
        meta_splits[split] = _split_stats(
            surface[rows], {lab: cols[lab][rows] for lab in LABELS}, req, lengths
        )
    meta["splits"] = meta_splits
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _split_stats(
    surface: np.ndarray, labels: dict[str, np.ndarray], req: np.ndarray, seq_len: np.ndarray
) -> dict:
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
