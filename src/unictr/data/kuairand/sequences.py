"""Requests and in-log sequences: de-duplicated impressions grouped into requests, and each request's
slice of the user's earlier events (history and logged impressions)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unictr.data.errors import DataError
from unictr.data.kuairand.features import gather, lookup
from unictr.data.kuairand.schema import (
    ACT_CLICK,
    ACT_IMPRESSION,
    ACT_LIKE,
    ACT_LONG_VIEW,
    MISSING,
    SEQ_SIDE_COLUMNS,
)


@dataclass(frozen=True)
class Requests:
    """The requests of the log rows (sorted by request id, then time): each row's request id, and per
    request its first row, user and time (the time its sequence and counters are taken at)."""

    id_of_row: np.ndarray
    index_of_row: np.ndarray  # row -> request index in [0, R)
    first: np.ndarray
    user: np.ndarray
    time: np.ndarray


@dataclass(frozen=True)
class Sequences:
    """Every event's list-column values (`seq_item`, `seq_action`, `seq_ts`, side columns) and each
    request's slice [start, end) of them."""

    lists: dict[str, np.ndarray]
    start: np.ndarray
    end: np.ndarray


def group_requests(
    log: dict[str, np.ndarray], gap_ms: int, split: np.ndarray
) -> tuple[dict[str, np.ndarray], Requests]:
    """The log sorted by request id, then time, and its requests (see `_request_ids`); `split` is each
    row's split in time order (0 train, then calib, eval), so ids grow from split to split."""
    rid = _request_ids(log, gap_ms, split)
    order = np.lexsort((np.arange(len(rid)), log["time_ms"], rid))  # rows by request, then time
    log = {k: v[order] for k, v in log.items()}
    rid = rid[order]
    first = np.flatnonzero(np.r_[True, rid[1:] != rid[:-1]])  # first row of each run of equal ids
    return log, Requests(
        id_of_row=rid,
        index_of_row=np.cumsum(np.r_[False, rid[1:] != rid[:-1]]),
        first=first,
        user=log["user_id"][first],
        time=log["time_ms"][first],
    )


def request_sequences(
    log: dict[str, np.ndarray],
    history: dict[str, np.ndarray] | None,
    engaged_only: bool,
    videos: tuple[np.ndarray, dict[str, np.ndarray]],
    requests: Requests,
    max_len: int,
) -> Sequences:
    """The events of `history` and the log, with their videos' side columns, and each request's newest
    `max_len` events strictly before its time."""
    ev = _events(log, history, engaged_only)
    vid, vfeat = videos
    evi, evfound = lookup(ev["item"], vid)
    lists = {"seq_item": ev["item"], "seq_action": ev["action"], "seq_ts": ev["ts"]}
    lists |= {c: gather(vfeat[f], evi, evfound, MISSING) for c, f in SEQ_SIDE_COLUMNS.items()}
    start, end = _sequence_bounds(ev, requests.user, requests.time, max_len)
    return Sequences(lists=lists, start=start, end=end)


def drop_duplicate_rows(log: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
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
    every id of a later split is above every id of an earlier one."""
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

def ranges(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated aranges [s, s+l) and their list offsets."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    idx = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
    return idx, offsets


