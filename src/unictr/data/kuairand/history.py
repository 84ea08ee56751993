"""Reading the pre-window history Parquet into sequence events and per-user counters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from unictr.data.errors import DataError
from unictr.data.kuairand.schema import ACT_HIST_LIKE, ACT_HIST_LONG, ACT_HIST_WATCH, HISTORY_COLUMNS
from unictr.data.kuairand.tables import check_unique, ints


def read_history(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
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
    uid = ints(t, "user_id", path)
    last = ints(t, "last_time_ms", path)
    watches = ints(t, "history_len", path)
    check_unique(uid, "user_id", path)
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

