"""Registry: publish, the promotion gate (finite, calibrated, AUC margin), atomic pointer, rollback, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from tests.fixtures import derive_export, small_config, train_small_run
from unictr.checkpoint import MODEL_FILE, CheckpointError
from unictr.cli import app
from unictr.data.reader import load_surface_split
from unictr.export.artifact import load_export
from unictr.export.job import export_surface
from unictr.gate import GatePolicy
from unictr.model import probabilities
from unictr.serving.registry import POINTER, Registry, RegistryError

SURFACE = "home_feed"


@pytest.fixture(scope="module")
def exports(sim_config, tmp_path_factory):
    """A trained export, eval data whose labels follow it, and derived exports that must fail the gate."""
    cfg = small_config(sim_config)
    root = tmp_path_factory.mktemp("registry")
    data, run = train_small_run(cfg, root)
    good = root / "good"
    export_surface(run, SURFACE, good)

    # eval rows of the surface labelled by the model's own ranking: its AUC is 1, an inverted model's 0
    model = load_export(good).model
    table = pq.read_table(data / "eval")
    table = table.filter(pc.equal(table["surface"], SURFACE))
    b = load_surface_split(data / "eval", model.schema, cfg.data, SURFACE)
    p = probabilities(model, b).numpy()
    for j, task in enumerate(cfg.tasks):
        labels = (p[:, j] > np.median(p[:, j])).astype(np.int64)
        table = table.set_column(table.schema.get_field_index(task.label), task.label, pa.array(labels))
    (root / "ranked" / "eval").mkdir(parents=True)
    pq.write_table(table, root / "ranked" / "eval" / "part-00000.parquet")

    def inverted(w: dict) -> None:  # negates the tower logits: same calibration level, reversed ranking
        for k in [k for k in w if k.startswith("towers.towers.0.heads.")]:
            w[k] = -w[k]
        w["calibration.bias"] = -w["calibration.bias"]

    def overconfident(w: dict) -> None:
        w["calibration.bias"] += 3.0

    def broken(w: dict) -> None:
        w["towers.towers.0.heads.bias"][:] = float("nan")

    return {
        "good": good,
        "eval": root / "ranked",
        "inverted": derive_export(good, root / "inverted", inverted),
        "overconfident": derive_export(good, root / "overconfident", overconfident),
        "broken": derive_export(good, root / "broken", broken),
    }


@pytest.fixture()
def registry(tmp_path) -> Registry:
    return Registry(tmp_path / "registry")


def test_publish_versions_and_refusals(exports, registry, tmp_path) -> None:
    assert registry.publish(SURFACE, exports["good"]) == "v0001"
    assert registry.publish(SURFACE, exports["good"]) == "v0002"
    assert registry.versions(SURFACE) == ["v0001", "v0002"] and registry.pointer(SURFACE).live is None
    with pytest.raises(RegistryError, match="is an export of surface 'home_feed', not 'search'"):
        registry.publish("search", exports["good"])
    with pytest.raises(RegistryError, match="invalid surface name"):
        registry.publish("../evil", exports["good"])
    tampered = tmp_path / "tampered"
    derive_export(exports["good"], tampered, lambda w: None)
    weights = load_file(str(tampered / MODEL_FILE))
    weights["calibration.bias"] += 1
    save_file(weights, str(tampered / MODEL_FILE))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        registry.publish(SURFACE, tampered)
    assert registry.versions(SURFACE) == ["v0001", "v0002"]


def test_gate_needs_eval_data_or_force(exports, registry) -> None:
    registry.publish(SURFACE, exports["good"])
    report = registry.promote(SURFACE)
    assert not report.passed and not report.promoted and registry.pointer(SURFACE).live is None
    assert [c["name"] for c in report.checks if not c["passed"]] == ["eval_data"]
    forced = registry.promote(SURFACE, force=True)
    assert forced.promoted and forced.forced and registry.pointer(SURFACE).live == "v0001"
    kept = json.loads(Path(forced.path).read_text())
    assert kept["forced"] and kept["promoted"] and kept["candidate"] == "v0001"


def test_gate_refuses_worse_miscalibrated_or_broken(exports, registry) -> None:
    registry.publish(SURFACE, exports["good"])
    first = registry.promote(SURFACE, eval_data=exports["eval"])
    assert first.passed and first.promoted and first.metrics["v0001"]["click"]["auc"] == pytest.approx(1.0)

    for name, failing in (("inverted", "auc_click"), ("overconfident", "calibrated"), ("broken", "finite")):
        version = registry.publish(SURFACE, exports[name])
        report = registry.promote(SURFACE, version, eval_data=exports["eval"])
        failed = {c["name"] for c in report.checks if not c["passed"]}
        assert failing in failed and not report.promoted, (name, report.checks)
        assert registry.pointer(SURFACE).live == "v0001"
    lenient = registry.promote(SURFACE, "v0002", eval_data=exports["eval"], policy=GatePolicy(auc_margin=1.0))
    assert lenient.promoted and registry.pointer(SURFACE).live == "v0002"


def test_promote_and_rollback_move_the_pointer(exports, registry) -> None:
    for _ in range(3):
        registry.publish(SURFACE, exports["good"])
    registry.promote(SURFACE, "v0001", force=True)
    registry.promote(SURFACE, "v0003", force=True)
    assert registry.pointer(SURFACE).live == "v0003" and registry.pointer(SURFACE).history == ("v0001",)
    with pytest.raises(RegistryError, match="v0003 is already live"):
        registry.promote(SURFACE, "v0003")
    assert registry.rollback(SURFACE).live == "v0001"
    with pytest.raises(RegistryError, match="no previous version to roll back to"):
        registry.rollback(SURFACE)
    assert not list((registry.root / SURFACE).glob(".*.tmp"))  # the pointer was written via temp + rename
    assert json.loads((registry.root / SURFACE / POINTER).read_text())["live"] == "v0001"
    assert len(list((registry.root / SURFACE / "reports").glob("*.json"))) == 3


def test_cli_flow(exports, registry) -> None:
    runner = CliRunner()
    reg = ["--registry", str(registry.root)]

    def run(*args: str) -> str:
        result = runner.invoke(app, ["registry", *args])
        assert result.exit_code == 0, result.output
        return result.output

    assert "published home_feed v0001" in run("publish", *reg, "--surface", SURFACE, "--model", str(exports["good"]))
    run("publish", *reg, "--surface", SURFACE, "--model", str(exports["overconfident"]))
    assert "v0001 is live" in run("promote", *reg, "--surface", SURFACE, "--version", "v0001",
                                  "--eval-data", str(exports["eval"]))
    refused = runner.invoke(app, ["registry", "promote", *reg, "--surface", SURFACE, "--eval-data",
                                  str(exports["eval"])])
    assert refused.exit_code == 2 and "v0002 not promoted" in refused.output and "calibrated" in refused.output
    assert "shadow v0002" in run("promote", *reg, "--surface", SURFACE, "--shadow")
    listing = run("list", *reg)
    assert "v0001" in listing and "live" in listing and "shadow" in listing
    assert "shadow None" in run("rollback", *reg, "--surface", SURFACE, "--shadow")
    bad = runner.invoke(app, ["registry", "rollback", *reg, "--surface", SURFACE])
    assert bad.exit_code == 2 and "no previous version" in bad.output
