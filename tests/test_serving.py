"""Scorer and scoring service: encoding equals the reader, chunking, validation, and a live server
that follows promote and rollback under concurrent traffic without failing a request."""

from __future__ import annotations

import copy
import json
import math
import re
import threading
import time

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from tests.fixtures import (
    SURFACE,
    derive_export,
    loading_metrics,
    point_at,
    same_time_table,
    small_config,
    table_to_request,
    train_small_run,
    truncate_weights,
    wait_for,
)
from unictr.cli import app
from unictr.config import ServeSpec
from unictr.data.reader import load_surface_split
from unictr.export.job import export_surface
from unictr.model import probabilities
from unictr.serving.app import create_app
from unictr.serving.process import server_process
from unictr.serving.registry import Registry
from unictr.serving.request import RequestError, to_columns, to_numpy_columns
from unictr.serving.scorer import Scorer, ScoreResult


def in_process(**options: object) -> ServeSpec:
    """Serving options for an app inside the test process, which keeps its torch thread count."""
    return ServeSpec(threads=None, **options)


@pytest.fixture(scope="module")
def world(sim_config, tmp_path_factory):
    """A tiny run, a `search` export (v0001) and a derived one with other scores (v0002), published."""
    cfg = small_config(sim_config)
    root = tmp_path_factory.mktemp("serving")
    data, run = train_small_run(cfg, root)
    v1 = root / "export_v1"
    export_surface(run, SURFACE, v1)

    def shift(w: dict) -> None:
        w["calibration.bias"] += 0.5

    v2 = derive_export(v1, root / "export_v2", shift)
    registry = Registry(root / "registry")
    assert registry.publish(SURFACE, v1) == "v0001" and registry.publish(SURFACE, v2) == "v0002"
    registry.promote(SURFACE, "v0001", force=True)
    table, now = same_time_table(cfg, 40, seed=7)
    pq.write_table(table, root / "request_rows.parquet")
    return {"cfg": cfg, "root": root, "v1": v1, "v2": v2, "registry": registry, "table": table, "now": now}


@pytest.fixture(scope="module")
def request_body(world) -> dict:
    return table_to_request(world["table"], world["cfg"], SURFACE, world["now"])


@pytest.fixture(scope="module")
def client(world):
    spec = in_process(max_candidates=200, max_body_bytes=1 << 20, poll_seconds=0.05)
    with TestClient(create_app(world["registry"].root, spec)) as c:
        yield c


def test_scorer_encodes_like_the_reader(world, request_body) -> None:
    """Scoring a request equals the model on the same rows read from Parquet (hashing, padding, truncation)."""
    scorer = Scorer.load(world["v1"])
    result = scorer.score(request_body)
    b = load_surface_split(world["root"] / "request_rows.parquet", scorer.schema, world["cfg"].data, SURFACE)
    expected = probabilities(scorer.model, b).numpy()[:, [scorer.schema.tasks.index(t) for t in scorer.tasks]]
    assert result.tasks == ("click", "long_click")  # save does not apply on search
    assert result.probabilities.shape == (len(request_body["candidates"]), 2)
    np.testing.assert_allclose(result.probabilities, expected, rtol=0, atol=1e-6)
    assert result.unique_users == len(request_body["users"]) and result.chunks == 1
    assert result.truncated_sequences > 0  # random_table writes sequences longer than max_len


def test_chunking_equals_one_pass(world, request_body) -> None:
    one = Scorer.load(world["v1"]).score(request_body)
    chunked = Scorer.load(world["v1"], max_unique_users=3).score(request_body)
    assert chunked.chunks == math.ceil(one.unique_users / 3) > 1
    np.testing.assert_allclose(chunked.probabilities, one.probabilities, rtol=0, atol=1e-6)


def test_users_deduplicated_and_sequences_cleaned(world, request_body) -> None:
    scorer = Scorer.load(world["v1"])
    req = copy.deepcopy(request_body)
    base = scorer.score(req)
    req["users"].append({**req["users"][0], "id": "nobody-refers-to-me"})
    seq = req["users"][0]["sequence"]
    for key in seq:  # shuffled order and a future event change nothing but the counts
        seq[key] = seq[key][::-1]
    for key in seq:
        seq[key].append(1)
    seq["timestamps_ms"][-1] = req["request_time_ms"] + 10
    again = scorer.score(req)
    assert again.unique_users == base.unique_users and again.dropped_events == 1
    np.testing.assert_array_equal(again.probabilities, base.probabilities)


def test_one_user_request_scores_like_its_rows_in_a_larger_one(world, request_body) -> None:
    """A one-user request (the common case) keeps its rows in request order instead of regrouping them,
    and its answer is the model's output as it is: each user's own request, its candidates in reverse
    order, scores them as the many-user request does, in both layouts."""
    scorer = Scorer.load(world["v1"])
    full = scorer.score(request_body)
    assert full.unique_users > 3
    for user in request_body["users"][:3]:
        rows = [i for i, c in enumerate(request_body["candidates"]) if c["user"] == user["id"]][::-1]
        one = {**request_body, "users": [user], "candidates": [request_body["candidates"][i] for i in rows]}
        for req in (one, to_numpy_columns(to_columns(one))):
            got = scorer.score(req)
            assert got.unique_users == 1 and got.chunks == 1
            np.testing.assert_allclose(got.probabilities, full.probabilities[rows], rtol=0, atol=1e-6)


def test_inline_scores_on_the_event_loop_thread_alike(world, request_body, monkeypatch) -> None:
    """`inline` scores on the event loop's thread (by default a worker thread does), with the same answers."""
    scored_on = []
    score = Scorer.score

    def spy(self: Scorer, request: object) -> ScoreResult:
        scored_on.append(threading.get_ident())
        return score(self, request)

    monkeypatch.setattr(Scorer, "score", spy)
    answers = {}
    for inline in (False, True):
        with TestClient(create_app(world["registry"].root, in_process(inline=inline))) as c:
            loop_thread = c.portal.call(threading.get_ident)
            response = c.post(f"/v1/surfaces/{SURFACE}/score", json=request_body)
            assert response.status_code == 200
            assert (scored_on[-1] == loop_thread) == inline
            answers[inline] = response.json()
    assert answers[True] == answers[False]


def test_columnar_request_scores_like_rows(world, client, request_body) -> None:
    """The same candidates sent as columns give the same probabilities, answered as one list per task."""
    rows = Scorer.load(world["v1"]).score(request_body)
    columns = Scorer.load(world["v1"]).score(json.dumps(to_columns(request_body)))
    np.testing.assert_array_equal(columns.probabilities, rows.probabilities)
    response = client.post(f"/v1/surfaces/{SURFACE}/score", json=to_columns(request_body))
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert list(predictions) == list(rows.tasks)
    np.testing.assert_allclose(np.array([predictions[t] for t in rows.tasks]).T, rows.probabilities, atol=1e-7)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c["features"]["ad_id"].pop(), r"candidate_columns.features.ad_id: \d+ values, expected \d+"),
        (lambda c: c["view_type"].append("grid"), r"candidate_columns.view_type: \d+ values, expected \d+"),
        (lambda c: c["features"]["ad_id"].__setitem__(3, 1.5),
         r"candidate_columns.features.ad_id\[3\]: Input should be a valid integer"),
        (lambda c: c["features"].pop("ad_topic"), r"candidate_columns.features.ad_topic: Field required"),
        (lambda c: c["user"].__setitem__(2, "ghost"), r"candidate_columns.user\[2\]: unknown user 'ghost'"),
        (lambda c: c["features"]["ad_id"].__setitem__(4, 2**63),
         r"candidate_columns.features.ad_id: an id outside the int64 range"),
    ],
    ids=["short-feature", "long-view-type", "type", "missing", "unknown-user", "beyond-int64"],
)
def test_columnar_request_validation(client, request_body, mutate, message) -> None:
    req = to_columns(copy.deepcopy(request_body))
    mutate(req["candidate_columns"])
    response = client.post(f"/v1/surfaces/{SURFACE}/score", json=req)
    assert response.status_code == 422
    assert re.search(message, response.json()["detail"]), response.json()["detail"]


def test_numpy_columns_score_like_json(world, request_body) -> None:
    """Candidate columns as numpy arrays (any integer dtype for ids) give the JSON request's scores."""
    scorer = Scorer.load(world["v1"])
    body = to_columns(request_body)
    reference = scorer.score(json.dumps(body)).probabilities
    req = to_numpy_columns(to_columns(request_body))
    np.testing.assert_array_equal(scorer.score(req).probabilities, reference)
    hours = np.arange(len(body["candidate_columns"]["user"])) % 24
    body["candidate_columns"]["features"]["hour"] = hours.tolist()
    features = req["candidate_columns"]["features"]
    features["hour"] = hours.astype(np.uint8)
    features["ad_age_days"] = features["ad_age_days"].astype(np.float32)  # the model's dense inputs are float32
    np.testing.assert_array_equal(scorer.score(req).probabilities, scorer.score(json.dumps(body)).probabilities)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c["features"].update(ad_id=c["features"]["ad_id"].astype(float)),
         r"candidate_columns.features.ad_id: .*expected a 1-D numpy array of integer ids .*got a 1-D float64 array"),
        (lambda c: c["features"].update(ad_id=c["features"]["ad_id"].tolist()),
         r"candidate_columns.features.ad_id: .*expected a 1-D numpy array of integer ids .*got list"),
        (lambda c: c["features"].update(ad_id=np.stack([c["features"]["ad_id"]] * 2)), r"got a 2-D int64 array"),
        (lambda c: c["features"].update(ad_id=np.full(len(c["user"]), 2**63, dtype=np.uint64)),
         r"candidate_columns.features.ad_id: .*position 0: an id outside the int64 range"),
        (lambda c: c["features"]["ad_age_days"].__setitem__(5, np.nan),
         r"candidate_columns.features.ad_age_days: .*position 5: not a finite number within the float32 range"),
        (lambda c: c.update(view_type=np.array(["grid"] * (len(c["user"]) - 1) + ["carousel"])),
         r"candidate_columns.view_type: .*position \d+: view type must be one of 'grid', 'full'"),
        (lambda c: c.update(user=np.array([None] * len(c["user"]))),
         r"candidate_columns.user: .*position 0: a user id must be a string or an integer"),
        (lambda c: c.update(user=np.array(["ghost"] * len(c["user"]))),
         r"candidate_columns.user\[0\]: unknown user 'ghost'"),
        (lambda c: c["features"].update(ad_id=c["features"]["ad_id"][1:]),
         r"candidate_columns.features.ad_id: \d+ values, expected \d+"),
    ],
    ids=["float-ids", "list-among-arrays", "2-d", "beyond-int64", "nan", "view-type", "user-type", "unknown-user",
         "short"],
)
def test_numpy_columns_validation(world, request_body, mutate, message) -> None:
    req = to_numpy_columns(to_columns(request_body))
    mutate(req["candidate_columns"])
    with pytest.raises(RequestError, match=message):
        Scorer.load(world["v1"]).score(req)


def test_request_needs_one_candidate_layout(client, request_body) -> None:
    both = to_columns(request_body) | {"candidates": request_body["candidates"]}
    neither = {k: v for k, v in request_body.items() if k != "candidates"}
    for req in (both, neither):
        response = client.post(f"/v1/surfaces/{SURFACE}/score", json=req)
        assert response.status_code == 422
        assert "exactly one of the two" in response.json()["detail"]


@pytest.mark.parametrize(
    ("mutate", "status", "message"),
    [
        (lambda r: r["candidates"][1]["features"].pop("ad_id"), 422, r"candidates\[1\].features.ad_id: Field required"),
        (lambda r: r["users"][0]["features"].update(user_activity="high"), 422,
         r"users\[0\].features.user_activity: Input should be a valid number"),
        (lambda r: r["candidates"][0]["features"].update(ad_id=1.5), 422,
         r"candidates\[0\].features.ad_id: Input should be a valid integer"),
        (lambda r: r["candidates"][3]["features"].update(ad_id=-(2**63) - 1), 422,
         r"candidates\[\]\.features\.ad_id: an id outside the int64 range"),
        (lambda r: r["candidates"][0].update(view_type="carousel"), 422,
         r"candidates\[0\].view_type: Input should be 'grid' or 'full'"),
        (lambda r: r["candidates"][2].update(user="ghost"), 422, r"candidates\[2\].user: unknown user 'ghost'"),
        (lambda r: r["candidates"][2].update(user=True), 422,
         r"candidates\[2\].user: Input should be a string or an integer(;|$)"),
        (lambda r: r["users"].append(dict(r["users"][0])), 422, r"users\[\d+\].id: duplicate user id"),
        (lambda r: r["users"][0]["sequence"]["items"].append(1), 422,
         r"users\[0\].sequence: items, actions, timestamps_ms, seq_topic differ in length"),
        (lambda r: (r["users"].insert(0, copy.deepcopy(r["users"][0]) | {"id": "idle"}),  # a user without candidates
                    r["users"][1]["sequence"]["items"].append(1)), 422,
         r"users\[1\].sequence: items, actions, timestamps_ms, seq_topic differ in length"),
        (lambda r: r["candidates"].extend(r["candidates"] * 5), 413, r"candidates: \d+ candidates, at most 200"),
    ],
    ids=["missing", "dense-type", "categorical-type", "beyond-int64", "view-type", "unknown-user", "bool-user",
         "duplicate-user", "ragged-sequence", "ragged-sequence-after-idle-user", "too-many"],
)
def test_request_validation(client, request_body, mutate, status, message) -> None:
    req = copy.deepcopy(request_body)
    mutate(req)
    response = client.post(f"/v1/surfaces/{SURFACE}/score", json=req)
    assert response.status_code == status
    assert re.search(message, response.json()["detail"]), response.json()["detail"]


def test_service_errors_and_metrics(client, request_body) -> None:
    assert client.post("/v1/surfaces/nope/score", json=request_body).status_code == 404
    assert "unknown surface 'nope'" in client.post("/v1/surfaces/nope/score", json={}).json()["detail"]
    assert client.post(f"/v1/surfaces/{SURFACE}/score", content=b"x" * (2 << 20)).status_code == 413
    bad_json = client.post(f"/v1/surfaces/{SURFACE}/score", content=b"{not json")
    assert bad_json.status_code == 422 and bad_json.json()["detail"].startswith("body: Invalid JSON")
    ok = client.post(f"/v1/surfaces/{SURFACE}/score", json=request_body)
    assert ok.status_code == 200 and ok.json()["model_version"] == "v0001"
    assert client.get("/healthz").json() == {"status": "ok", "live": {SURFACE: "v0001"}}
    assert client.get("/v1/models").json()["surfaces"][SURFACE]["tasks"] == ["click", "long_click"]

    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    assert all(name.startswith("unictr_") for name in families if not name.startswith(("python_", "process_")))
    for name in ("unictr_request_latency_seconds", "unictr_request_candidates", "unictr_request_unique_users",
                 "unictr_forward_chunks", "unictr_errors", "unictr_mean_prediction"):
        assert name in families, name
    errors = {s.labels["kind"]: s.value for s in families["unictr_errors"].samples if s.name.endswith("_total")}
    assert errors["not_found"] >= 2 and errors["too_large"] >= 1 and errors["validation"] >= 1
    means = {s.labels["task"]: s.value for s in families["unictr_mean_prediction"].samples}
    assert set(means) == {"click", "long_click"} and all(0 < v < 1 for v in means.values())


def _prediction_counters(client) -> dict[tuple[str, str, str], float]:
    """(metric, surface, task) -> value of the predicted-positives and predictions counters in /metrics."""
    families = text_string_to_metric_families(client.get("/metrics").text)
    return {(s.name, s.labels["surface"], s.labels["task"]): s.value for f in families
            if f.name in ("unictr_predicted_positives", "unictr_predictions")
            for s in f.samples if s.name.endswith("_total")}


def _folded_counter(client) -> dict[str, float]:
    """feature -> `unictr_folded_codes_total` of the test surface in /metrics."""
    families = text_string_to_metric_families(client.get("/metrics").text)
    return {s.labels["feature"]: s.value for f in families if f.name == "unictr_folded_codes"
            for s in f.samples if s.name.endswith("_total") and s.labels["surface"] == SURFACE}


def test_codes_outside_a_modulo_table_are_scored_and_counted(world, request_body, client) -> None:
    """A live request's codes outside their `encoding: modulo` table ([-1, hash_size)) are scored (the reader
    would refuse them in a file) and counted per feature, in the result and in /metrics."""
    scorer = Scorer.load(world["v1"])
    assert scorer.score(request_body).folded_codes == {}
    req = copy.deepcopy(request_body)
    first = req["candidates"][0]
    first["features"]["hour"] = 24 + 5  # hour: modulo, 24 rows
    next(c for c in req["candidates"][1:] if c["user"] == first["user"])["features"]["hour"] = -7
    user = next(u for u in req["users"] if u["id"] == first["user"])
    user["features"]["user_country"] = 32 * 3  # modulo, 32 rows
    seq = next(u["sequence"] for u in req["users"] if u["id"] in {c["user"] for c in req["candidates"]}
               and len(u["sequence"]["items"]) and min(u["sequence"]["timestamps_ms"]) < req["request_time_ms"])
    seq["seq_topic"][int(np.argmin(seq["timestamps_ms"]))] = 512  # shares ad_topic's 512 rows
    expected = {"hour": 2, "user_country": 1, "sequence.seq_topic": 1}
    result = scorer.score(req)
    assert result.folded_codes == expected
    assert np.isfinite(result.probabilities).all()
    before = _folded_counter(client)
    assert client.post(f"/v1/surfaces/{SURFACE}/score", json=req).status_code == 200
    after = _folded_counter(client)
    assert {k: after[k] - before.get(k, 0.0) for k in after} == expected


def test_metrics_count_predicted_positives_per_surface_and_task(client, request_body) -> None:
    """The counters behind the live mean prediction grow by exactly the answered probabilities' sum and
    count, per surface × task of the loaded model only; a refused request adds nothing."""
    before = _prediction_counters(client)
    answers = [client.post(f"/v1/surfaces/{SURFACE}/score", json=request_body).json() for _ in range(2)]
    assert client.post(f"/v1/surfaces/{SURFACE}/score", json={"users": []}).status_code == 422
    after = _prediction_counters(client)
    assert {(surface, task) for _, surface, task in after} == {(SURFACE, "click"), (SURFACE, "long_click")}
    for task in ("click", "long_click"):
        probs = [p[task] for a in answers for p in a["predictions"]]
        added = {m: after[m, SURFACE, task] - before.get((m, SURFACE, task), 0.0)
                 for m in ("unictr_predicted_positives_total", "unictr_predictions_total")}
        assert added["unictr_predictions_total"] == len(probs) == 2 * len(answers[0]["predictions"])
        assert added["unictr_predicted_positives_total"] == pytest.approx(sum(probs), rel=1e-9)
        mean = added["unictr_predicted_positives_total"] / added["unictr_predictions_total"]  # what PromQL divides
        assert mean == pytest.approx(float(np.mean(probs)), rel=1e-9) and 0 < mean < 1


def test_shadow_records_difference(world, client, request_body) -> None:
    registry = world["registry"]
    registry.set_shadow(SURFACE, "v0002")
    try:
        wait_for(lambda: client.get("/v1/models").json()["surfaces"][SURFACE]["shadow"] == "v0002")
        response = client.post(f"/v1/surfaces/{SURFACE}/score", json=request_body)
        assert response.json()["model_version"] == "v0001"  # the shadow never answers

        def shadow_count() -> float:
            text = client.get("/metrics").text
            return sum(s.value for f in text_string_to_metric_families(text) if f.name == "unictr_shadow_abs_diff"
                       for s in f.samples if s.name.endswith("_count"))

        wait_for(lambda: shadow_count() >= 2)  # click and long_click observed
        text = client.get("/metrics").text
        assert 'unictr_model_info{role="shadow",surface="search",version="v0002"} 1.0' in text
    finally:
        registry.set_shadow(SURFACE, None)


@pytest.mark.parametrize(("args", "seconds"), [((), 10.0), (("--inline",), 0.0)], ids=["worker-thread", "inline"])
def test_server_follows_the_registry_under_load(world, request_body, tmp_path, args, seconds) -> None:
    """The real server process, scoring on worker threads or (`--inline`) on the event loop's, under 4
    concurrent clients: cycles of a corrupt shadow set, a promote, a rollback and the shadow removed, for
    `seconds` (at least one cycle), fail no request; every answer's scores equal the in-process scorer of
    the version it names, and that version was the registry's live one at some moment while it ran."""
    registry = world["registry"]
    broken = registry.publish(SURFACE, world["v1"])
    truncate_weights(registry, SURFACE, broken)
    with server_process(registry.root, tmp_path / "server.log", 1, "--poll-seconds", "0.1", *args) as (server, port):
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10) as http:
            wait_for(lambda: server.poll() is None and _up(http), timeout=60)
            expected = {v: Scorer.load(registry.version_dir(SURFACE, v), version=v).score(request_body)
                        for v in ("v0001", "v0002")}
            body = json.dumps(request_body)
            _assert_same(http.post(f"/v1/surfaces/{SURFACE}/score", content=body).json(), expected["v0001"])
            # [version, live from, live until]: from before the registry names it until the server serves another
            windows: list[list] = [["v0001", -math.inf, math.inf]]
            answers: list[tuple[float, float, str]] = []  # (sent, answered, version)
            failures: list[str] = []
            done = threading.Event()

            def client_loop() -> None:
                deadline = time.monotonic() + seconds + 120
                with httpx.Client(base_url=base, timeout=10) as c:
                    for _ in range(200_000):  # bounded in count and time; ends when the cycles are done
                        if done.is_set() or time.monotonic() > deadline:
                            return
                        sent = time.monotonic()
                        try:
                            r = c.post(f"/v1/surfaces/{SURFACE}/score", content=body)
                            if r.status_code != 200:
                                failures.append(f"{r.status_code}: {r.text[:200]}")
                                continue
                            out = r.json()
                            _assert_same(out, expected[out["model_version"]])
                            answers.append((sent, time.monotonic(), out["model_version"]))
                        except Exception as e:  # any failure counts
                            failures.append(repr(e))

            def switch(version: str, *command: str) -> None:
                """Run a registry command that makes `version` live; wait until the server serves it."""
                start = time.monotonic()
                _cli(*command, registry=registry)
                wait_for(lambda: http.get("/healthz").json()["live"][SURFACE] == version)
                windows[-1][2] = time.monotonic()
                windows.append([version, start, math.inf])
                wait_for(lambda: answers[-1][2] == version)

            def shadow_problems() -> list[str]:
                return http.get("/readyz").json()["shadow_problems"]

            threads = [threading.Thread(target=client_loop) for _ in range(4)]
            for t in threads:
                t.start()
            began, cycles = time.monotonic(), 0
            try:
                wait_for(lambda: len(answers) >= 5)
                while cycles == 0 or time.monotonic() - began < seconds:
                    point_at(registry, SURFACE, shadow=broken)
                    wait_for(shadow_problems)
                    switch("v0002", "promote", "--version", "v0002", "--force")
                    switch("v0001", "rollback")
                    assert http.get("/readyz").status_code == 200 and shadow_problems()  # still set, still broken
                    _cli("rollback", "--shadow", registry=registry)
                    wait_for(lambda: not shadow_problems())
                    cycles += 1
            finally:
                done.set()
                for t in threads:
                    t.join(timeout=30)
            print(f"load test {args}: {len(answers)} answers, {len(failures)} failures, {cycles} cycles in "
                  f"{time.monotonic() - began:.1f} s")
            assert not failures, failures[:5]
            stale = [(v, sent, got) for sent, got, v in answers
                     if not any(w[0] == v and sent <= w[2] and got >= w[1] for w in windows)]
            assert not stale, stale[:5]
            assert {v for _, _, v in answers} == {"v0001", "v0002"} and len(answers) >= 10 * cycles
            failed = loading_metrics(http.get("/metrics").text, SURFACE)["failures:shadow"]
            assert failed >= cycles  # the broken shadow was tried, and refused, in every cycle
            assert server.poll() is None


def _cli(command: str, *args: str, registry: Registry) -> None:
    result = CliRunner().invoke(app, ["registry", command, "--registry", str(registry.root), "--surface", SURFACE,
                                      *args])
    assert result.exit_code == 0, result.output


def _up(http: httpx.Client) -> bool:
    try:
        return http.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def _assert_same(response: dict, expected) -> None:
    got = np.array([[p[t] for t in expected.tasks] for p in response["predictions"]], dtype=np.float32)
    np.testing.assert_allclose(got, expected.probabilities, rtol=0, atol=1e-6)


def test_scorer_rejects_unified_checkpoint(world) -> None:
    from unictr.checkpoint import load_model

    model, manifest = load_model(world["root"] / "run")
    with pytest.raises(ValueError, match="needs a surface export"):
        Scorer(model, manifest)
    with pytest.raises(RequestError, match="body: Invalid JSON"):
        Scorer.load(world["v1"]).score(b"[")


def test_serve_options_reach_serve_spec(tmp_path, monkeypatch) -> None:
    """`unictr serve` runs one intra-op thread per request unless told otherwise (docs/serving.md); its flags
    reach the `ServeSpec` the app gets, and values the spec refuses are refused with the flag's name."""
    calls = []
    monkeypatch.setattr("unictr.serving.app.serve", lambda registry, spec: calls.append(spec))
    for args, threads in (([], 1), (["--threads", "2"], 2)):
        result = CliRunner().invoke(app, ["serve", "--registry", str(tmp_path), *args])
        assert result.exit_code == 0, result.output
        assert calls.pop().threads == threads
    args = ["--host", "0.0.0.0", "--port", "9001", "--max-unique-users", "8", "--max-candidates", "100",
            "--max-body-mb", "0.5", "--poll-seconds", "0.25", "--max-concurrency", "3", "--backend", "eager",
            "--bf16", "--inline"]  # fmt: skip
    result = CliRunner().invoke(app, ["serve", "--registry", str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    assert calls.pop() == ServeSpec(
        host="0.0.0.0", port=9001, max_unique_users=8, max_candidates=100, max_body_bytes=1 << 19,
        poll_seconds=0.25, max_concurrency=3, backend="eager", bf16=True, inline=True, threads=1,
    )
    for args, message in (
        (["--backend", "tvm"], "--backend: Value error, backend must be one of auto, eager, compile, onnx"),
        (["--max-unique-users", "0"], "--max-unique-users: Input should be greater than or equal to 1"),
        (["--max-body-mb", "0"], "--max-body-mb: Input should be greater than or equal to 1"),
        (["--poll-seconds", "0"], "--poll-seconds: Input should be greater than 0"),
    ):
        result = CliRunner().invoke(app, ["serve", "--registry", str(tmp_path), *args])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert not calls
    with pytest.raises(ValueError, match="max_candidates"):
        ServeSpec(max_candidates=0)
