"""`unictr experiment stage`: the stage-1 config cut, the stages' parsing, and a tiny run's report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import random_table
from tests.fixtures import small_config
from unictr.checkpoint import load_model
from unictr.cli import app
from unictr.config import Config, load_config
from unictr.experiment.stage import parse_stages, restrict_config
from unictr.experiment.stage_report import stage_markdown

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def cfg() -> Config:
    return small_config(load_config(ROOT / "configs" / "sim.yaml"))


def test_restrict_config_keeps_the_groups_surfaces_tasks_and_tower_features(cfg: Config) -> None:
    cut = restrict_config(cfg, ["search", "home_feed"])
    assert cut.surface_names == ["home_feed", "search"]  # the config's order
    assert "context_item_id" not in [f.name for f in cut.features]  # related's tower feature
    assert [f.towers for f in cut.features if f.name == "query_ad_match"] == [["search"]]
    assert {t.name: t.surfaces for t in cut.tasks} == {"click": None, "save": ["home_feed"], "long_click": None}
    assert [t.name for t in restrict_config(cfg, ["search"]).tasks] == ["click", "long_click"]  # save: not there


def test_parse_stages_refuses_bad_groups(cfg: Config) -> None:
    assert parse_stages("home_feed, search; related", cfg) == [["home_feed", "search"], ["related"]]
    with pytest.raises(ValueError, match="each surface of the config once"):
        parse_stages("home_feed;related", cfg)
    with pytest.raises(ValueError, match="two non-empty groups"):
        parse_stages("home_feed,search,related", cfg)


@pytest.fixture(scope="module")
def staged(cfg: Config, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("stage")
    for split, seed in (("train", 0), ("eval", 1)):
        (root / "data" / split).mkdir(parents=True)
        pq.write_table(random_table(cfg, 80, seed=seed), root / "data" / split / "part-00000.parquet")
    cfg_path = root / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json") | {"train": cfg.train.model_dump() | {"epochs": 2}}))
    out = root / "report"
    args = ["experiment", "stage", "--config", str(cfg_path), "--data", str(root / "data"), "--out", str(out),
            "--stages", "home_feed,search;related", "--seeds", "0", "--bootstrap", "20", "--latency-repeats", "3",
            "--stage2-epochs", "1", "--stage2-replay", "0.5", "--keep-runs"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return {"out": out, "json": json.loads((out / "report.json").read_text()), "output": result.output}


def test_report_compares_each_view(staged: dict) -> None:
    r = staged["json"]
    assert r["stages"] == [["home_feed", "search"], ["related"]] and r["stage2_epochs"] == 1
    assert r["stage2_replay"] == 0.5
    views = r["views"]
    assert list(views["old"]["arms"]) == ["stage1", "staged", "scratch"]
    assert set(views["old"]["arms"]["stage1"]["surfaces"]) == {"home_feed", "search"}
    assert list(views["new"]["arms"]) == ["staged", "scratch", "separate"]
    assert set(views["new"]["arms"]["separate"]["surfaces"]) == {"related"}
    for view, pairs in (("old", ["staged-stage1", "staged-scratch"]), ("new", ["staged-separate", "staged-scratch"])):
        assert list(views[view]["diffs"]) == pairs
        for pair in pairs:  # every surface × task cell of the view has a point difference inside its interval
            d, ci = views[view]["diffs"][pair]["diff"], views[view]["diffs"][pair]["ci"]
            assert set(d) == set(views[view]["arms"]["staged"]["surfaces"])
            for s, tasks in d.items():
                for t, v in tasks.items():
                    assert ci[s][t][0] - 0.05 <= v <= ci[s][t][1] + 0.05
    assert views["all"]["diffs"]["staged-scratch"]["diff"]["overall"]["click"] is not None
    assert set(r["train_seconds"]) == {"stage1", "staged", "scratch", "separate"}
    for s, c in r["cost"].items():
        assert c["params"] > 0 and c["flops_per_candidate"] > 0 and 0 < c["p50_ms"] <= c["p99_ms"], s
    assert set(r["acceptance"]["checks"]) >= {"related: staged - separate >= 0", "search: staged - stage1 >= -0.002"}
    md = (staged["out"] / "report.md").read_text()
    assert "## Old surfaces (home_feed, search)" in md and "## Cost profile" in md and "staged − stage1" in md


def test_seed_intervals_only_with_seeds_to_resample(staged: dict) -> None:
    """One seed: no interval over seeds (it would repeat the other). Given one, report.md shows it beside."""
    r = staged["json"]
    assert all("ci_seeds" not in d for v in r["views"].values() for d in v["diffs"].values())
    assert "seeds too" not in (staged["out"] / "report.md").read_text()
    pair = r["views"]["new"]["diffs"]["staged-scratch"]
    pair["ci_seeds"] = {s: {t: [-0.25, 0.125] for t in tasks} for s, tasks in pair["ci"].items()}
    md = stage_markdown(r)
    assert "| staged − scratch [95% CI] | staged − scratch [95% CI, seeds too] |" in md
    assert "[-0.2500, +0.1250]" in md


def test_stage2_was_warm_started_from_stage1(staged: dict) -> None:
    runs = staged["out"] / "runs" / "seed0"
    _, manifest = load_model(runs / "stage2")
    ws = manifest["warm_start"]
    assert ws["from"] == str(runs / "stage1")
    assert any(n.startswith("towers.towers.2.") for n in ws["new"]) and "mmoe.w2" in ws["loaded"]
    # stage 2 replays half of the old surfaces' requests each epoch
    assert manifest["config"]["train"]["surface_sample"] == {"home_feed": 0.5, "search": 0.5}
    stage1, _ = load_model(runs / "stage1")
    assert stage1.cfg.surface_names == ["home_feed", "search"]
    # the stage-1 split holds only the first group's rows
    table = pq.read_table(runs.parent / "data" / "stage1" / "train")
    assert set(np.unique(table["surface"].to_numpy(zero_copy_only=False))) == {"home_feed", "search"}
