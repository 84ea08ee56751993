"""Requests (who, where, when, with what intent) and each request's past-action sequence."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unictr.data.simulate.world import (
    DAY_MS,
    DAYS,
    EPOCH_MS,
    HOUR_MS,
    MAX_SEQ_LEN,
    NUM_TOPICS,
    RELATED,
    SEARCH,
    SENTINEL,
    SURFACES,
    Ads,
    Users,
    sample_rows,
    sigmoid,
)


@dataclass
class Requests:
    """Per request (in time order): who, where, in which view, when, with what intent and context."""

    user: np.ndarray
    surface: np.ndarray
    view: np.ndarray  # index into VIEW_TYPES
    timestamp: np.ndarray
    intent: np.ndarray  # short-term intent topic
    query_topic: np.ndarray  # SENTINEL off search
    context_ad: np.ndarray  # ad index being viewed; SENTINEL off related
    num_candidates: np.ndarray
    row_start: np.ndarray  # [R + 1] first row of each request, then the total


def draw_requests(rng: np.random.Generator, users: Users, ads: Ads, rows: int) -> Requests:
    """Enough requests of 3..12 candidates each for exactly `rows` impressions, in time order."""
    drawn = rng.integers(3, 13, size=rows // 3 + 1)  # 3..12 candidates; enough requests for `rows`
    ends = np.cumsum(drawn)
    n = int(np.searchsorted(ends, rows)) + 1
    num_candidates = drawn[:n].copy()
    num_candidates[-1] -= ends[n - 1] - rows  # the last request takes what is left

    hour_p = 1.0 + 0.6 * np.cos(2 * np.pi * (np.arange(24) - 20) / 24)  # evening peak
    hour = rng.choice(24, size=n, p=hour_p / hour_p.sum())
    day = rng.integers(0, DAYS, n)
    timestamp = np.sort(EPOCH_MS + day * DAY_MS + hour * HOUR_MS + rng.integers(0, HOUR_MS, n))

    weight = np.exp(0.8 * users.activity)  # active users make more requests
    user = rng.choice(len(users.ids), size=n, p=weight / weight.sum())
    surface = rng.choice(len(SURFACES), size=n, p=[s.share for s in SURFACES])
    full_share = np.array([s.full_share for s in SURFACES])[surface]
    view = (rng.random(n) < full_share).astype(np.int64)

    interest_topic = sample_rows(users.interest_cdf, user, rng)
    random_topic = rng.integers(0, NUM_TOPICS, n)
    intent = np.where(rng.random(n) < 0.5, interest_topic, random_topic)

    u = rng.random(n)
    query = np.select(
        [u < 0.5, u < 0.85], [intent, sample_rows(users.interest_cdf, user, rng)], rng.integers(0, NUM_TOPICS, n)
    )
    context_topic = np.where(rng.random(n) < 0.5, intent, sample_rows(users.interest_cdf, user, rng))
    return Requests(
        user=user,
        surface=surface,
        view=view,
        timestamp=timestamp,
        intent=intent,
        query_topic=np.where(surface == SEARCH, query, SENTINEL),
        context_ad=np.where(surface == RELATED, ads.of_topic(context_topic, rng), SENTINEL),
        num_candidates=num_candidates,
        row_start=np.concatenate([[0], np.cumsum(num_candidates)]),
    )


@dataclass
class Sequences:
    """Every request's action sequence, concatenated oldest-first; request r owns [start[r], start[r + 1])."""

    start: np.ndarray
    item: np.ndarray  # raw ad id
    topic: np.ndarray  # the item's topic (side feature of each event)
    action: np.ndarray
    ts: np.ndarray


def draw_sequences(rng: np.random.Generator, users: Users, ads: Ads, req: Requests) -> Sequences:
    """Past engagements: topics from long-term interest, except a recent burst on the intent topic."""
    user = req.user
    length = np.minimum(rng.poisson(12.0 * np.exp(0.5 * users.activity[user])), MAX_SEQ_LEN)
    recent = np.minimum(length, 2 + rng.binomial(3, 0.5, len(user)))
    start = np.concatenate([[0], np.cumsum(length)])
    owner = np.repeat(np.arange(len(user)), length)
    newest_rank = np.arange(start[-1]) - start[owner]  # 0 = newest event of its request
    is_recent = newest_rank < recent[owner]
    n = len(owner)

    interest_topic = sample_rows(users.interest_cdf, user[owner], rng)
    old_topic = np.where(rng.random(n) < 0.85, interest_topic, rng.integers(0, NUM_TOPICS, n))
    recent_topic = np.where(rng.random(n) < 0.85, req.intent[owner], interest_topic)
    item = ads.of_topic(np.where(is_recent, recent_topic, old_topic), rng)

    p_save = 0.3 * sigmoid(2.0 * users.save_propensity[user[owner]])
    u = rng.random(n)
    action = np.select([u < p_save, u < p_save + 0.2, u < p_save + 0.27], [1, 2, 3], 0).astype(np.int64)

    # Gaps back in time from the request: minutes within the recent burst, hours before it.
    gap = np.where(is_recent, rng.exponential(90_000.0, n), rng.exponential(5.0 * HOUR_MS, n))
    gap = 1000 + gap.astype(np.int64)
    cum = np.cumsum(gap)
    age = cum - (cum[start[:-1]] - gap[start[:-1]])[owner]  # per-request cumulative sum

    oldest_first = start[owner] + length[owner] - 1 - newest_rank
    out_item, out_topic, out_action, out_ts = (np.empty(n, dtype=np.int64) for _ in range(4))
    out_item[oldest_first] = ads.ids[item]
    out_topic[oldest_first] = ads.topic[item]
    out_action[oldest_first] = action
    out_ts[oldest_first] = req.timestamp[owner] - age
    return Sequences(start=start, item=out_item, topic=out_topic, action=out_action, ts=out_ts)

