"""Impressions: each request's candidate ads, their true click / save / long_click probabilities and
the labels drawn from them; and the whole world drawn from one seeded generator."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unictr.data.simulate.traffic import Requests, Sequences, draw_requests, draw_sequences
from unictr.data.simulate.world import (
    DAY_MS,
    EPOCH_MS,
    FORMAT_CLICK_BY_DEVICE,
    FORMAT_LONG,
    FORMAT_SAVE,
    HOME,
    HOUR_MS,
    MAX_USERS,
    RELATED,
    ROWS_PER_USER,
    SEARCH,
    SENTINEL,
    SIMILARITY,
    SURFACES,
    Ads,
    Users,
    draw_ads,
    draw_users,
    sample_rows,
    sigmoid,
)


@dataclass
class World:
    """Everything drawn for one simulation; `rows` holds the candidate-side columns and labels."""

    users: Users
    requests: Requests
    sequences: Sequences
    rows: dict[str, np.ndarray]


@dataclass(frozen=True)
class Drift:
    """One surface's click rate drifting day by day: its click logit gains `per_day` each day after the
    first (odds × e^per_day a day; 0.15 is +16% a day), in the true probabilities and so in the labels.

    What a monitor must catch: a model trained on earlier days under-predicts that surface's later days
    (over-predicts with a negative `per_day`) while the other surfaces stay calibrated.
    """

    surface: str
    per_day: float

    def __post_init__(self) -> None:
        names = [s.name for s in SURFACES]
        if self.surface not in names:
            raise ValueError(f"drift surface must be one of {names}, got {self.surface!r}")

    def logit(self, surface: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
        """The click logit shift of rows on `surface` (indices) at `timestamp` (ms)."""
        index = [s.name for s in SURFACES].index(self.surface)
        return np.where(surface == index, self.per_day * ((timestamp - EPOCH_MS) // DAY_MS), 0.0)


@dataclass(frozen=True)
class _Truth:
    """Each row's true engagement probabilities, and the observed columns drawn with them."""

    p_click: np.ndarray
    p_save: np.ndarray
    long_given_click: np.ndarray
    hour: np.ndarray
    query_ad_match: np.ndarray  # 1 none .. 3 strong keyword match on search, 0 elsewhere


def draw_world(rows: int, seed: int, drift: Drift | None = None) -> World:
    """The whole world for `rows` impressions (with `drift`, one surface's click rate drifting); the same
    seed draws the same world, and the drift changes only the click probabilities and labels."""
    rng = np.random.default_rng(seed)
    users = draw_users(rng, min(MAX_USERS, max(rows // ROWS_PER_USER, 10)))
    ads = draw_ads(rng)
    req = draw_requests(rng, users, ads, rows)
    seq = draw_sequences(rng, users, ads, req)
    return World(users=users, requests=req, sequences=seq, rows=_draw_impressions(rng, users, ads, req, drift))


def _draw_impressions(
    rng: np.random.Generator, users: Users, ads: Ads, req: Requests, drift: Drift | None = None
) -> dict[str, np.ndarray]:
    """Candidate-side columns, true probabilities and labels, one entry per row."""
    owner = np.repeat(np.arange(len(req.user)), req.num_candidates)
    n = len(owner)
    position = np.arange(n) - req.row_start[owner]
    ad = _retrieve(rng, users, ads, req, owner)
    shift = 0.0 if drift is None else drift.logit(req.surface[owner], req.timestamp[owner])
    truth = _truth(rng, users, ads, req, owner, position, ad, shift)
    related, context = req.surface[owner] == RELATED, req.context_ad[owner]
    click = rng.random(n) < truth.p_click
    return {
        "ad_id": ads.ids[ad],
        "advertiser_id": ads.advertiser_ids[ad],
        "ad_topic": ads.topic[ad],
        "ad_format": ads.format[ad],
        "position": position,
        "hour": truth.hour,
        "query_topic": req.query_topic[owner],
        "context_topic": np.where(related, ads.topic[context], SENTINEL),
        "ad_age_days": ads.age_feature[ad],
        "query_ad_match": truth.query_ad_match.astype(np.int64),
        "context_item_id": np.where(related, ads.ids[context], SENTINEL),
        "click": click.astype(np.int8),
        "save": (rng.random(n) < truth.p_save).astype(np.int8),
        "long_click": (click & (rng.random(n) < truth.long_given_click)).astype(np.int8),  # implies click
        "p_true_click": truth.p_click,
        "p_true_save": truth.p_save,
        "p_true_long_click": truth.p_click * truth.long_given_click,
    }


def _retrieve(rng: np.random.Generator, users: Users, ads: Ads, req: Requests, owner: np.ndarray) -> np.ndarray:
    """Each row's ad: part targeted at the surface's driver, part interest-based, the rest by popularity."""
    n = len(owner)
    user, surface = req.user[owner], req.surface[owner]
    search, related = surface == SEARCH, surface == RELATED
    # Off their surface, query_topic / context_ad hold SENTINEL; terms built from them are masked out.
    driver = np.select([search, related], [req.query_topic[owner], ads.topic[req.context_ad[owner]]],
                       req.intent[owner])
    u = rng.random(n)
    targeted = np.where(surface == HOME, u < 0.15, u < 0.45)
    interest = (u < 0.6) & ~targeted
    topic = np.where(targeted, driver, sample_rows(users.interest_cdf, user, rng))
    return np.where(targeted | interest, ads.of_topic(topic, rng), ads.popular(n, rng))


def _truth(
    rng: np.random.Generator,
    users: Users,
    ads: Ads,
    req: Requests,
    owner: np.ndarray,
    position: np.ndarray,
    ad: np.ndarray,
    click_shift: np.ndarray | float = 0.0,
) -> _Truth:
    """The click, save and long-click-given-click probabilities of showing `ad` at `position` (the click
    logit moved by `click_shift`: a `Drift`)."""
    user, surface = req.user[owner], req.surface[owner]
    search, related = surface == SEARCH, surface == RELATED
    ad_topic, ad_format = ads.topic[ad], ads.format[ad]

    def per_row(field: str) -> np.ndarray:
        return np.array([getattr(s, field) for s in SURFACES])[surface]

    view_offset = np.array([s.view_offset for s in SURFACES])[surface, req.view[owner]]
    affinity = users.affinity[user, ad_topic]
    intent_match = SIMILARITY[req.intent[owner], ad_topic]
    hour = (req.timestamp[owner] // HOUR_MS) % 24

    # Search relevance: topic similarity plus a per-impression keyword match the model sees only
    # through the bucketed query_ad_match feature (1 none .. 3 strong; 0 off search).
    relevance = SIMILARITY[np.maximum(req.query_topic[owner], 0), ad_topic] + 0.1 * rng.standard_normal(len(owner))
    context = req.context_ad[owner]
    context_sim = SIMILARITY[ads.topic[context], ad_topic] + 0.2 * (ads.advertiser[context] == ads.advertiser[ad])

    click_logit = (
        per_row("base") + view_offset - per_row("position_decay") * np.log1p(position)
        + per_row("w_interest") * affinity + per_row("w_quality") * ads.quality[ad]
        + per_row("w_intent") * intent_match
        + np.where(search, per_row("w_query") * relevance, 0.0)
        + np.where(related, per_row("w_context") * context_sim, 0.0)
        + users.bias[user] + FORMAT_CLICK_BY_DEVICE[users.device[user], ad_format]
        + 0.1 * np.cos(2 * np.pi * (hour - 21) / 24) + ads.age_effect[ad] + click_shift
    )
    save_logit = (
        per_row("save_base") + 0.5 * view_offset + 2.0 * affinity + 0.6 * intent_match
        + 0.3 * ads.quality[ad] + users.save_propensity[user] + FORMAT_SAVE[ad_format]
    )
    long_logit = per_row("long_base") + 1.0 * ads.quality[ad] + 0.8 * affinity + FORMAT_LONG[ad_format]
    return _Truth(
        p_click=sigmoid(click_logit),
        p_save=sigmoid(save_logit),
        long_given_click=sigmoid(long_logit),
        hour=hour,
        query_ad_match=np.where(search, 1 + np.digitize(relevance, [0.25, 0.7]), 0),
    )
