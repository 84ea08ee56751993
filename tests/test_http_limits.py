"""The scoring service's HTTP limits (docs/serving.md, *Limits*): a real server process closes slow-header,
short-body and idle keep-alive connections at their deadlines, keeps `/healthz` answering with 100 idle
connections open, and answers score requests beyond `--max-concurrency` with a quick 503; in process,
non-JSON content types get 415, every data error 422 naming its field, and the score body has a schema."""

from __future__ import annotations

import copy
import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.fixtures import SURFACE, same_time_table, small_config, table_to_request, train_small_run
from unictr.cli import app
from unictr.config import Config, ServeSpec
from unictr.data.errors import DataError
from unictr.export.job import export_surface
from unictr.serving.app import create_app
from unictr.serving.process import server_process
from unictr.serving.registry import Registry

SCORE = f"/v1/surfaces/{SURFACE}/score"
HEADER_TIMEOUT, BODY_TIMEOUT, KEEPALIVE_TIMEOUT = 2.0, 3.0, 1.0
SLACK = 1.0  # how late after its deadline a connection may close (scheduling on a loaded machine)


def served_registry(cfg: Config, root: Path) -> tuple[Registry, dict]:
    """A registry with one live `search` version of a tiny run, and a valid score request for it."""
    _, run = train_small_run(cfg, root)
    export_surface(run, SURFACE, root / "export")
    registry = Registry(root / "registry")
    registry.publish(SURFACE, root / "export")
    registry.promote(SURFACE, "v0001", force=True)
    table, now = same_time_table(cfg, 8, seed=3)
    return registry, table_to_request(table, cfg, SURFACE, now)


def wait_until_up(server, http: httpx.Client, timeout: float = 60.0) -> None:
    """Wait (bounded) until the server process answers `/healthz`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "the server exited"
        try:
            if http.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not come up in time")


@pytest.fixture(scope="module")
def world(sim_config, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("http")
    registry, body = served_registry(small_config(sim_config), root)
    return {"root": root, "registry": registry, "body": body}


@pytest.fixture(scope="module")
def server(world) -> Iterator[dict]:
    """The real server with short deadlines and one score request in flight at a time."""
    args = ("--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT), "--keepalive-timeout",
            str(KEEPALIVE_TIMEOUT), "--max-concurrency", "1")  # fmt: skip
    with (
        server_process(world["registry"].root, world["root"] / "server.log", 1, *args) as (proc, port),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http,
    ):
        wait_until_up(proc, http)
        yield {"port": port, "http": http}


@pytest.fixture(scope="module")
def client(world) -> Iterator[TestClient]:
    with TestClient(create_app(world["registry"].root, ServeSpec(threads=None))) as c:
        yield c


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(10)
    return sock


def _seconds_until_closed(sock: socket.socket, start: float) -> float:
    """Seconds from `start` until the server closes `sock` (reads and drops anything it sends first)."""
    while sock.recv(65536):
        pass
    return time.monotonic() - start


def _score_head(body_len: int) -> bytes:
    return (f"POST {SCORE} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {body_len}\r\n\r\n").encode()  # fmt: skip


def test_slow_headers_closed_at_the_header_deadline(server) -> None:
    """Headers dribbled a byte at a time never finish: the connection closes at the header deadline, which
    the dribbling does not extend."""
    head = _score_head(10)
    with _connect(server["port"]) as sock:
        start = time.monotonic()
        for i in range(int(HEADER_TIMEOUT / 0.25) - 2):  # stops short of the deadline and of the headers' end
            sock.sendall(head[i : i + 1])
            time.sleep(0.25)
        assert _seconds_until_closed(sock, start) < HEADER_TIMEOUT + SLACK


def test_short_body_closed_at_the_body_deadline(server) -> None:
    """A body shorter than its Content-Length: closed at the body deadline, counted as a disconnect, not an error."""
    body = json.dumps({"users": []}).encode()
    with _connect(server["port"]) as sock:
        sock.sendall(_score_head(len(body) + 100) + body)
        start = time.monotonic()
        assert _seconds_until_closed(sock, start) < BODY_TIMEOUT + SLACK
    metrics = server["http"].get("/metrics").text
    assert f'unictr_errors_total{{kind="disconnected",surface="{SURFACE}"}} 1.0' in metrics
    assert 'kind="internal"' not in metrics


def test_idle_keepalive_connection_closed(server) -> None:
    with _connect(server["port"]) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        assert _seconds_until_closed(sock, start) < KEEPALIVE_TIMEOUT + SLACK


def test_idle_connections_leave_healthz_and_scoring_answering(server, world) -> None:
    """100 connections that send nothing: `/healthz` answers within 1 s and scoring works (before: uvicorn
    answered every request 503 from 64 open connections on), and each idle one closes at the header deadline."""
    with ExitStack() as stack:
        idle = [stack.enter_context(_connect(server["port"])) for _ in range(100)]
        opened = time.monotonic()
        start = time.monotonic()
        health = server["http"].get("/healthz", timeout=1.0)
        assert health.status_code == 200 and time.monotonic() - start < 1.0
        assert server["http"].post(SCORE, json=world["body"]).status_code == 200
        late = [s for s in idle if _seconds_until_closed(s, opened) >= HEADER_TIMEOUT + SLACK]
        assert not late, f"{len(late)} of 100 idle connections outlived the header deadline"


def test_score_requests_beyond_the_limit_get_a_quick_503(server, world) -> None:
    """With `--max-concurrency 1` and one score request in flight (its body half sent), the next gets 503
    at once while `/healthz` answers; once the held request's body completes it scores normally."""
    body = json.dumps(world["body"]).encode()
    http = server["http"]
    with _connect(server["port"]) as held:
        held.sendall(_score_head(len(body)) + body[: len(body) // 2])
        deadline, busy = time.monotonic() + 2.0, None
        while time.monotonic() < deadline:  # until the held request has reached the app
            start = time.monotonic()
            busy = http.post(SCORE, content=body, headers={"content-type": "application/json"}, timeout=1.0)
            if busy.status_code == 503:
                break
            time.sleep(0.05)
        assert busy is not None and busy.status_code == 503, busy and busy.text
        assert time.monotonic() - start < 1.0
        assert busy.headers["retry-after"] == "1" and busy.json()["detail"].startswith("busy: 1 score requests")
        assert http.get("/healthz", timeout=1.0).status_code == 200
        held.sendall(body[len(body) // 2 :])
        assert held.recv(65536).startswith(b"HTTP/1.1 200")
    assert http.post(SCORE, json=world["body"]).status_code == 200


@pytest.mark.parametrize(
    ("content_type", "status"),
    [("text/plain", 415), ("application/x-www-form-urlencoded", 415), ("application/json; charset=latin-1", 415),
     ("application/json", 200), ("Application/JSON; charset=UTF-8", 200), ("application/vnd.unictr+json", 200),
     (None, 200)],
)
def test_json_content_type(client, world, content_type, status) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = client.post(SCORE, content=json.dumps(world["body"]), headers=headers)
    assert response.status_code == status, response.text
    if status == 415:
        assert response.json()["detail"].startswith("content-type: ")


@pytest.mark.parametrize(
    ("request_time", "timestamp"), [(None, -(2**63)), (2**63 - 1, -1)], ids=["min-timestamp", "max-request-time"]
)
def test_event_age_beyond_int64_is_422(client, world, request_time, timestamp) -> None:
    """Before: the age wrapped around int64 and the encoder's DataError answered 500 (when the event was among
    the newest `max_len` kept, as here: the user's sequence is cut to two events)."""
    body = copy.deepcopy(world["body"])
    body["request_time_ms"] = request_time or body["request_time_ms"]
    i = max(i for i, u in enumerate(body["users"]) if len(u["sequence"]["timestamps_ms"]) > 1)
    sequence = body["users"][i]["sequence"]
    sequence.update({name: events[:2] for name, events in sequence.items()})
    sequence["timestamps_ms"][1] = timestamp
    response = client.post(SCORE, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(f"users[{i}].sequence.timestamps_ms[1]: {timestamp} is more than")


def test_data_errors_of_the_shared_encoder_are_422(client, world, monkeypatch) -> None:
    """A rule of the encoder the reader and the server share (a DataError) answers 422 with its message."""
    def refuse(*_: object) -> None:
        raise DataError("request: column 'seq_ts' is not sorted")

    monkeypatch.setattr("unictr.serving.encoding.pad_sequences", refuse)
    response = client.post(SCORE, json=world["body"])
    assert (response.status_code, response.json()["detail"]) == (422, "request: column 'seq_ts' is not sorted")


def test_score_body_has_an_openapi_schema(client) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/surfaces/{surface}/score"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert "$ref" not in json.dumps(schema)  # stands alone
    assert schema["required"] == ["users"]
    assert set(schema["properties"]) == {"request_time_ms", "users", "candidates", "candidate_columns"}
    user = schema["properties"]["users"]["items"]
    assert user["properties"]["sequence"]["required"] == ["items", "actions", "timestamps_ms"]
    request_time = schema["properties"]["request_time_ms"]
    assert (request_time["type"], request_time["minimum"], request_time["maximum"]) == ("integer", -(2**63), 2**63 - 1)


def test_serve_limit_flags_reach_serve_spec(tmp_path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr("unictr.serving.app.serve", lambda registry, spec: calls.append(spec))
    args = ["--max-connections", "50", "--header-timeout", "1.5", "--body-timeout", "4", "--keepalive-timeout", "2",
            "--max-concurrency", "7"]  # fmt: skip
    result = CliRunner().invoke(app, ["serve", "--registry", str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    spec = calls.pop()
    assert (spec.max_connections, spec.header_timeout, spec.body_timeout, spec.keepalive_timeout,
            spec.max_concurrency) == (50, 1.5, 4.0, 2.0, 7)  # fmt: skip
    result = CliRunner().invoke(app, ["serve", "--registry", str(tmp_path), "--body-timeout", "0"])
    assert result.exit_code != 0 and "--body-timeout: Input should be greater than 0" in result.output
