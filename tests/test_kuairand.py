"""KuaiRand-Pure adapter on the real slice (tests.conftest.kuairand_dir; skipped, saying why, when absent)."""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.conftest import kuairand_dir, kuairand_missing
from unictr.config import load_config
from unictr.data.errors import DataError
from unictr.data.kuairand import convert_kuairand
from unictr.data.kuairand.schema import NUM_ACTIONS

ROOT = Path(__file__).parents[1]
DATA = kuairand_dir()
LOG = DATA / "log_standard_4_25_to_4_30_pure.csv"
USERS = DATA / "user_features_pure.csv"
VIDEOS = DATA / "video_features_basic_pure.csv"
HISTORY = DATA / "history_before_4_25.parquet"
EVAL_FROM = "2022-04-29"
MAX_LEN = 64
SURFACE_OF_TAB = {1: "tab1", 0: "tab0", 4: "tab4", 6: "tab6", 2: "tab2"}

MISSING = kuairand_missing((LOG, USERS, VIDEOS, HISTORY))
needs_data = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

USER_FEATURES = {
    "user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
    "follow_user_num_range", "fans_user_num_range", "friend_user_num_range", "register_days_range",
    *(f"onehot_feat{i}" for i in range(18)),
}  # fmt: skip
EXPECTED_COLUMNS = {
    "request_id", "user_id", "timestamp", "surface", "view_type",
    *USER_FEATURES,
    "user_history_watches", "user_history_long_views", "user_history_likes", "user_prior_impressions",
    "user_prior_clicks", "user_prior_long_views", "user_prior_likes",
    "video_id", "author_id", "video_type", "upload_type", "music_type", "tag", "duration_bucket", "tab", "hour",
    "day_of_week", "video_duration", "video_age_days",
    "video_prior_impressions", "video_prior_clicks", "video_prior_long_views", "video_prior_likes",
    "is_click", "long_view", "is_like",
    "seq_item", "seq_action", "seq_ts", "seq_author", "seq_tag", "seq_duration",
}  # fmt: skip
DENSE = {
    "video_duration", "video_age_days", "user_history_watches", "user_history_long_views", "user_history_likes",
    "user_prior_impressions", "user_prior_clicks",
    "user_prior_long_views", "user_prior_likes", "video_prior_impressions", "video_prior_clicks",
    "video_prior_long_views", "video_prior_likes",
}  # fmt: skip
POST_IMPRESSION = {
    "play_time_ms", "duration_ms", "profile_stay_time", "comment_stay_time", "is_follow", "is_comment",
    "is_forward", "is_hate", "is_profile_enter",
}  # fmt: skip


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    if MISSING:
        pytest.skip(MISSING or "")
    out = tmp_path_factory.mktemp("kuairand")
    meta = convert_kuairand([LOG], USERS, VIDEOS, HISTORY, EVAL_FROM, out, max_seq_len=MAX_LEN)
    train = pq.read_table(out / "train" / "part-00000.parquet")
    ev = pq.read_table(out / "eval" / "part-00000.parquet")
    return {"out": out, "meta": meta, "train": train, "eval": ev}


@pytest.fixture(scope="module")
def raw_all():
    if not LOG.is_file():
        pytest.skip(MISSING or "")
    with LOG.open(newline="") as f:
        return [{k: int(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def raw_log(raw_all):
    """The raw rows, first copy of each (user_id, video_id, time_ms) (the converter's dedupe)."""
    seen, rows = set(), []
    for r in raw_all:
        key = (r["user_id"], r["video_id"], r["time_ms"])
        if key not in seen:
            seen.add(key)
            rows.append(r)
    return rows


def _rows(table) -> list[dict]:
    return table.to_pylist()


# ------------------------------------------------------------------------------------------ layout


def test_columns_are_exactly_the_canonical_set(converted):
    for split in ("train", "eval"):
        names = set(converted[split].column_names)
        assert names == EXPECTED_COLUMNS
        assert not names & POST_IMPRESSION


def test_config_covers_the_output(converted):
    cfg = load_config(ROOT / "configs" / "kuairand.yaml")
    names = set(converted["train"].column_names)
    assert {f.name for f in cfg.features} <= names
    assert {t.label for t in cfg.tasks} <= names
    assert cfg.task_names == ["is_click", "long_view", "is_like"]
    assert cfg.sequence is not None and cfg.sequence.item_feature == "video_id"
    assert cfg.sequence.num_actions >= NUM_ACTIONS and cfg.sequence.max_len == MAX_LEN
    views = {s.name: set(s.view_types) for s in cfg.surfaces}
    for split in ("train", "eval"):
        t = converted[split]
        for s, v in set(zip(t["surface"].to_pylist(), t["view_type"].to_pylist(), strict=True)):
            assert s in views and v in views[s]


def test_dtypes(converted):
    t = converted["train"]
    for name in t.column_names:
        typ = str(t.schema.field(name).type)
        if name in ("surface", "view_type"):
            assert typ == "string"
        elif name in DENSE:
            assert typ == "float"
            assert np.isfinite(t[name].to_numpy()).all()
        elif name.startswith("seq_"):
            assert typ == "list<element: int64>"
        else:
            assert typ == "int64", name


def test_requests_are_contiguous_and_increase_with_time(converted):
    last_id = -1
    for split in ("train", "eval"):
        t = converted[split]
        rid = t["request_id"].to_numpy()
        assert (np.diff(rid) >= 0).all()
        assert rid[0] > last_id
        last_id = rid[-1]
        starts = np.flatnonzero(np.r_[True, rid[1:] != rid[:-1]])
        first_ts = t["timestamp"].to_numpy()[starts]
        assert (np.diff(first_ts) >= 0).all()  # request ids grow with time
        for col in ("user_id", "surface", "tab", "user_active_degree"):
            v = np.asarray(t[col].to_pylist())
            assert (v == v[starts][np.cumsum(np.r_[False, rid[1:] != rid[:-1]])]).all(), col
        # the rows of one request share the sequence
        seq = t["seq_item"].to_pylist()
        for i in range(1, len(rid)):
            if rid[i] == rid[i - 1]:
                assert seq[i] == seq[i - 1]


# ---------------------------------------------------------------------------------------- sequence


def test_no_sequence_event_at_or_after_the_impression(converted):
    for split in ("train", "eval"):
        t = converted[split]
        lengths = [pc.list_value_length(t[c]).to_numpy() for c in ("seq_item", "seq_action", "seq_ts")]
        assert (lengths[0] == lengths[1]).all() and (lengths[0] == lengths[2]).all()
        assert lengths[0].max() <= MAX_LEN
        has = lengths[0] > 0
        newest = np.array([s[-1] for s in t["seq_ts"].filter(has).to_pylist()], dtype=np.int64)
        ts = t["timestamp"].to_numpy()[has]
        assert (newest < ts).all()
        for s in t["seq_ts"].to_pylist()[:5000]:
            assert s == sorted(s)  # oldest first
        actions = pc.list_flatten(t["seq_action"]).to_numpy()
        assert actions.min() >= 0 and actions.max() < NUM_ACTIONS


def _log_action(r: dict) -> int:
    """The documented action of a log row's event: its strongest engagement, 6 for none."""
    return 5 if r["is_like"] else 4 if r["long_view"] else 3 if r["is_click"] else 6


def _expected_sequence(
    user: int, first_t: int, log_rows: list[dict], hist: dict | None, engaged_only: bool = False
) -> list[tuple]:
    """Brute force: the documented sequence of `user` for a request first shown at `first_t`."""
    events = []  # (ts, source, order, item, action)
    if hist is not None:

        def occ(seq):
            return [(x, seq[i + 1 :].count(x)) for i, x in enumerate(seq)]

        w, lw, lk = occ(hist["watch_seq"]), occ(hist["long_watch_seq"]), occ(hist["like_seq"])
        last = hist["last_time_ms"]
        old = []
        for stream, act, rank in ((lw, 1, 0), (lk, 2, 1)):
            for i, o in enumerate(stream):
                if o not in w:
                    old.append(((i + 1) / (len(stream) + 1), rank, o[0], act))
        for order, _, item, act in sorted(old, key=lambda e: (e[0], e[1])):
            events.append((last, 0, order, item, act))
        for i, o in enumerate(w):
            act = 2 if o in lk else 1 if o in lw else 0
            events.append((last, 0, 1.0 + i, o[0], act))
    for i, r in enumerate(log_rows):
        act = _log_action(r)
        if r["user_id"] == user and not (engaged_only and act == 6):
            events.append((r["time_ms"], 1, float(i), r["video_id"], act))
    events = [e for e in events if e[0] < first_t]
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    return [(e[3], e[4], e[0]) for e in events[-MAX_LEN:]]


def test_sequences_equal_the_strictly_earlier_actions(converted, raw_log):
    hist = {r["user_id"]: r for r in pq.read_table(HISTORY).to_pylist()}
    rows = _rows(converted["train"]) + _rows(converted["eval"])
    by_user = defaultdict(list)
    for r in rows:
        by_user[r["user_id"]].append(r)
    counts = Counter(r["user_id"] for r in raw_log)
    rng = np.random.default_rng(0)
    users = [u for u, _ in counts.most_common(8)]
    users += rng.choice(sorted(counts), size=25, replace=False).tolist()
    users += [u for u in counts if u not in hist][:3]  # users without a history
    user_rows = {u: [r for r in raw_log if r["user_id"] == u] for u in users}
    checked = 0
    for u in users:
        first_of = {}
        for r in by_user[u]:
            first_of[r["request_id"]] = min(first_of.get(r["request_id"], r["timestamp"]), r["timestamp"])
        for r in by_user[u]:
            got = list(zip(r["seq_item"], r["seq_action"], r["seq_ts"], strict=True))
            want = _expected_sequence(u, first_of[r["request_id"]], user_rows[u], hist.get(u))
            assert got == want, (u, r["request_id"])
            checked += 1
    assert checked > 100


def test_log_events_in_sequence_are_exactly_the_earlier_impressions(converted, raw_log):
    """Independent of the history encoding: the log-derived tail of each sequence (actions >= 3) is the
    user's impressions strictly before the request (when the sequence is not full), each with its
    strongest engagement, 6 for none."""
    earlier = defaultdict(list)
    for r in raw_log:
        earlier[r["user_id"]].append((r["time_ms"], r["video_id"], _log_action(r)))
    t = converted["eval"]
    rows = _rows(t.slice(0, 3000))
    first_of = {}
    for r in rows:
        first_of.setdefault(r["request_id"], r["timestamp"])
    for r in rows:
        if len(r["seq_item"]) == MAX_LEN:
            continue
        seq = zip(r["seq_item"], r["seq_action"], r["seq_ts"], strict=True)
        got = [(ts, it, a) for it, a, ts in seq if a >= 3]
        want = sorted(e for e in earlier[r["user_id"]] if e[0] < first_of[r["request_id"]])
        assert sorted(got) == want


def test_event_side_columns_share_the_candidate_lookup(converted):
    """seq_author / seq_tag / seq_duration are each event video's author_id / tag / duration_bucket, exactly
    as the same video's candidate columns say (one lookup of the video file)."""
    attrs = {}
    for split in ("train", "eval"):
        t = converted[split]
        for row in zip(*(t[c].to_pylist() for c in ("video_id", "author_id", "tag", "duration_bucket")), strict=True):
            attrs[row[0]] = row[1:]
    checked = 0
    for r in _rows(converted["eval"].slice(0, 2000)):
        cols = ("seq_item", "seq_author", "seq_tag", "seq_duration")
        assert len({len(r[c]) for c in cols}) == 1
        for item, *side in zip(*(r[c] for c in cols), strict=True):
            if item in attrs:
                assert tuple(side) == attrs[item]
                checked += 1
    assert checked > 10_000
    with VIDEOS.open(newline="") as f:
        duration = {int(v["video_id"]): v["video_duration"] for v in csv.DictReader(f)}
    for vid, (_, _, bucket) in list(attrs.items())[:500]:
        ms = float(duration[vid]) if duration[vid] else 0.0
        assert bucket == (int(np.floor(4 * np.log1p(ms / 1000))) if ms > 0 else -1)


def test_counters_count_only_rows_before_the_request(converted, raw_log):
    """user_/video_prior_* = log1p(#rows, #clicks, #long views, #likes strictly before the request's first
    impression) / 5; user_history_{watches,long_views,likes} = log1p(history_len, #long_watch_seq, #like_seq) / 5."""
    hist = {
        r["user_id"]: [r["history_len"], len(r["long_watch_seq"]), len(r["like_seq"])]
        for r in pq.read_table(HISTORY, columns=["user_id", "history_len", "long_watch_seq", "like_seq"]).to_pylist()
    }
    groups = {"user": defaultdict(list), "video": defaultdict(list)}
    for r in raw_log:
        groups["user"][r["user_id"]].append(r)
        groups["video"][r["video_id"]].append(r)
    rows = _rows(converted["train"].slice(0, 1500)) + _rows(converted["eval"].slice(0, 1500))
    first_of: dict[int, int] = {}
    for r in rows:
        first_of[r["request_id"]] = min(first_of.get(r["request_id"], r["timestamp"]), r["timestamp"])
    names = ("impressions", "clicks", "long_views", "likes")
    for r in rows:
        t = first_of[r["request_id"]]
        for who in ("user", "video"):
            earlier = [x for x in groups[who][r[f"{who}_id"]] if x["time_ms"] < t]
            want = [len(earlier), *(sum(x[lab] for x in earlier) for lab in ("is_click", "long_view", "is_like"))]
            got = [r[f"{who}_prior_{n}"] for n in names]
            np.testing.assert_allclose(got, np.log1p(want) / 5, rtol=1e-6)
        got = [r[f"user_history_{n}"] for n in ("watches", "long_views", "likes")]
        np.testing.assert_allclose(got, np.log1p(hist.get(r["user_id"], [0, 0, 0])) / 5, rtol=1e-6)
    assert max(r["user_prior_clicks"] for r in rows) > 0 and max(r["video_prior_likes"] for r in rows) > 0


# ------------------------------------------------------------------------------ surfaces and splits


def test_rows_per_surface_match_the_raw_tabs(converted, raw_log, raw_all):
    want = Counter(SURFACE_OF_TAB.get(r["tab"], "other") for r in raw_log)
    got = Counter()
    for split in ("train", "eval"):
        got += Counter(converted[split]["surface"].to_pylist())
    assert got == want
    assert set(got) == {"tab1", "tab0", "tab4", "tab6", "tab2", "other"}
    meta = converted["meta"]
    assert meta["raw_rows"] == len(raw_all)
    assert meta["duplicates_dropped"] == len(raw_all) - len(raw_log) < 0.05 * len(raw_all)
    for s, n in want.items():
        per = [meta["splits"][sp]["per_surface"].get(s, {}).get("rows", 0) for sp in ("train", "eval")]
        assert sum(per) == n
    # the raw tab is kept, and it agrees with the surface
    for split in ("train", "eval"):
        t = converted[split]
        for tab, s in zip(t["tab"].to_pylist(), t["surface"].to_pylist(), strict=True):
            assert SURFACE_OF_TAB.get(tab, "other") == s


def test_train_eval_split_by_date(converted, raw_log):
    cut = int(EVAL_FROM.replace("-", ""))
    keys = {
        "train": Counter((r["user_id"], r["video_id"], r["time_ms"]) for r in raw_log if r["date"] < cut),
        "eval": Counter((r["user_id"], r["video_id"], r["time_ms"]) for r in raw_log if r["date"] >= cut),
    }
    for split in ("train", "eval"):
        t = converted[split]
        got = Counter(
            zip(t["user_id"].to_pylist(), t["video_id"].to_pylist(), t["timestamp"].to_pylist(), strict=True)
        )
        assert got == keys[split]
        assert converted["meta"]["splits"][split]["rows"] == t.num_rows
    assert converted["train"].num_rows + converted["eval"].num_rows == len(raw_log)


def test_labels_and_features_follow_the_raw_rows(converted, raw_log):
    raw = {(r["user_id"], r["video_id"], r["time_ms"]): r for r in raw_log}
    for r in _rows(converted["eval"].slice(0, 2000)):
        src = raw[(r["user_id"], r["video_id"], r["timestamp"])]
        for lab in ("is_click", "long_view", "is_like"):
            assert r[lab] == src[lab]
        assert r["tab"] == src["tab"] and r["hour"] == src["hourmin"] // 100
        assert r["view_type"] == ("random" if src["is_rand"] else "organic")


def test_meta(converted):
    meta = json.loads((converted["out"] / "meta.json").read_text())
    assert meta == json.loads(json.dumps(converted["meta"]))
    assert set(meta["sha256"]) == {str(p) for p in (LOG, USERS, VIDEOS, HISTORY)}
    assert all(len(h) == 64 for h in meta["sha256"].values())
    assert 0.0 < meta["splits"]["train"]["click_rate"] < 1.0
    assert "CC BY-SA" in meta["licence"]


# ----------------------------------------------------------------------------- small slices, errors


def _head(tmp_path: Path, n: int, drop: str | None = None, step: int = 1) -> Path:
    """Every `step`-th of the first n * step raw log rows, optionally without column `drop`."""
    out = tmp_path / f"log_head_{n}_{step}{'_no_' + drop if drop else ''}.csv"
    with LOG.open(newline="") as f, out.open("w", newline="") as g:
        reader = csv.DictReader(f)
        fields = [c for c in reader.fieldnames if c != drop]
        writer = csv.DictWriter(g, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for i, row in enumerate(reader):
            if i >= n * step:
                break
            if i % step == 0:
                writer.writerow(row)
    return out


@needs_data
def test_surface_override_and_no_history(tmp_path):
    log = _head(tmp_path, 3000, step=30)  # spread over all six days
    meta = convert_kuairand(
        [log], USERS, VIDEOS, None, EVAL_FROM, tmp_path / "out", surfaces={1: "feed"}, max_seq_len=8
    )
    t = pq.read_table(tmp_path / "out" / "eval" / "part-00000.parquet")
    assert set(t["surface"].to_pylist()) <= {"feed", "other"}
    assert meta["splits"]["eval"]["per_surface"]["feed"]["rows"] == t["tab"].to_pylist().count(1)
    actions = pc.list_flatten(t["seq_action"]).to_numpy()
    assert actions.size == 0 or actions.min() >= 3  # no history events without a history file
    assert pc.list_value_length(t["seq_item"]).to_numpy().max() <= 8


def _raw_rows(log: Path) -> list[dict[str, int]]:
    """The raw log's rows, every column as an int."""
    with log.open(newline="") as f:
        return [{k: int(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _date_of(raw: list[dict[str, int]]) -> dict[tuple[int, int, int], int]:
    """The log date (YYYYMMDD) of each impression, by (user, video, time)."""
    return {(r["user_id"], r["video_id"], r["time_ms"]): r["date"] for r in raw}


@needs_data
def test_engaged_only_sequences(tmp_path):
    """`engaged_only`: each sequence is exactly the brute-force one without the unengaged impressions."""
    log = _head(tmp_path, 3000, step=30)
    raw = _raw_rows(log)
    convert_kuairand([log], USERS, VIDEOS, None, EVAL_FROM, tmp_path / "all", max_seq_len=MAX_LEN)
    meta = convert_kuairand(
        [log], USERS, VIDEOS, None, EVAL_FROM, tmp_path / "engaged", max_seq_len=MAX_LEN, engaged_only=True
    )
    assert meta["engaged_only"] is True
    actions = {}
    for name in ("all", "engaged"):
        rows = _rows(pq.read_table(tmp_path / name / "eval" / "part-00000.parquet"))
        first_of: dict[int, int] = {}
        for r in rows:
            first_of[r["request_id"]] = min(first_of.get(r["request_id"], r["timestamp"]), r["timestamp"])
        for r in rows:
            got = list(zip(r["seq_item"], r["seq_action"], r["seq_ts"], strict=True))
            assert got == _expected_sequence(r["user_id"], first_of[r["request_id"]], raw, None, name == "engaged")
        actions[name] = {a for r in rows for a in r["seq_action"]}
    assert 6 in actions["all"] and actions["engaged"] <= {3, 4, 5}


@needs_data
def test_eval_until_leaves_out_later_days(tmp_path):
    log = _head(tmp_path, 3000, step=30)
    raw = _raw_rows(log)
    date_of = _date_of(raw)
    meta = convert_kuairand(
        [log], USERS, VIDEOS, None, "2022-04-28", tmp_path / "out", max_seq_len=8, eval_until="2022-04-29"
    )
    assert meta["rows_from_eval_until_dropped"] == sum(r["date"] >= 20220429 for r in raw) > 0
    for split, days in {"train": {20220425, 20220426, 20220427}, "eval": {20220428}}.items():
        t = pq.read_table(tmp_path / "out" / split, columns=["user_id", "video_id", "timestamp"]).to_pylist()
        assert {date_of[(r["user_id"], r["video_id"], r["timestamp"])] for r in t} == days, split
    with pytest.raises(DataError, match="eval_until"):
        convert_kuairand([log], USERS, VIDEOS, None, "2022-04-28", tmp_path / "bad", eval_until="29.04.2022")


@needs_data
def test_calib_from_writes_the_days_before_eval(tmp_path):
    """`calib_from`: the days from it until eval_from form calib/, whole requests, ids growing split to split."""
    log = _head(tmp_path, 3000, step=30)
    raw = _raw_rows(log)
    date_of = _date_of(raw)
    meta = convert_kuairand([log], USERS, VIDEOS, None, "2022-04-29", tmp_path / "out", max_seq_len=8,
                            calib_from="2022-04-28")
    assert list(meta["splits"]) == ["train", "calib", "eval"] and meta["calib_from"] == "2022-04-28"
    ids = {}
    for split, days in {"train": {20220425, 20220426, 20220427}, "calib": {20220428},
                        "eval": {20220429, 20220430}}.items():
        t = pq.read_table(tmp_path / "out" / split).to_pylist()
        assert {date_of[(r["user_id"], r["video_id"], r["timestamp"])] for r in t} == days, split
        assert meta["splits"][split]["rows"] == len(t)
        ids[split] = [r["request_id"] for r in t]
    assert max(ids["train"]) < min(ids["calib"]) and max(ids["calib"]) < min(ids["eval"])
    with pytest.raises(DataError, match="calib_from=2022-04-29: must be a day before eval_from"):
        convert_kuairand([log], USERS, VIDEOS, None, "2022-04-29", tmp_path / "bad", calib_from="2022-04-29")


@needs_data
def test_user_file_as_log_raises(tmp_path):
    with pytest.raises(DataError) as e:
        convert_kuairand([USERS], USERS, VIDEOS, HISTORY, EVAL_FROM, tmp_path)
    assert USERS.name in str(e.value) and "video_id" in str(e.value)


@needs_data
def test_log_missing_tab_raises(tmp_path):
    log = _head(tmp_path, 100, drop="tab")
    with pytest.raises(DataError) as e:
        convert_kuairand([log], USERS, VIDEOS, HISTORY, EVAL_FROM, tmp_path / "out")
    assert log.name in str(e.value) and "'tab'" in str(e.value)


@needs_data
def test_swapped_feature_files_raise(tmp_path):
    log = _head(tmp_path, 100)
    with pytest.raises(DataError) as e:
        convert_kuairand([log], VIDEOS, USERS, HISTORY, EVAL_FROM, tmp_path / "out")
    assert VIDEOS.name in str(e.value) and "user_id" in str(e.value)
    with pytest.raises(DataError) as e:
        convert_kuairand([log], USERS, VIDEOS, LOG, EVAL_FROM, tmp_path / "out")  # CSV as history
    assert LOG.name in str(e.value)


@needs_data
def test_bad_eval_from_raises(tmp_path):
    log = _head(tmp_path, 100)
    with pytest.raises(DataError, match="eval_from"):
        convert_kuairand([log], USERS, VIDEOS, HISTORY, "29/04/2022", tmp_path / "out")
    with pytest.raises(DataError, match="empty"):
        convert_kuairand([log], USERS, VIDEOS, HISTORY, "2030-01-01", tmp_path / "out")


def test_missing_file_raises(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataError) as e:
        convert_kuairand([missing], USERS, VIDEOS, HISTORY, EVAL_FROM, tmp_path / "out")
    assert "nope.csv" in str(e.value)


@needs_data
def test_missing_feature_file_raises(tmp_path):
    log = _head(tmp_path, 100)
    for args in ((USERS, tmp_path / "videos.csv", HISTORY), (tmp_path / "users.csv", VIDEOS, HISTORY),
                 (USERS, VIDEOS, tmp_path / "history.parquet")):  # fmt: skip
        with pytest.raises(DataError) as e:
            convert_kuairand([log], *args, EVAL_FROM, tmp_path / "out")
        missing = next(p for p in args if not p.exists())
        assert missing.name in str(e.value) and "not found" in str(e.value)
