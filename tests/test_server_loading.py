"""Model loading that cannot stall: each surface and role loads on its own, a version that fails to load
(whatever the exception) leaves the last good one serving, and `/readyz`, `/v1/models` and `/metrics`
say which version each role serves against the one the registry names."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from tests.fixtures import (
    SURFACE,
    derive_export,
    garbage_weights,
    loading_metrics,
    point_at,
    rehash,
    same_time_table,
    small_config,
    table_to_request,
    train_small_run,
    truncate_weights,
    wait_for,
)
from unictr.checkpoint import MODEL_FILE
from unictr.config import ServeSpec
from unictr.export.job import export_surface
from unictr.serving.app import create_app
from unictr.serving.registry import Registry

OTHER = "home_feed"  # a second surface, which must keep following the registry while `search` is broken


@pytest.fixture(scope="module")
def exports(sim_config, tmp_path_factory) -> dict:
    """Two surfaces' exports of one tiny run (v1) and, for each, one with other scores (v2), and requests."""
    cfg = small_config(sim_config)
    root = tmp_path_factory.mktemp("loading")
    _, run = train_small_run(cfg, root)
    table, now = same_time_table(cfg, 40, seed=7)
    out: dict = {}
    for surface in (SURFACE, OTHER):
        v1 = root / f"{surface}_v1"
        export_surface(run, surface, v1)
        v2 = derive_export(v1, root / f"{surface}_v2", lambda w: w.__setitem__("calibration.bias",
                                                                               w["calibration.bias"] + 0.5))
        out[surface] = {"v1": v1, "v2": v2, "request": table_to_request(table, cfg, surface, now)}
    return out


@pytest.fixture
def registry(exports, tmp_path) -> Registry:
    """A fresh registry: v0001 and v0002 of both surfaces published, v0001 live, v0003 a copy of v0001."""
    reg = Registry(tmp_path / "registry")
    for surface in (SURFACE, OTHER):
        for name in ("v1", "v2", "v1"):
            reg.publish(surface, exports[surface][name])
        assert reg.promote(surface, "v0001", force=True).promoted
    return reg


def _client(registry: Registry) -> TestClient:
    return TestClient(create_app(registry.root, ServeSpec(threads=None, poll_seconds=0.05)))


def _answers(client: TestClient, exports: dict, surface: str) -> str:
    """The version that answers a score request of `surface` (the request must succeed)."""
    response = client.post(f"/v1/surfaces/{surface}/score", json=exports[surface]["request"])
    assert response.status_code == 200, response.text
    return response.json()["model_version"]


def _role(client: TestClient, surface: str, role: str) -> dict:
    return client.get("/v1/models").json()["surfaces"][surface]["roles"][role]


def test_corrupt_shadow_never_blocks_live_changes(registry, exports) -> None:
    """A shadow whose weights fail their checksum: promote and rollback of that surface's live version
    still take effect, the failure is loaded once (not every poll), and /readyz, /v1/models and /metrics
    say the shadow is not served while the server stays ready."""
    truncate_weights(registry, SURFACE, "v0003")
    with _client(registry) as client:
        point_at(registry, SURFACE, shadow="v0003")
        client.app.state.store.refresh()  # the server has seen the broken shadow before the promote
        registry.promote(SURFACE, "v0002", force=True)
        wait_for(lambda: _answers(client, exports, SURFACE) == "v0002")
        shadow = _role(client, SURFACE, "shadow")
        assert shadow["desired"] == "v0003" and shadow["served"] is None and not shadow["ready"]
        assert shadow["last_error"]["version"] == "v0003"
        assert re.search(r"RegistryError: search v0003: search/versions/v0003/model.safetensors: sha256 mismatch",
                         shadow["last_error"]["error"]), shadow
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["reasons"] == []
        assert re.fullmatch(r"search shadow: serves nothing, the registry names v0003; v0003 failed to load at "
                            r"\S+: RegistryError: .*sha256 mismatch.*", ready.json()["shadow_problems"][0])
        for _ in range(5):  # more polls load nothing: the failure is remembered until the pointer or files change
            client.app.state.store.refresh()
        # one load of v0003, one more once the promote wrote the pointer again; v0003 served nowhere
        assert loading_metrics(client.get("/metrics").text, SURFACE) == {
            "failures:shadow": 2, "ready:live": 1, "ready:shadow": 0, "info:live": "v0002"}

        registry.rollback(SURFACE)
        wait_for(lambda: _answers(client, exports, SURFACE) == "v0001")
        for text in (client.get("/v1/models").text, client.get("/readyz").text):
            assert '"/' not in text and str(registry.root) not in text, text  # no absolute path
        assert client.get("/v1/models").json()["surfaces"][SURFACE]["source_run"] == "run"  # a name, not a path
        published = [v for v in client.get("/v1/models").json()["versions"] if v["surface"] == SURFACE]
        assert [(v["version"], v["role"]) for v in published] == [("v0001", "live"), ("v0002", ""),
                                                                  ("v0003", "shadow")], published

        registry.set_shadow(SURFACE, None)
        wait_for(lambda: client.get("/readyz").json()["shadow_problems"] == [])
        assert loading_metrics(client.get("/metrics").text, SURFACE)["ready:shadow"] == 1


def test_foreign_exception_keeps_other_surfaces_reloading(registry, exports) -> None:
    """A live version safetensors itself refuses (`SafetensorError`, none of the project's error types):
    that surface keeps serving its last good version, the other surface still follows its promotions,
    /readyz answers 503 naming the surface, and /metrics reports the served version, not the named one."""
    garbage_weights(registry, SURFACE, "v0003")
    with _client(registry) as client:
        point_at(registry, SURFACE, live="v0003", history=["v0001"])
        client.app.state.store.refresh()  # the reload survives the exception
        assert "SafetensorError" in _role(client, SURFACE, "live")["last_error"]["error"]
        registry.promote(OTHER, "v0002", force=True)
        wait_for(lambda: _answers(client, exports, OTHER) == "v0002")
        assert _answers(client, exports, SURFACE) == "v0001"

        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert re.fullmatch(r"search live: serves v0001, the registry names v0003; v0003 failed to load at \S+: "
                            r"SafetensorError: .+", ready.json()["reasons"][0])
        text = client.get("/metrics").text
        assert loading_metrics(text, SURFACE) == {"failures:live": 1, "ready:live": 0, "ready:shadow": 1,
                                                  "info:live": "v0001"}
        assert loading_metrics(text, OTHER) == {"ready:live": 1, "ready:shadow": 1, "info:live": "v0002"}

        registry.rollback(SURFACE)
        wait_for(lambda: client.get("/readyz").status_code == 200)
        assert _answers(client, exports, SURFACE) == "v0001"


def test_restart_with_broken_live_version(registry, exports) -> None:
    """A server that starts while one surface's live version cannot load serves the other surfaces and
    answers that one 503 naming the version and the error; once the version's files are fixed it loads."""
    garbage_weights(registry, SURFACE, "v0003")
    point_at(registry, SURFACE, live="v0003", history=[])
    with _client(registry) as client:
        assert _answers(client, exports, OTHER) == "v0001"
        response = client.post(f"/v1/surfaces/{SURFACE}/score", json=exports[SURFACE]["request"])
        assert response.status_code == 503
        assert re.fullmatch(r"surface 'search' has no live model loaded: it serves nothing, the registry names "
                            r"v0003; v0003 failed to load at \S+: SafetensorError: .+", response.json()["detail"])
        assert client.get("/healthz").json() == {"status": "ok", "live": {OTHER: "v0001", SURFACE: None}}
        ready = client.get("/readyz")
        assert ready.status_code == 503 and [r.split(":")[0] for r in ready.json()["reasons"]] == ["search live"]
        for _ in range(3):
            client.app.state.store.refresh()
        assert loading_metrics(client.get("/metrics").text, SURFACE)["failures:live"] == 1

        # fixed in place (v0001's weights, every hash rewritten): its files changed, so it is loaded again
        rehash(registry, SURFACE, "v0003", (exports[SURFACE]["v1"] / MODEL_FILE).read_bytes(), publish=True)
        wait_for(lambda: client.get("/readyz").status_code == 200)
        assert _answers(client, exports, SURFACE) == "v0003"


def test_manifest_rewritten_with_matching_hashes_is_refused(registry, exports) -> None:
    """Other weights with the manifest rewritten to match them: every file matches the manifest, but the
    manifest is not the one published (published.json's sha256), so the server refuses the version."""
    rehash(registry, SURFACE, "v0003", (exports[SURFACE]["v2"] / MODEL_FILE).read_bytes(), publish=False)
    with _client(registry) as client:
        point_at(registry, SURFACE, live="v0003", history=["v0001"])
        client.app.state.store.refresh()
        assert _answers(client, exports, SURFACE) == "v0001"
        assert re.fullmatch(r"RegistryError: search v0003: manifest.json is not the published one.*",
                            _role(client, SURFACE, "live")["last_error"]["error"])
        assert client.get("/readyz").status_code == 503
