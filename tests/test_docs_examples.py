"""The request examples in the docs score as written (a drifted example is a failing test, not a 422 for the
reader who pastes it)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import ROOT
from tests.fixtures import small_config, train_small_run
from unictr.config import Config
from unictr.export.job import export_surface
from unictr.serving.scorer import Scorer


def _curl_bodies(doc: Path) -> list[tuple[str, dict]]:
    """(surface, JSON body) of every `curl ... /v1/surfaces/S/score ... -d '{...}'` in `doc`."""
    found = re.findall(r"curl [^\n]*/v1/surfaces/(\w+)/score.*?-d '(\{.*?\})'", doc.read_text(), flags=re.S)
    return [(surface, json.loads(body)) for surface, body in found]


def test_the_serving_docs_curl_request_scores(sim_config: Config, tmp_path: Path) -> None:
    examples = _curl_bodies(ROOT / "docs" / "serving.md")
    assert examples, "docs/serving.md holds no curl score example"
    _, run = train_small_run(small_config(sim_config), tmp_path)
    for surface, body in examples:
        export_surface(run, surface, tmp_path / f"export-{surface}")
        result = Scorer.load(tmp_path / f"export-{surface}").score(body)
        assert result.probabilities.shape[0] == len(body["candidates"])
