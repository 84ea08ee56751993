"""Feature columns of the converted rows: lookups into the user / video tables and prior counters."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unictr.data.errors import DataError
from unictr.data.kuairand.schema import LABELS, MISSING, OTHER_SURFACE, USER_FEATURES, VIEW_TYPES

_BEIJING_MS = 8 * 3600 * 1000
_DAY_MS = 86400 * 1000


def lookup(keys: np.ndarray, table_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row of each key in `table_ids` (sorted lookup); second array says whether it was found."""
    if len(table_ids) == 0:
        return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
    order = np.argsort(table_ids, kind="stable")
    sorted_ids = table_ids[order]
    pos = np.minimum(np.searchsorted(sorted_ids, keys), len(sorted_ids) - 1)
    return order[pos], sorted_ids[pos] == keys


def gather(values: np.ndarray, idx: np.ndarray, found: np.ndarray, fill: float | int) -> np.ndarray:
    """`values[idx]` where `found`, else `fill`, in `values`' dtype."""
    out = values[idx] if len(values) else np.zeros(len(idx), dtype=values.dtype)
    return np.where(found, out, np.asarray(fill, dtype=values.dtype)).astype(values.dtype)


def _scaled_count(count: np.ndarray) -> np.ndarray:
    """A counter as a dense feature: log1p(count) / 5."""
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




def surface_columns(log: dict[str, np.ndarray], mapping: dict[int, str]) -> dict[str, np.ndarray]:
    """`surface` (from `tab` by `mapping`, others `other`) and `view_type` (from `is_rand`), as strings."""
    tab = log["tab"]
    surface_names = sorted(set(mapping.values()) | {OTHER_SURFACE})
    surf_idx = np.full(len(tab), surface_names.index(OTHER_SURFACE), dtype=np.int64)
    for k, v in mapping.items():
        surf_idx[tab == int(k)] = surface_names.index(v)
    return {
        "surface": np.asarray(surface_names, dtype=object)[surf_idx],
        "view_type": np.asarray(VIEW_TYPES, dtype=object)[log["is_rand"]],
    }


def user_columns(user_id: np.ndarray, users: tuple[np.ndarray, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The user-feature file's columns for each row's user (-1 for users absent from the file)."""
    uid, ufeat = users
    ui, ufound = lookup(user_id, uid)
    return {c: gather(ufeat[c], ui, ufound, MISSING) for c in USER_FEATURES}


def candidate_columns(
    log: dict[str, np.ndarray], videos: tuple[np.ndarray, dict[str, np.ndarray]], paths: list[Path]
) -> dict[str, np.ndarray]:
    """The candidate side: the video file's attributes of each row's video, and the impression's
    `tab`, `hour`, `day_of_week` and `video_age_days`. `paths` name the logs in errors."""
    vid, vfeat = videos
    vi, vfound = lookup(log["video_id"], vid)
    cols = {"video_id": log["video_id"]}
    for c in ("author_id", "video_type", "upload_type", "music_type", "tag", "duration_bucket"):
        cols[c] = gather(vfeat[c], vi, vfound, MISSING)
    cols["tab"] = log["tab"]
    cols["hour"] = log["hourmin"] // 100
    cols["day_of_week"] = _day_of_week(log["date"], paths)
    cols["video_duration"] = gather(vfeat["video_duration"], vi, vfound, 0.0).astype(np.float32)
    upload_day = gather(vfeat["upload_day"], vi, vfound, np.nan)
    local_day = (log["time_ms"] + _BEIJING_MS) / _DAY_MS
    age = local_day - upload_day
    cols["video_age_days"] = np.where(np.isfinite(age), np.log1p(np.maximum(age, 0.0)) / 5.0, 0.0).astype(
        np.float32
    )
    return cols


def counter_columns(
    log: dict[str, np.ndarray], history: tuple[np.ndarray, np.ndarray], request_time: np.ndarray
) -> dict[str, np.ndarray]:
    """The user's history counters (`history` = (user ids, [watches, long views, likes] per user)) and
    the user's and video's prior counts over log rows strictly before each row's `request_time`."""
    hist_uid, hist_counts = history
    cols = {}
    hi, hfound = lookup(log["user_id"], hist_uid)
    for j, name in enumerate(("watches", "long_views", "likes")):
        cols[f"user_history_{name}"] = _scaled_count(gather(hist_counts[:, j], hi, hfound, 0))
    for who in ("user", "video"):
        key = log[f"{who}_id"]
        counts = _counts_before(key, log["time_ms"], {lab: log[lab] for lab in LABELS}, key, request_time)
        for name, c in zip(("impressions", "clicks", "long_views", "likes"), counts, strict=True):
            cols[f"{who}_prior_{name}"] = _scaled_count(c)
    return cols
