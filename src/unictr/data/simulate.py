"""Built-in simulator: a synthetic multi-surface ads world written as canonical Parquet.

The world has real, learnable structure so that every part of the model has something to find:

* users with a latent interest over `NUM_TOPICS` topics (a few dominant), ads with a topic, a
  format and a latent quality; the same user-interest x ad-topic affinity and ad-quality terms
  drive engagement on every surface (with surface-specific weights), so the small `related`
  surface can borrow from the big ones;
* surface-specific drivers: home_feed follows long-term interest, search follows the query
  topic, related follows the item being viewed;
* a per-request short-term intent topic that shows up only in the newest events of the action
  sequence and boosts candidates of that topic (signal no static feature carries);
* a position effect, view types with different engagement levels per surface (so per-view-type
  calibration matters), and correlated click / save / long_click tasks with their true
  probabilities.

Everything is vectorised numpy drawn from one seeded generator, and the Parquet writer options are
fixed, so the same seed gives byte-identical files. See docs/data.md for the layout.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from unictr.config import Config, DataSpec, SequenceSpec

GENERATOR = "unictr.data.simulate"
VERSION = 1

NUM_TOPICS = 16
TOPIC_GROUP = 4  # topics t and u are related when t // 4 == u // 4
GROUP_SIMILARITY = 0.4  # similarity of two different topics of one group (same topic: 1)
NUM_ADS = 1000
NUM_ADVERTISERS = 100
NUM_FORMATS = 4
NUM_COUNTRIES = 20
NUM_DEVICES = 4
MAX_USERS = 30_000
ROWS_PER_USER = 15
MAX_SEQ_LEN = 48
PART_ROWS = 500_000
DAYS = 14
EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00Z: a fixed start, so files never depend on "now"
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
SENTINEL = -1  # query_topic / context_topic / context_item_id on surfaces without a query / context
VIEW_TYPES = ("grid", "full")
TASKS = ("click", "save", "long_click")


@dataclass(frozen=True)
class _Surface:
    """Traffic share and engagement weights of one surface (logit scale)."""

    name: str
    share: float  # fraction of requests
    full_share: float  # fraction of its requests shown in the `full` view
    base: float  # click logit intercept
    view_offset: tuple[float, float]  # click logit offset of (grid, full)
    position_decay: float  # click logit lost per unit of log(1 + position)
    w_interest: float  # shared user-interest x ad-topic affinity
    w_quality: float  # shared latent ad quality
    w_intent: float  # candidate matches the request's short-term intent topic
    w_query: float  # search: relevance of the ad to the query
    w_context: float  # related: similarity of the ad to the item being viewed
    save_base: float  # save logit intercept
    long_base: float  # logit intercept of long_click given click


SURFACES = (
    _Surface(
        name="home_feed", share=0.6, full_share=0.35, base=-4.0, view_offset=(-0.3, 0.6),
        position_decay=0.25, w_interest=3.0, w_quality=0.5, w_intent=1.2, w_query=0.0, w_context=0.0,
        save_base=-4.6, long_base=-1.0,
    ),
    _Surface(
        name="search", share=0.3, full_share=0.2, base=-3.9, view_offset=(0.1, 0.5),
        position_decay=0.45, w_interest=1.0, w_quality=0.5, w_intent=0.6, w_query=1.4, w_context=0.0,
        save_base=-5.2, long_base=-0.6,
    ),
    _Surface(
        name="related", share=0.1, full_share=0.5, base=-3.8, view_offset=(-0.5, 0.3),
        position_decay=0.3, w_interest=1.5, w_quality=0.6, w_intent=0.6, w_query=0.0, w_context=1.3,
        save_base=-4.3, long_base=-0.9,
    ),
)
HOME, SEARCH, RELATED = range(3)

# Ad formats (image, carousel, video, collection): effect on click per device, on save, on long_click.
FORMAT_CLICK_BY_DEVICE = np.array(
    [[0.0, 0.1, 0.3, 0.0], [0.0, 0.0, 0.2, 0.1], [0.1, 0.2, -0.3, 0.0], [0.0, 0.1, 0.1, 0.2]]
)
FORMAT_SAVE = np.array([0.0, 0.4, -0.3, 0.3])
FORMAT_LONG = np.array([-0.3, 0.2, 0.6, 0.3])

# Columns the simulator writes for the config's features: name -> (kind, side).
FEATURES = {
    "user_id": ("categorical", "user"),
    "user_segment": ("categorical", "user"),
    "user_interest2": ("categorical", "user"),
    "user_country": ("categorical", "user"),
    "user_device": ("categorical", "user"),
    "user_activity": ("dense", "user"),
    "ad_id": ("categorical", "candidate"),
    "advertiser_id": ("categorical", "candidate"),
    "ad_topic": ("categorical", "candidate"),
    "ad_format": ("categorical", "candidate"),
    "position": ("categorical", "candidate"),
    "hour": ("categorical", "candidate"),
    "query_topic": ("categorical", "candidate"),
    "context_topic": ("categorical", "candidate"),
    "ad_age_days": ("dense", "candidate"),
    "query_ad_match": ("categorical", "candidate"),
    "context_item_id": ("categorical", "candidate"),
}
SEQUENCE_ITEM_FEATURE = "ad_id"
SEQUENCE_TOPIC_COLUMN = "seq_topic"  # each event item's ad_topic: a sequence side feature
NUM_ACTIONS = 4  # 0 click, 1 save, 2 long_click, 3 other


def _topic_similarity() -> np.ndarray:
    """[K, K]: 1 for the same topic, GROUP_SIMILARITY within a topic group, 0 otherwise."""
    group = np.arange(NUM_TOPICS) // TOPIC_GROUP
    sim = np.where(group[:, None] == group[None, :], GROUP_SIMILARITY, 0.0)
    np.fill_diagonal(sim, 1.0)
    return sim


SIMILARITY = _topic_similarity()


def _unique_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """n distinct random positive int64 ids spread over a large range (so hashing them matters)."""
    ids = rng.integers(1, 2**62, size=n, dtype=np.int64)
    while len(np.unique(ids)) < n:
        ids = rng.integers(1, 2**62, size=n, dtype=np.int64)
    return ids


def _sample_rows(cdf: np.ndarray, which: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw from each of the categorical distributions `cdf[which]` (rows of cumulative probs)."""
    n, k = cdf.shape
    flat = (cdf + np.arange(n)[:, None]).ravel()  # row i lives in [i, i + 1]: one global search
    hit = np.searchsorted(flat, which + rng.random(len(which)), side="right") - which * k
    return np.minimum(hit, k - 1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _standardise(x: np.ndarray) -> np.ndarray:
    return ((x - x.mean()) / x.std()).astype(np.float32)


@dataclass
class _Users:
    ids: np.ndarray
    interest_cdf: np.ndarray  # [U, K] cumulative long-term interest
    affinity: np.ndarray  # [U, K] interest smoothed over related topics: the shared affinity term
    segment: np.ndarray
    second: np.ndarray
    country: np.ndarray
    device: np.ndarray
    activity: np.ndarray  # latent log activity ~ N(0, 1)
    activity_feature: np.ndarray  # observed, standardised (float32)
    bias: np.ndarray  # personal click propensity (learnable from user_id only)
    save_propensity: np.ndarray  # shows in both the save task and the sequence's save actions


def _users(rng: np.random.Generator, n: int) -> _Users:
    # Two long-term interests, both observed (user_segment, user_interest2), as a profile would carry
    # them; the short-term intent is what only the action sequence reveals. Hidden per-user noise is kept
    # small so the oracle is learnable from the features.
    segment = rng.integers(0, NUM_TOPICS, n)
    second = (segment + rng.integers(1, NUM_TOPICS, n)) % NUM_TOPICS
    interest = np.zeros((n, NUM_TOPICS))
    interest[np.arange(n), segment] = 0.65
    interest[np.arange(n), second] = 0.35
    activity = rng.standard_normal(n)
    country_p = 1.0 / np.arange(1, NUM_COUNTRIES + 1)
    return _Users(
        ids=_unique_ids(rng, n),
        interest_cdf=np.cumsum(interest, axis=1),
        affinity=interest @ SIMILARITY,
        segment=segment.astype(np.int64),
        second=second.astype(np.int64),
        country=rng.choice(NUM_COUNTRIES, size=n, p=country_p / country_p.sum()).astype(np.int64),
        device=rng.choice(NUM_DEVICES, size=n, p=[0.45, 0.35, 0.15, 0.05]).astype(np.int64),
        activity=activity,
        activity_feature=_standardise(activity + 0.3 * rng.standard_normal(n)),
        bias=0.25 * activity,
        save_propensity=0.5 * rng.standard_normal(n),
    )


@dataclass
class _Ads:
    ids: np.ndarray
    advertiser: np.ndarray  # advertiser index
    advertiser_ids: np.ndarray  # raw advertiser id per ad
    topic: np.ndarray
    format: np.ndarray
    quality: np.ndarray
    age_effect: np.ndarray  # click logit effect of the ad's age (fresh ads do a bit better)
    age_feature: np.ndarray  # standardised log age in days (float32)
    popularity_cdf: np.ndarray  # [1, A] for untargeted picks
    by_topic: np.ndarray  # ad indices sorted by topic
    topic_start: np.ndarray  # [K] first position of each topic in by_topic
    topic_count: np.ndarray  # [K] ads per topic (all > 0)

    def of_topic(self, topic: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A uniformly random ad of each given topic."""
        offset = (rng.random(len(topic)) * self.topic_count[topic]).astype(np.int64)
        return self.by_topic[self.topic_start[topic] + offset]

    def popular(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n ads drawn by popularity, regardless of topic (the untargeted part of retrieval)."""
        return _sample_rows(self.popularity_cdf, np.zeros(n, dtype=np.int64), rng)


def _ads(rng: np.random.Generator) -> _Ads:
    advertiser_topic = rng.permutation(np.arange(NUM_ADVERTISERS) % NUM_TOPICS)
    advertiser_quality = 0.5 * rng.standard_normal(NUM_ADVERTISERS)
    advertiser_size = rng.pareto(3.0, NUM_ADVERTISERS) + 0.5
    advertiser = rng.choice(NUM_ADVERTISERS, size=NUM_ADS, p=advertiser_size / advertiser_size.sum())
    topic = np.where(rng.random(NUM_ADS) < 0.8, advertiser_topic[advertiser], rng.integers(0, NUM_TOPICS, NUM_ADS))
    topic[:NUM_TOPICS] = np.arange(NUM_TOPICS)  # every topic has ads
    log_age = np.log1p(rng.exponential(40.0, NUM_ADS))
    age_feature = _standardise(log_age)
    popularity = np.exp(rng.standard_normal(NUM_ADS))
    by_topic = np.argsort(topic, kind="stable")
    return _Ads(
        ids=_unique_ids(rng, NUM_ADS),
        advertiser=advertiser,
        advertiser_ids=_unique_ids(rng, NUM_ADVERTISERS)[advertiser],
        topic=topic.astype(np.int64),
        format=rng.choice(NUM_FORMATS, size=NUM_ADS, p=[0.45, 0.2, 0.25, 0.1]).astype(np.int64),
        quality=0.1 * rng.standard_normal(NUM_ADS) + advertiser_quality[advertiser],
        age_effect=-0.15 * age_feature,
        age_feature=age_feature,
        popularity_cdf=np.cumsum(popularity / popularity.sum())[None, :],
        by_topic=by_topic,
        topic_start=np.searchsorted(topic[by_topic], np.arange(NUM_TOPICS)),
        topic_count=np.bincount(topic, minlength=NUM_TOPICS),
    )


@dataclass
class _Requests:
    user: np.ndarray
    surface: np.ndarray
    view: np.ndarray  # index into VIEW_TYPES
    timestamp: np.ndarray
    intent: np.ndarray  # short-term intent topic
    query_topic: np.ndarray  # SENTINEL off search
    context_ad: np.ndarray  # ad index being viewed; SENTINEL off related
    num_candidates: np.ndarray
    row_start: np.ndarray  # [R + 1] first row of each request, then the total


def _requests(rng: np.random.Generator, users: _Users, ads: _Ads, rows: int) -> _Requests:
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

    interest_topic = _sample_rows(users.interest_cdf, user, rng)
    random_topic = rng.integers(0, NUM_TOPICS, n)
    intent = np.where(rng.random(n) < 0.5, interest_topic, random_topic)

    u = rng.random(n)
    query = np.select(
        [u < 0.5, u < 0.85], [intent, _sample_rows(users.interest_cdf, user, rng)], rng.integers(0, NUM_TOPICS, n)
    )
    context_topic = np.where(rng.random(n) < 0.5, intent, _sample_rows(users.interest_cdf, user, rng))
    return _Requests(
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
class _Sequences:
    """Every request's action sequence, concatenated oldest-first; request r owns [start[r], start[r + 1])."""

    start: np.ndarray
    item: np.ndarray  # raw ad id
    topic: np.ndarray  # the item's topic (side feature of each event)
    action: np.ndarray
    ts: np.ndarray


def _sequences(rng: np.random.Generator, users: _Users, ads: _Ads, req: _Requests) -> _Sequences:
    """Past engagements: topics from long-term interest, except a recent burst on the intent topic."""
    user = req.user
    length = np.minimum(rng.poisson(12.0 * np.exp(0.5 * users.activity[user])), MAX_SEQ_LEN)
    recent = np.minimum(length, 2 + rng.binomial(3, 0.5, len(user)))
    start = np.concatenate([[0], np.cumsum(length)])
    owner = np.repeat(np.arange(len(user)), length)
    newest_rank = np.arange(start[-1]) - start[owner]  # 0 = newest event of its request
    is_recent = newest_rank < recent[owner]
    n = len(owner)

    interest_topic = _sample_rows(users.interest_cdf, user[owner], rng)
    old_topic = np.where(rng.random(n) < 0.85, interest_topic, rng.integers(0, NUM_TOPICS, n))
    recent_topic = np.where(rng.random(n) < 0.85, req.intent[owner], interest_topic)
    item = ads.of_topic(np.where(is_recent, recent_topic, old_topic), rng)

    p_save = 0.3 * _sigmoid(2.0 * users.save_propensity[user[owner]])
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
    return _Sequences(start=start, item=out_item, topic=out_topic, action=out_action, ts=out_ts)


def _impressions(
    rng: np.random.Generator, users: _Users, ads: _Ads, req: _Requests
) -> dict[str, np.ndarray]:
    """Candidate-side columns, true probabilities and labels, one entry per row."""
    owner = np.repeat(np.arange(len(req.user)), req.num_candidates)
    n = len(owner)
    position = np.arange(n) - req.row_start[owner]
    user, surface = req.user[owner], req.surface[owner]
    search, related = surface == SEARCH, surface == RELATED

    # Off their surface, query_topic / context_ad hold SENTINEL; terms built from them are masked out.
    # Retrieval: part targeted at the surface's driver, part interest-based, the rest by popularity.
    driver = np.select([search, related], [req.query_topic[owner], ads.topic[req.context_ad[owner]]],
                       req.intent[owner])
    u = rng.random(n)
    targeted = np.where(surface == HOME, u < 0.15, u < 0.45)
    interest = (u < 0.6) & ~targeted
    topic = np.where(targeted, driver, _sample_rows(users.interest_cdf, user, rng))
    ad = np.where(targeted | interest, ads.of_topic(topic, rng), ads.popular(n, rng))
    ad_topic, ad_format = ads.topic[ad], ads.format[ad]

    def per_row(field: str) -> np.ndarray:
        return np.array([getattr(s, field) for s in SURFACES])[surface]

    view_offset = np.array([s.view_offset for s in SURFACES])[surface, req.view[owner]]
    affinity = users.affinity[user, ad_topic]
    intent_match = SIMILARITY[req.intent[owner], ad_topic]
    hour = (req.timestamp[owner] // HOUR_MS) % 24

    # Search relevance: topic similarity plus a per-impression keyword match the model sees only
    # through the bucketed query_ad_match feature (1 none .. 3 strong; 0 off search).
    relevance = SIMILARITY[np.maximum(req.query_topic[owner], 0), ad_topic] + 0.1 * rng.standard_normal(n)
    query_ad_match = np.where(search, 1 + np.digitize(relevance, [0.25, 0.7]), 0)
    context = req.context_ad[owner]
    context_sim = SIMILARITY[ads.topic[context], ad_topic] + 0.2 * (ads.advertiser[context] == ads.advertiser[ad])

    click_logit = (
        per_row("base") + view_offset - per_row("position_decay") * np.log1p(position)
        + per_row("w_interest") * affinity + per_row("w_quality") * ads.quality[ad]
        + per_row("w_intent") * intent_match
        + np.where(search, per_row("w_query") * relevance, 0.0)
        + np.where(related, per_row("w_context") * context_sim, 0.0)
        + users.bias[user] + FORMAT_CLICK_BY_DEVICE[users.device[user], ad_format]
        + 0.1 * np.cos(2 * np.pi * (hour - 21) / 24) + ads.age_effect[ad]
    )
    save_logit = (
        per_row("save_base") + 0.5 * view_offset + 2.0 * affinity + 0.6 * intent_match
        + 0.3 * ads.quality[ad] + users.save_propensity[user] + FORMAT_SAVE[ad_format]
    )
    long_given_click = _sigmoid(per_row("long_base") + 1.0 * ads.quality[ad] + 0.8 * affinity + FORMAT_LONG[ad_format])
    p_click, p_save = _sigmoid(click_logit), _sigmoid(save_logit)
    click = rng.random(n) < p_click
    return {
        "ad_id": ads.ids[ad],
        "advertiser_id": ads.advertiser_ids[ad],
        "ad_topic": ad_topic,
        "ad_format": ad_format,
        "position": position,
        "hour": hour,
        "query_topic": req.query_topic[owner],
        "context_topic": np.where(related, ads.topic[context], SENTINEL),
        "ad_age_days": ads.age_feature[ad],
        "query_ad_match": query_ad_match.astype(np.int64),
        "context_item_id": np.where(related, ads.ids[context], SENTINEL),
        "click": click.astype(np.int8),
        "save": (rng.random(n) < p_save).astype(np.int8),
        "long_click": (click & (rng.random(n) < long_given_click)).astype(np.int8),  # long_click implies click
        "p_true_click": p_click,
        "p_true_save": p_save,
        "p_true_long_click": p_click * long_given_click,
    }


@dataclass
class _World:
    users: _Users
    requests: _Requests
    sequences: _Sequences
    rows: dict[str, np.ndarray]


def _world(rows: int, seed: int) -> _World:
    rng = np.random.default_rng(seed)
    users = _users(rng, min(MAX_USERS, max(rows // ROWS_PER_USER, 10)))
    ads = _ads(rng)
    req = _requests(rng, users, ads, rows)
    seq = _sequences(rng, users, ads, req)
    return _World(users=users, requests=req, sequences=seq, rows=_impressions(rng, users, ads, req))


def _columns(config: Config | None) -> tuple[DataSpec, SequenceSpec]:
    """Key and sequence column names, after checking the config describes data this world can write."""
    if config is None:
        return DataSpec(), SequenceSpec(item_feature=SEQUENCE_ITEM_FEATURE)
    problems = []
    for f in config.features:
        if f.name not in FEATURES:
            problems.append(f"feature {f.name!r} is not simulated (known: {sorted(FEATURES)})")
        elif FEATURES[f.name] != (f.kind, f.side):
            problems.append(f"feature {f.name!r} is simulated as {FEATURES[f.name]}, config says {(f.kind, f.side)}")
    views = {s.name: set(s.view_types) for s in config.surfaces}
    for s in SURFACES:
        if not set(VIEW_TYPES) <= views.get(s.name, set()):
            problems.append(f"surface {s.name!r} with view types {list(VIEW_TYPES)} must be in the config")
    problems += [f"task label {t.label!r} is not simulated (known: {list(TASKS)})"
                 for t in config.tasks if t.label not in TASKS]
    seq = config.sequence
    if seq is not None and (seq.item_feature != SEQUENCE_ITEM_FEATURE or seq.num_actions < NUM_ACTIONS):
        problems.append(f"sequence must use item_feature {SEQUENCE_ITEM_FEATURE!r} and num_actions >= {NUM_ACTIONS}")
    if problems:
        raise ValueError("config does not match the simulator:\n  " + "\n  ".join(problems))
    return config.data, seq or SequenceSpec(item_feature=SEQUENCE_ITEM_FEATURE)


def _table(world: _World, first: int, last: int, keys: DataSpec, seq_spec: SequenceSpec) -> pa.Table:
    """Rows [first, last) (request-aligned) as an Arrow table in the canonical layout."""
    req, users, seq = world.requests, world.users, world.sequences
    owner = np.repeat(np.arange(len(req.user)), req.num_candidates)[first:last]
    user = req.user[owner]
    names = [s.name for s in SURFACES]

    def strings(index: np.ndarray, values: list[str]) -> pa.Array:
        return pa.DictionaryArray.from_arrays(pa.array(index, pa.int32()), pa.array(values)).cast(pa.string())

    length = (seq.start[1:] - seq.start[:-1])[owner]
    offsets = np.concatenate([[0], np.cumsum(length)]).astype(np.int32)
    gather = np.repeat(seq.start[owner] - offsets[:-1], length) + np.arange(offsets[-1])

    def lists(values: np.ndarray) -> pa.Array:
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[gather], pa.int64()))

    user_side = {
        "user_id": users.ids[user],
        "user_segment": users.segment[user],
        "user_interest2": users.second[user],
        "user_country": users.country[user],
        "user_device": users.device[user],
        "user_activity": users.activity_feature[user],
    }
    row_side = {k: v[first:last] for k, v in world.rows.items()}
    columns = {
        keys.request_id: pa.array(owner + 1, pa.int64()),  # ids increase with time
        keys.user_id: pa.array(user_side.pop("user_id"), pa.int64()),
        keys.timestamp: pa.array(req.timestamp[owner], pa.int64()),
        keys.surface: strings(req.surface[owner], names),
        keys.view_type: strings(req.view[owner], list(VIEW_TYPES)),
        **{k: pa.array(v) for k, v in user_side.items()},
        **{k: pa.array(v) for k, v in row_side.items()},
        seq_spec.item_column: lists(seq.item),
        seq_spec.action_column: lists(seq.action),
        seq_spec.time_column: lists(seq.ts),
        SEQUENCE_TOPIC_COLUMN: lists(seq.topic),
    }
    return pa.table(columns)


def _part_bounds(row_start: np.ndarray, first: int, last: int) -> list[tuple[int, int]]:
    """Split rows [first, last) into request-aligned parts of at most PART_ROWS rows."""
    bounds = [first]
    while bounds[-1] < last:
        target = bounds[-1] + PART_ROWS
        bounds.append(last if target >= last else int(row_start[np.searchsorted(row_start, target, "right") - 1]))
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _auc(label: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC by the rank-sum formula (scores are continuous, so ties are negligible)."""
    positives = int(label.sum())
    negatives = len(label) - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = np.empty(len(score))
    ranks[np.argsort(score, kind="stable")] = np.arange(1, len(score) + 1)
    return float((ranks[label == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _surface_stats(world: _World) -> dict[str, dict]:
    """Per-surface (and per-view-type) volume, label rates and the oracle click AUC."""
    req = world.requests
    owner = np.repeat(np.arange(len(req.user)), req.num_candidates)
    surface, view = req.surface[owner], req.view[owner]

    def rates(mask: np.ndarray) -> dict:
        return {"rows": int(mask.sum()), **{f"{t}_rate": round(float(world.rows[t][mask].mean()), 6) for t in TASKS}}

    stats = {}
    for i, s in enumerate(SURFACES):
        on = surface == i
        auc = _auc(world.rows["click"][on], world.rows["p_true_click"][on]) if on.any() else None
        stats[s.name] = {
            **rates(on),
            "requests": int((req.surface == i).sum()),
            "oracle_click_auc": None if auc is None else round(auc, 6),
            "view_types": {v: rates(on & (view == j)) for j, v in enumerate(VIEW_TYPES) if (on & (view == j)).any()},
        }
    return stats


def _is_simulation(out: Path) -> bool:
    try:
        return json.loads((out / "meta.json").read_text()).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def simulate(
    rows: int, seed: int, out: Path, eval_fraction: float = 0.2, config: Config | None = None
) -> dict:
    """Simulate `rows` impressions and write them under `out` (train/, eval/, meta.json).

    The eval split is the last `eval_fraction` of requests in time order. `config`, when given, is
    checked against the simulated columns and names the key and sequence columns. An existing `out`
    is replaced only if it is empty or holds a previous simulation. Returns the meta dict.
    """
    if rows < 100:
        raise ValueError(f"rows must be at least 100 to split train/eval, got {rows}")
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    out = Path(out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or _is_simulation(out))):
        raise FileExistsError(f"{out}: exists and is not a previous simulation; refusing to replace it")
    keys, seq_spec = _columns(config)

    world = _world(rows, seed)
    req = world.requests
    n_requests = len(req.user)
    n_eval = min(max(round(n_requests * eval_fraction), 1), n_requests - 1)
    split_row = int(req.row_start[n_requests - n_eval])
    splits = {"train": (0, split_row, n_requests - n_eval), "eval": (split_row, rows, n_eval)}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; `out` is ordinary data
    try:
        meta_splits = {}
        for split, (first, last, n_req) in splits.items():
            (tmp / split).mkdir()
            files = []
            for i, (a, b) in enumerate(_part_bounds(req.row_start, first, last)):
                name = f"{split}/part-{i:05d}.parquet"
                pq.write_table(
                    _table(world, a, b, keys, seq_spec), tmp / name,
                    compression="zstd", compression_level=3, row_group_size=131_072, use_dictionary=True,
                )
                files.append(name)
            meta_splits[split] = {"rows": last - first, "requests": n_req, "files": files}
        meta = {
            "generator": GENERATOR,
            "version": VERSION,
            "seed": seed,
            "rows": rows,
            "requests": n_requests,
            "eval_fraction": eval_fraction,
            "users": len(world.users.ids),
            "ads": NUM_ADS,
            "topics": NUM_TOPICS,
            "splits": meta_splits,
            "surfaces": _surface_stats(world),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            old = out.with_name(tmp.name + ".old")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta
