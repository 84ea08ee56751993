"""`unictr quickstart` ends with a served model: its exports published and promoted (gated on the eval split)
in OUT/registry, and an example request that the live version scores, with the commands printed."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from unictr.cli import app
from unictr.serving.registry import Registry
from unictr.serving.scorer import Scorer


def test_quickstart_publishes_promotes_and_writes_a_request(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    done = CliRunner().invoke(app, ["quickstart", "--out", str(out), "--rows", "30000", "--threads", "1",
                                    "--set", "train.epochs=2", "--set", "train.batch_size=256"])
    assert done.exit_code == 0, done.output
    registry = Registry(out / "registry")
    assert registry.surfaces() == ["home_feed", "related", "search"]
    for surface in registry.surfaces():
        assert registry.pointer(surface).live is not None, f"{surface} not promoted:\n{done.output}"
    assert f"unictr serve --registry {out / 'registry'}" in done.output
    assert f"-d @{out / 'request-home_feed.json'}" in done.output
    request = json.loads((out / "request-home_feed.json").read_text())
    live = registry.verified_dir("home_feed", registry.pointer("home_feed").live)
    result = Scorer.load(live).score(request)
    assert len(request["users"]) == 1 and result.probabilities.shape[0] == len(request["candidates"]) > 0
