"""`unictr data kuairand`, `unictr experiment unify` and the cross-directory scoring contract, on a small
sample of the real KuaiRand slice (skipped when ../shared/data/kuairand is absent)."""

from __future__ import annotations

import builtins
import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from unictr.checkpoint import current_dir, load_model
from unictr.cli import app
from unictr.config import config_from_dict, load_config
from unictr.data.reader import load_split
from unictr.experiment.arms import ArmSkipped
from unictr.experiment.baselines import train_lightgbm
from unictr.experiment.run import DEFAULT_ARMS, run_experiment
from unictr.export.prune import prune_config
from unictr.metrics import bootstrap_auc_diff
from unictr.train.evaluate import predict

from .conftest import ROOT, kuairand_dir, kuairand_missing

KUAIRAND = kuairand_dir()
LOG = KUAIRAND / "log_standard_4_25_to_4_30_pure.csv"
USERS = KUAIRAND / "user_features_pure.csv"
VIDEOS = KUAIRAND / "video_features_basic_pure.csv"
HISTORY = KUAIRAND / "history_before_4_25.parquet"
MISSING = kuairand_missing((LOG, USERS, VIDEOS, HISTORY))
HAVE_DATA = MISSING is None
needs_data = pytest.mark.skipif(not HAVE_DATA, reason=MISSING or "")
SURFACES = ["tab1", "tab0", "tab4", "tab6", "tab2", "other"]
TASKS = ["is_click", "long_view", "is_like"]
runner = CliRunner()


def tiny_config_dict() -> dict:
    """configs/kuairand.yaml shrunk to seconds of training: narrow layers, short sequences, a few epochs."""
    raw = yaml.safe_load((ROOT / "configs" / "kuairand.yaml").read_text())
    raw["sequence"]["max_len"] = 8
    raw["model"] |= {
        "embedding_dim": 4,
        "dense_hidden": 4,
        "sequence": raw["model"]["sequence"] | {"heads": 1, "last_k": 1},
        "mmoe": {"enabled": True, "experts": 2, "expert_dim": 8, "expert_hidden": 8},
        "dcn": {"layers": 1, "rank": 4, "out_dim": 8},
        "tower": {"per_surface": True, "hidden": [8]},
    }
    # ~3k rows, ~12 steps an epoch: 4 epochs at a high LR learn the surfaces' click rates and beat a constant
    # in log loss (measured over seeds 0-3); within a surface the neural arms stay near chance at this size.
    # No embedding decay (at this LR it would wipe the tables).
    raw["train"] |= {"epochs": 4, "batch_size": 256, "lr": 0.01, "embedding_weight_decay": 0.0, "threads": 1,
                     "warmup_steps": 2, "device": "cpu"}  # fmt: skip
    return raw


def _sample_log(path: Path, step: int, offset: int = 0, keep: slice | None = None) -> Path:
    """Every `step`-th raw log row (spread over all six days), optionally only the `keep` slice of those."""
    with LOG.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for i, r in enumerate(reader) if i % step == offset]
        fields = reader.fieldnames
    with path.open("w", newline="") as g:
        writer = csv.DictWriter(g, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows[keep] if keep else rows)
    return path


def _convert(out: Path, eval_from: str, *logs: Path) -> Path:
    args = ["data", "kuairand", "--logs", *map(str, logs), "--users", str(USERS), "--videos", str(VIDEOS),
            "--history", str(HISTORY), "--eval-from", eval_from, "--max-seq-len", "8", "--out", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    if not HAVE_DATA:
        pytest.skip(MISSING or "")
    root = tmp_path_factory.mktemp("unify")
    log = _sample_log(root / "log.csv", step=25)
    cfg_path = root / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config_dict()))
    return {"root": root, "log": log, "config": cfg_path, "data": _convert(root / "data", "2022-04-30", log)}


@pytest.fixture(scope="module")
def report(tiny) -> dict:
    out = tiny["root"] / "report"
    args = ["experiment", "unify", "--config", str(tiny["config"]), "--data", str(tiny["data"]), "--out", str(out),
            "--seeds", "0,1", "--bootstrap", "50", "--keep-runs"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return {"out": out, "json": json.loads((out / "report.json").read_text()), "output": result.output}


# ------------------------------------------------------------------------------------------ experiment


@needs_data
def test_report_follows_the_contract(report):
    rep, out = report["json"], report["out"]
    assert set(rep["arms"]) == set(DEFAULT_ARMS)
    for arm in DEFAULT_ARMS:
        a = rep["arms"][arm]
        assert set(a["surfaces"]) == set(SURFACES)
        for s in SURFACES:
            assert set(a["surfaces"][s]) == set(TASKS)
            for block in a["surfaces"][s].values():
                assert {"auc", "logloss", "ne", "calibration_ratio", "n"} <= set(block)
        assert a["train_seconds"] > 0 and a["params"] > 0
        assert set(a["per_seed"]) == {"0", "1"}
        seeds = [a["per_seed"][k]["overall"]["is_click"]["auc"] for k in ("0", "1")]
        assert a["overall"]["is_click"]["auc"] == pytest.approx(np.mean(seeds))
    n_eval = pq.ParquetFile(report["out"].parent / "data" / "eval" / "part-00000.parquet").metadata.num_rows
    assert sum(rep["arms"]["unified"]["surfaces"][s]["is_click"]["n"] for s in SURFACES) == n_eval
    for f in ("report.md", "report.json", "auc.png"):
        assert (out / f).stat().st_size > 0
    md = (out / "report.md").read_text()
    assert "unified − separate" in md and "Machine:" in md and "unictr experiment unify" in md
    assert "tab1" in report["output"]  # the summary table


@needs_data
def test_bootstrap_intervals_cover_every_surface_and_task(report):
    rep = report["json"]
    assert set(rep["auc_diff_ci"]) == set(SURFACES)
    for s in SURFACES:
        assert set(rep["auc_diff_ci"][s]) == set(TASKS)
        for task, ci in rep["auc_diff_ci"][s].items():
            assert len(ci) == 2
            if None not in ci:
                assert ci[0] <= ci[1]
                d = rep["auc_diff"][s][task]
                want = (
                    rep["arms"]["unified"]["surfaces"][s][task]["auc"]
                    - rep["arms"]["separate"]["surfaces"][s][task]["auc"]
                )
                assert d == pytest.approx(want)
    assert set(rep["auc_diff_ci_vs_lightgbm"]["overall"]) == set(TASKS)
    # two seeds per arm: the interval that resamples them too is there for every cell, and in report.md
    assert {s: set(v) for s, v in rep["auc_diff_ci_seeds"].items()} == {s: set(TASKS) for s in SURFACES}
    assert "unified − separate [95% CI, seeds too]" in (report["out"] / "report.md").read_text()


@needs_data
def test_separate_arm_trains_one_model_per_surface_on_its_rows(report, tiny):
    train = pq.read_table(tiny["data"] / "train")
    counts = {s: train["surface"].to_pylist().count(s) for s in SURFACES}
    sep = report["json"]["arms"]["separate"]
    models = sep["per_seed"]["0"]["models"]
    assert set(models) == set(SURFACES)
    assert sum(m["params"] for m in models.values()) == sep["params"]
    for s in SURFACES:
        assert models[s]["train_rows"] == counts[s]
        run = report["out"] / "runs" / "separate" / "seed0"
        manifest = json.loads((current_dir(run / "runs" / s) / "manifest.json").read_text())
        assert [x["name"] for x in manifest["config"]["surfaces"]] == [s]
        rows = pq.read_table(run / "data" / s / "train")
        assert set(rows["surface"].to_pylist()) == {s} and rows.num_rows == counts[s]
    unified = report["json"]["arms"]["unified"]
    assert unified["per_seed"]["0"]["models"]["all"]["train_rows"] == train.num_rows
    assert sep["params"] > unified["params"]  # six trunks


@needs_data
def test_lightgbm_arm_scores_every_row(report):
    lgb = report["json"]["arms"]["lightgbm"]
    assert lgb["overall"]["is_click"]["n"] == report["json"]["arms"]["unified"]["overall"]["is_click"]["n"]
    trees = lgb["per_seed"]["0"]["models"]
    assert set(trees) == set(TASKS) and all(m["trees"] > 0 for m in trees.values())


def _surface_prior_auc(data: Path, task: str) -> float:
    """AUC on eval of the trivial model that scores a row by its surface's train rate of `task`."""
    train, ev = pq.read_table(data / "train").to_pydict(), pq.read_table(data / "eval").to_pydict()
    y, surface = np.array(train[task]), np.array(train["surface"])
    rate = {s: y[surface == s].mean() for s in set(train["surface"])}
    return roc_auc_score(ev[task], [rate.get(s, y.mean()) for s in ev["surface"]])


@needs_data
def test_arms_beat_trivial_baselines(report, tiny):
    """Surface click rates differ a lot (tab0 ~0.08, tab4 ~0.6), so ranking by the surface's train rate alone
    reaches ~0.64 overall click AUC on the tiny eval split. Every arm must learn at least that, and beat the
    constant eval rate in log loss (NE < 1); LightGBM, strong on little data, must also rank within tab1, where
    the surface prior is useless. Margins hold over seeds 0-3 (seed means: neural 0.65-0.69, LightGBM 0.74)."""
    prior = _surface_prior_auc(tiny["data"], "is_click")
    assert 0.6 < prior < 0.7
    arms = report["json"]["arms"]
    for arm in DEFAULT_ARMS:
        click = arms[arm]["overall"]["is_click"]
        assert click["auc"] > prior - 0.02, (arm, click["auc"], prior)
        assert click["ne"] < 0.97, (arm, click["ne"])
    lgb = arms["lightgbm"]
    assert lgb["overall"]["is_click"]["auc"] > prior + 0.05
    assert lgb["surfaces"]["tab1"]["is_click"]["auc"] > 0.6
    assert lgb["overall"]["long_view"]["auc"] > _surface_prior_auc(tiny["data"], "long_view") + 0.04


@needs_data
def test_missing_lightgbm_skips_the_arm_with_a_message(tiny, monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_lightgbm(name, *args, **kwargs):
        if name == "lightgbm":
            raise ImportError("No module named 'lightgbm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lightgbm)
    cfg = load_config(tiny["config"])
    with pytest.raises(ArmSkipped, match=r"lightgbm arm skipped.*pip install"):
        train_lightgbm(cfg, tiny["data"], tmp_path, None, None, False)
    with pytest.raises(ValueError, match="no arm ran: lightgbm arm skipped"):
        run_experiment(cfg, tiny["data"], tmp_path / "rep", arms=("lightgbm",))


def test_prune_config_for_one_surface_drops_tasks_and_tower_features(sim_config):
    cfg = prune_config(sim_config, "search", keep_shapes=False)
    assert cfg.surface_names == ["search"]
    assert cfg.task_names == ["click", "long_click"]  # save applies to home_feed and related only
    feats = {f.name: f.towers for f in cfg.features}
    assert feats["query_ad_match"] == ["search"] and "context_item_id" not in feats
    assert prune_config(sim_config, "related", keep_shapes=False).task_names == ["click", "save", "long_click"]
    with pytest.raises(ValueError, match="nowhere"):
        prune_config(sim_config, "nowhere", keep_shapes=False)


def test_unknown_arm_fails(sim_config, tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        run_experiment(sim_config, tmp_path, tmp_path / "out", arms=("unified", "ensemble"))


def test_bootstrap_over_seeds_is_the_mean_difference():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    pa = y + rng.normal(0, 1.0, (2, 300))
    pb = y + rng.normal(0, 1.5, (3, 300))
    idx = np.random.default_rng(4).integers(0, 300, size=(40, 300))  # the draws the function makes
    naive = [np.mean([roc_auc_score(y[i], p[i]) for p in pa]) - np.mean([roc_auc_score(y[i], p[i]) for p in pb])
             for i in idx]  # fmt: skip
    got = bootstrap_auc_diff(y, pa, pb, n_boot=40, seed=4)
    np.testing.assert_allclose(got, np.percentile(naive, [2.5, 97.5]), atol=1e-12)
    assert bootstrap_auc_diff(y, pa[0], pb[0], seed=2) == bootstrap_auc_diff(y, pa[:1], pb[:1], seed=2)
    with pytest.raises(ValueError, match="shape"):
        bootstrap_auc_diff(y, pa[:, :10], pb)


# ------------------------------------------------------------------------------------------ contract


@needs_data
def test_cli_converts_several_logs(tiny, tmp_path):
    a = _sample_log(tmp_path / "a.csv", step=25, keep=slice(0, 1500))
    b = _sample_log(tmp_path / "b.csv", step=25, keep=slice(1500, None))
    two = _convert(tmp_path / "two", "2022-04-30", a, b)
    for split in ("train", "eval"):
        got = pq.read_table(two / split).drop_columns(["request_id"])
        want = pq.read_table(tiny["data"] / split).drop_columns(["request_id"])
        assert got.equals(want)
    result = runner.invoke(app, ["data", "kuairand", "--logs", str(a), "--users", str(a), "--videos", str(VIDEOS),
                                 "--eval-from", "2022-04-30", "--out", str(tmp_path / "bad")])  # fmt: skip
    assert result.exit_code == 2 and "a.csv" in result.output


@needs_data
def test_a_run_trained_on_one_directory_scores_another(tiny, tmp_path):
    """Hashing, not a vocabulary of the data, encodes features: a run trained on one directory (eval from
    04-30) scores one built with another --eval-from (04-29) with `unictr eval`, and an impression in the
    eval split of both gets the same score from either."""
    other = _convert(tmp_path / "b", "2022-04-29", tiny["log"])
    run = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "--config", str(tiny["config"]), "--data", str(tiny["data"]), "--out", str(run)]
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "metrics.json"
    result = runner.invoke(app, ["eval", "--run", str(run), "--data", str(other), "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    n_other = pq.ParquetFile(other / "eval" / "part-00000.parquet").metadata.num_rows
    assert metrics["overall"]["is_click"]["n"] == n_other and 0.0 < metrics["overall"]["is_click"]["auc"] < 1.0
    assert set(metrics["surfaces"]) == set(SURFACES)

    model, _ = load_model(run)
    scores = {}
    for data in (tiny["data"], other):
        keys = pq.read_table(data / "eval", columns=["user_id", "video_id", "timestamp"]).to_pylist()
        p = predict(model, load_split(data / "eval", model.schema, model.cfg.data))
        scores[data.name] = {(r["user_id"], r["video_id"], r["timestamp"]): p[i] for i, r in enumerate(keys)}
    assert len(scores["data"]) > 100 and set(scores["data"]) < set(scores["b"])  # 04-30 rows are in both
    for key, p in scores["data"].items():
        np.testing.assert_allclose(p, scores["b"][key], atol=1e-6)


def test_tiny_config_is_valid():
    assert config_from_dict(tiny_config_dict()).train.epochs == 4
