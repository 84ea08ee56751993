"""The simulated world's population: fixed constants, surfaces, topics, users and ads.

Users carry a latent interest over `NUM_TOPICS` topics (a few dominant); ads carry a topic, a format
and a latent quality. What they mean for engagement is in `impressions`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
NUM_ACTIONS = 4  # sequence actions: 0 click, 1 save, 2 long_click, 3 other
DAYS = 14
EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00Z: a fixed start, so files never depend on "now"
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
SENTINEL = -1  # query_topic / context_topic / context_item_id on surfaces without a query / context
VIEW_TYPES = ("grid", "full")


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


def sample_rows(cdf: np.ndarray, which: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw from each of the categorical distributions `cdf[which]` (rows of cumulative probs)."""
    n, k = cdf.shape
    flat = (cdf + np.arange(n)[:, None]).ravel()  # row i lives in [i, i + 1]: one global search
    hit = np.searchsorted(flat, which + rng.random(len(which)), side="right") - which * k
    return np.minimum(hit, k - 1)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function."""
    return 1.0 / (1.0 + np.exp(-x))


def _standardise(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance, as float32."""
    return ((x - x.mean()) / x.std()).astype(np.float32)


@dataclass
class Users:
    """Per user: raw id, observed profile columns and the latent traits that drive engagement."""

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


def draw_users(rng: np.random.Generator, n: int) -> Users:
    """`n` users with two observed long-term interests each."""
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
    return Users(
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
class Ads:
    """Per ad: raw ids, topic, format, latent quality and age; plus a by-topic index for retrieval."""

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
        return sample_rows(self.popularity_cdf, np.zeros(n, dtype=np.int64), rng)


def draw_ads(rng: np.random.Generator) -> Ads:
    """NUM_ADS ads from NUM_ADVERTISERS advertisers, each advertiser mostly on one topic."""
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
    return Ads(
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

