"""The rollout runbook (docs/rollout.md) end to end, with the real CLI, registry and server process.

Stage 1 is a run on two surfaces (home_feed, search), stage 2 a run on three (related added; here a
fresh small training, warm start is not what this tests). Stage 1's exports go live; then, while a
client keeps scoring the old surfaces, stage 2's exports of them go to shadow, through the gate and
live, the new surface is published and promoted, and one old surface is rolled back. No request to an
old surface fails, and every answer comes from the version that was live when it was scored.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from tests.fixtures import loading_metrics, same_time_table, small_config, table_to_request, train_small_run, wait_for
from tests.test_http_limits import wait_until_up
from unictr.cli import app
from unictr.config import Config
from unictr.serving.process import server_process
from unictr.serving.registry import Registry
from unictr.serving.scorer import Scorer

OLD, NEW = ("home_feed", "search"), "related"
# Random labels make every AUC noise around 0.5 and the calibration ratio loose: the gate's bounds are
# widened so that it passes, while its checks (integrity, finite, calibrated, AUC against live) still run.
GATE = ("--auc-margin", "0.5", "--calibration-low", "0.2", "--calibration-high", "5")


def only_surfaces(cfg: Config, names: tuple[str, ...]) -> Config:
    """`cfg` restricted to the surfaces `names`: their tower features, their tasks (a run on those rows only)."""
    raw = cfg.model_dump(mode="json")
    raw["surfaces"] = [s for s in raw["surfaces"] if s["name"] in names]
    raw["features"] = [{**f, "towers": [t for t in f["towers"] if t in names] or None} if f["towers"] else f
                       for f in raw["features"] if not f["towers"] or set(f["towers"]) & set(names)]
    raw["tasks"] = [{**t, "surfaces": [s for s in t["surfaces"] if s in names]} if t["surfaces"] else t
                    for t in raw["tasks"] if not t["surfaces"] or set(t["surfaces"]) & set(names)]
    return Config.model_validate(raw)


def cli(*args: str | Path) -> str:
    """Run `unictr ARGS` in-process; its output (fails the test on a non-zero exit)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def stages(sim_config, tmp_path_factory) -> dict:
    """Stage-1 (2 surfaces) and stage-2 (3 surfaces) runs, every surface exported with `unictr export`."""
    root = tmp_path_factory.mktemp("rollout")
    cfg2 = small_config(sim_config)
    cfg1 = only_surfaces(cfg2, OLD)
    assert cfg1.surface_names == list(OLD) and "context_item_id" not in [f.name for f in cfg1.features]
    out: dict = {"root": root, "cfg": cfg2}
    for stage, cfg, surfaces in (("stage1", cfg1, OLD), ("stage2", cfg2, (*OLD, NEW))):
        data, run = train_small_run(cfg, root / stage)
        out[stage] = {"data": data}
        for s in surfaces:
            out[stage][s] = root / "exports" / stage / s
            cli("export", "--run", run, "--surface", s, "--out", out[stage][s])
    table, now = same_time_table(cfg2, 24, seed=5)
    out["requests"] = {s: json.dumps(table_to_request(table, cfg2, s, now)) for s in (*OLD, NEW)}
    return out


class Traffic:
    """Client threads scoring the old surfaces without pause; every answer and every failure recorded."""

    def __init__(self, base: str, bodies: dict[str, str]) -> None:
        self.base, self.bodies = base, bodies
        self.answers: list[tuple[str, float, float, str, list]] = []  # (surface, sent, answered, version, preds)
        self.failures: list[str] = []
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(s,)) for s in OLD]

    def _loop(self, surface: str) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as c:
            for _ in range(100_000):  # bounded; ends when the rollout is done
                if self.done.is_set():
                    return
                sent = time.monotonic()
                try:
                    r = c.post(f"/v1/surfaces/{surface}/score", content=self.bodies[surface])
                    out = r.json()
                    scores = [v for p in out.get("predictions", []) for v in p.values()]
                    if r.status_code != 200 or not scores or not all(math.isfinite(v) for v in scores):
                        self.failures.append(f"{surface} {r.status_code}: {r.text[:200]}")
                        continue
                    self.answers.append((surface, sent, time.monotonic(), out["model_version"], out["predictions"]))
                except Exception as e:  # any failure counts
                    self.failures.append(f"{surface}: {e!r}")

    def versions_since(self, surface: str, t: float) -> set[str]:
        return {v for s, sent, _, v, _ in self.answers if s == surface and sent >= t}


def shadow_count(metrics_text: str, surface: str) -> float:
    """Requests of `surface` that were also scored by its shadow (`unictr_shadow_abs_diff` observations)."""
    return sum(s.value for f in text_string_to_metric_families(metrics_text) for s in f.samples
               if s.name == "unictr_shadow_abs_diff_count" and s.labels["surface"] == surface)


def test_rollout_runbook(stages, tmp_path) -> None:  # long: the runbook's steps in order, each checked
    reg = tmp_path / "registry"
    s1, s2 = stages["stage1"], stages["stage2"]
    for s in OLD:  # stage 1 goes live: publish, then promote through the gate (nothing live to compare with)
        assert "published" in cli("registry", "publish", "--registry", reg, "--surface", s, "--model", s1[s])
        cli("registry", "promote", "--registry", reg, "--surface", s, "--eval-data", s1["data"], *GATE)
    registry = Registry(reg)
    # [version, live from, live until] per surface: from before the registry names it until another is served
    windows = {s: [["v0001", -math.inf, math.inf]] for s in OLD}
    with server_process(reg, tmp_path / "server.log", 1, "--poll-seconds", "0.1") as (server, port), \
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        wait_until_up(server, http)
        wait_for(lambda: http.get("/readyz").status_code == 200)
        traffic = Traffic(f"http://127.0.0.1:{port}", stages["requests"])

        def live(surface: str) -> str | None:
            return http.get("/healthz").json()["live"].get(surface)

        def switch(surface: str, version: str, *command: str | Path) -> None:
            """Run a registry command that makes `version` live; wait until the server serves it."""
            start = time.monotonic()
            cli("registry", *command)
            wait_for(lambda: live(surface) == version)
            served = time.monotonic()
            windows[surface][-1][2] = served
            windows[surface].append([version, start, math.inf])
            wait_for(lambda: version in traffic.versions_since(surface, served))

        for t in traffic.threads:
            t.start()
        try:
            wait_for(lambda: all(traffic.versions_since(s, 0) == {"v0001"} for s in OLD))
            # stage 2, old surfaces: publish (nothing changes), shadow (scored beside live, not served)
            shadow_from = time.monotonic()
            for s in OLD:
                cli("registry", "publish", "--registry", reg, "--surface", s, "--model", s2[s])
                cli("registry", "promote", "--registry", reg, "--surface", s, "--version", "v0002", "--shadow")
            for s in OLD:
                wait_for(lambda s=s: http.get("/v1/models").json()["surfaces"][s]["shadow"] == "v0002")
                wait_for(lambda s=s: shadow_count(http.get("/metrics").text, s) >= 3)
                assert live(s) == "v0001" and traffic.versions_since(s, shadow_from) == {"v0001"}
                assert loading_metrics(http.get("/metrics").text, s)["info:shadow"] == "v0002"
            # the gate compares v0002 with live v0001 on stage 2's eval rows, then the pointer moves
            for s in OLD:
                switch(s, "v0002", "promote", "--registry", reg, "--surface", s, "--eval-data", s2["data"], *GATE)
                report = json.loads(next((reg / s / "reports").glob("*-promote-v0002.json")).read_text())
                assert report["current"] == "v0001" and report["promoted"] and not report["forced"]
                assert {"integrity", "finite", "calibrated", "auc_click"} <= {c["name"] for c in report["checks"]}
                assert registry.pointer(s).shadow is None  # the promoted shadow stops being one
            # the new surface: unknown until published, 503 until promoted, then it answers
            post_new = lambda: http.post(f"/v1/surfaces/{NEW}/score", content=stages["requests"][NEW])  # noqa: E731
            assert post_new().status_code == 404 and f"unknown surface '{NEW}'" in post_new().text
            cli("registry", "publish", "--registry", reg, "--surface", NEW, "--model", s2[NEW])
            wait_for(lambda: post_new().status_code == 503)
            cli("registry", "promote", "--registry", reg, "--surface", NEW, "--eval-data", s2["data"], *GATE)
            wait_for(lambda: live(NEW) == "v0001")
            answer = post_new()
            assert answer.status_code == 200 and answer.json()["model_version"] == "v0001"
            new_scores = np.array([list(p.values()) for p in answer.json()["predictions"]])
            assert new_scores.size and np.isfinite(new_scores).all()
            refused = CliRunner().invoke(app, ["registry", "rollback", "--registry", str(reg), "--surface", NEW])
            assert refused.exit_code == 2 and "no previous version to roll back to" in refused.output
            # roll back one old surface: its previous version answers again (it is still loaded)
            switch("search", "v0001", "rollback", "--registry", reg, "--surface", "search")
            assert registry.pointer("search").live == "v0001" and registry.pointer("search").history == ()
            assert loading_metrics(http.get("/metrics").text, "search")["info:live"] == "v0001"
            assert live("home_feed") == "v0002"
            roles = {(r["surface"], r["version"]): r["role"] for r in registry.listing()}
            assert roles == {("home_feed", "v0001"): "previous", ("home_feed", "v0002"): "live",
                             ("search", "v0001"): "live", ("search", "v0002"): "", (NEW, "v0001"): "live"}
            assert "refused" not in cli("registry", "list", "--registry", reg)
        finally:
            traffic.done.set()
            for t in traffic.threads:
                t.join(timeout=30)
        assert server.poll() is None
    assert not traffic.failures, traffic.failures[:5]
    _check_answers(traffic, windows, registry, stages["requests"])


def _check_answers(traffic: Traffic, windows: dict, registry: Registry, bodies: dict[str, str]) -> None:
    """Every answer named a version live while it was in flight, and equals that version's own scores."""
    stale = [(s, v, sent, got) for s, sent, got, v, _ in traffic.answers
             if not any(w[0] == v and sent <= w[2] and got >= w[1] for w in windows[s])]
    assert not stale, stale[:5]
    assert {v for s, *_, v, _ in traffic.answers if s == "home_feed"} == {"v0001", "v0002"}
    expected = {}
    for s, _, _, v, preds in traffic.answers:
        if (s, v) not in expected:
            expected[s, v] = Scorer.load(registry.version_dir(s, v), version=v).score(bodies[s])
        want = expected[s, v]
        got = np.array([[p[t] for t in want.tasks] for p in preds], dtype=np.float32)
        np.testing.assert_allclose(got, want.probabilities, rtol=0, atol=1e-6)
    print(f"rollout: {len(traffic.answers)} answers on {OLD}, 0 failures")
