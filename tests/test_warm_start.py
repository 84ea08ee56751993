"""Warm start (`unictr train --init-from`): what is loaded, what is new, grown tables, refusals, freezing,
and that a warm-started model scores the old cells exactly as the old model until it trains."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from rich.console import Console

from tests.conftest import random_table
from tests.fixtures import small_config, train_small_run
from unictr.checkpoint import load_model
from unictr.config import Config, load_config, with_changes
from unictr.data.batch import Schema
from unictr.data.table import encode_table
from unictr.experiment.stage import restrict_config
from unictr.model import UnifiedCTR
from unictr.train.evaluate import predict
from unictr.train.loop import train
from unictr.train.warm_start import WarmStartError, warm_start

ROOT = Path(__file__).resolve().parents[1]
OLD = ["home_feed", "search"]


@pytest.fixture(scope="module")
def cfg() -> Config:
    return small_config(load_config(ROOT / "configs" / "sim.yaml"))


@pytest.fixture(scope="module")
def stage1(cfg: Config, tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Path]:
    """A tiny run of the config cut to home_feed + search (no `related`, no context_item_id table)."""
    cfg1 = restrict_config(cfg, OLD)
    _, run = train_small_run(cfg1, tmp_path_factory.mktemp("stage1"))
    return cfg1, run


def fresh(cfg: Config, seed: int = 7) -> UnifiedCTR:
    torch.manual_seed(seed)
    return UnifiedCTR(cfg)


def test_loads_exactly_the_matching_entries(cfg: Config, stage1: tuple[Config, Path]) -> None:
    cfg1, run = stage1
    old, _ = load_model(run)
    model = fresh(cfg)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    ws = warm_start(model, cfg, run)
    new_state, old_state = model.state_dict(), old.state_dict()
    # every tensor is in exactly one list; the new surface's tower tree is new, nothing else is
    assert sorted(ws.loaded + ws.new + list(ws.resized)) == sorted(new_state)
    assert ws.new == [n for n in new_state if n.startswith("towers.towers.2.")] and ws.new
    assert set(ws.resized) == {"embedding.weight", "view_embedding.weight", "mmoe.gate.user.weight",
                               "mmoe.gate.cand.weight", "mmoe.gate.cand.bias", "calibration.log_temperature",
                               "calibration.bias"}
    for name in ws.loaded:  # name by name, value by value
        assert torch.equal(new_state[name], old_state[name]), name
    for name in ws.new:
        assert torch.equal(new_state[name], init[name]), name
    # keyed tensors: entries by surface / view type / table name, the new ones as initialised
    s_new, s_old = Schema.from_config(cfg), Schema.from_config(cfg1)
    for k, key in enumerate(s_new.view_keys):
        want = old_state["view_embedding.weight"][s_old.view_keys.index(key)] if key[0] in OLD else init[
            "view_embedding.weight"][k]
        assert torch.equal(new_state["view_embedding.weight"][k], want)
    gate = new_state["mmoe.gate.cand.weight"].view(3, -1)
    gate_old = old_state["mmoe.gate.cand.weight"].view(2, -1)
    assert torch.equal(gate[:2], gate_old) and torch.equal(gate[2], init["mmoe.gate.cand.weight"].view(3, -1)[2])
    emb = model.embedding
    for table, size in zip(emb.names, emb.sizes, strict=True):
        at = int(emb.table_offsets([table])[0])
        rows = new_state["embedding.weight"][at:at + size]
        if table in old.embedding.names:
            o = int(old.embedding.table_offsets([table])[0])
            assert torch.equal(rows, old_state["embedding.weight"][o:o + size]), table
        else:
            assert table == "context_item_id" and torch.equal(rows, init["embedding.weight"][at:at + size])


def test_grown_table_keeps_its_old_rows(stage1: tuple[Config, Path]) -> None:
    cfg1, run = stage1
    raw = cfg1.model_dump(mode="json")
    for f in raw["features"]:
        if f["name"] == "advertiser_id":
            old_size, f["hash_size"] = f["hash_size"], f["hash_size"] * 2
    bigger = Config.model_validate(raw)
    old, _ = load_model(run)
    model = fresh(bigger)
    init = model.embedding.weight.detach().clone()
    ws = warm_start(model, bigger, run)
    at, o = (int(m.embedding.table_offsets(["advertiser_id"])[0]) for m in (model, old))
    w = model.embedding.weight.detach()
    assert torch.equal(w[at:at + old_size], old.embedding.weight.detach()[o:o + old_size])
    assert torch.equal(w[at + old_size:at + 2 * old_size], init[at + old_size:at + 2 * old_size])
    assert ws.resized["embedding.weight"]["copied"] == old.embedding.weight.numel()
    after = model.embedding.names.index("advertiser_id") + 1  # the tables after it moved by old_size rows
    nxt = model.embedding.names[after]
    a2, o2 = (int(m.embedding.table_offsets([nxt])[0]) for m in (model, old))
    assert torch.equal(w[a2:a2 + 10], old.embedding.weight.detach()[o2:o2 + 10])


def test_refuses_incompatible_shapes_listing_them(stage1: tuple[Config, Path]) -> None:
    cfg1, run = stage1
    wider = with_changes(cfg1, "model.mmoe", expert_hidden=2 * cfg1.model.mmoe.expert_hidden)
    e, h, o = cfg1.model.mmoe.experts, cfg1.model.mmoe.expert_hidden, cfg1.model.mmoe.expert_dim
    listed = rf"incompatible shapes.*mmoe\.w2: \({e}, {h}, {o}\) -> \({e}, {2 * h}, {o}\).*mmoe\.first\.cand\.weight"
    with pytest.raises(WarmStartError, match=listed):
        warm_start(fresh(wider), wider, run)
    raw = cfg1.model_dump(mode="json")
    raw["features"] = [f | {"hash_size": 8} if f["name"] == "ad_topic" else f for f in raw["features"]]
    smaller = Config.model_validate(raw)
    with pytest.raises(WarmStartError, match=r"embedding\.weight: .*'ad_topic' has 512 entries, now 8"):
        warm_start(fresh(smaller), smaller, run)


def old_rows(cfg: Config, seed: int) -> pa.Table:
    t = random_table(cfg, 40, seed=seed)
    return t.filter(pc.is_in(t["surface"], pa.array(OLD)))


@pytest.mark.parametrize("change", ["surface", "task_and_order"])
def test_step_zero_scores_equal_the_old_model(cfg: Config, stage1: tuple[Config, Path], change: str) -> None:
    """The warm-started model scores the old surfaces exactly as the old model (also when the new config
    reorders the surfaces and adds a task, which widens the DCN input)."""
    cfg1, run = stage1
    new_cfg, rows = cfg, old_rows(cfg, seed=3)
    if change == "task_and_order":
        raw = cfg.model_dump(mode="json")
        raw["surfaces"] = raw["surfaces"][::-1]
        click, save, long_click = raw["tasks"]
        raw["tasks"] = [long_click, {"name": "dwell", "label": "dwell", "weight": 0.5, "surfaces": None}, click, save]
        new_cfg = Config.model_validate(raw)
        rows = rows.append_column("dwell", pa.array([0] * rows.num_rows, pa.int64()))
    old, _ = load_model(run)
    model = fresh(new_cfg)
    warm_start(model, new_cfg, run)
    p_old = predict(old.eval(), encode_table(rows, old.schema, cfg.data))
    p_new = predict(model.eval(), encode_table(rows, model.schema, cfg.data))
    for ti, task in enumerate(cfg1.task_names):
        j = new_cfg.task_names.index(task)
        torch.testing.assert_close(torch.from_numpy(p_new[:, j]), torch.from_numpy(p_old[:, ti]), atol=1e-6, rtol=0)


def test_freeze_keeps_old_entries_bit_identical(cfg: Config, stage1: tuple[Config, Path], tmp_path: Path) -> None:
    _, run = stage1
    cfg2 = with_changes(cfg, "train.warm_start", freeze=["sequence.", "embedding.", "mmoe.gate."])
    data = tmp_path / "data"
    for split, seed in (("train", 5), ("eval", 6)):
        (data / split).mkdir(parents=True)
        pq.write_table(random_table(cfg, 60, seed=seed), data / split / "part-00000.parquet")
    manifest = train(cfg2, data, tmp_path / "run2", console=Console(quiet=True), show_progress=False, init_from=run)
    record = manifest["warm_start"]
    assert record["from"] == str(run) and "towers.towers.2.heads.weight" in record["new"]
    assert "embedding.weight" in record["frozen"] and "mmoe.gate.cand.weight" in record["frozen"]
    after, _ = load_model(tmp_path / "run2")
    start = fresh(cfg)
    ws = warm_start(start, cfg, run)
    a, s = after.state_dict(), start.state_dict()
    for name in record["frozen"]:
        mask = ws.masks[name]
        assert torch.equal(a[name][mask], s[name][mask]), name  # bit-identical after the steps
        assert torch.equal(a[name][~mask] != s[name][~mask], torch.ones_like(a[name][~mask], dtype=torch.bool)) \
            or name == "embedding.weight"  # new rows train (the table's unseen rows stay put)
    assert not torch.equal(a["mmoe.w2"], s["mmoe.w2"])  # the rest trains
    ctx = after.embedding.table_offsets(["context_item_id"])[0]
    assert not torch.equal(a["embedding.weight"][ctx:], s["embedding.weight"][ctx:])
    # a resumed run uses its own checkpoint: --init-from is not read (here it names nothing)
    more = with_changes(cfg2, "train", epochs=2)
    resumed = train(more, data, tmp_path / "run2", resume=True, console=Console(quiet=True), show_progress=False,
                    init_from=tmp_path / "missing")
    assert resumed["warm_start"] == record and resumed["train_state"]["epoch"] == 2


def test_lr_multiplier_groups(cfg: Config, stage1: tuple[Config, Path]) -> None:
    from unictr.train.loop import make_optimizer
    from unictr.train.warm_start import apply_options

    _, run = stage1
    cfg2 = with_changes(cfg, "train.warm_start", lr_multiplier=0.1)
    model = fresh(cfg2)
    ws = warm_start(model, cfg2, run)
    opt = make_optimizer(model, cfg2.train)
    apply_options(model, opt, ws, cfg2.train.warm_start)
    params = dict(model.named_parameters())
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(params["mmoe.w2"])] == pytest.approx(0.1 * cfg.train.lr)
    assert lr_of[id(params["towers.towers.2.heads.weight"])] == pytest.approx(cfg.train.lr)
    assert lr_of[id(params["embedding.weight"])] == pytest.approx(cfg.train.lr)  # resized: base LR
    assert len(lr_of) == len(params)


def test_a_new_surface_can_start_as_a_copy_of_an_old_one(cfg: Config, stage1: tuple[Config, Path]) -> None:
    """`train.warm_start.new_surfaces_from`: `related` (here without a tower feature, so its tower has
    home_feed's shape) takes home_feed's tower, gate, view rows and learned calibration, and so scores its
    rows exactly as the old model scores them as home_feed rows; bad mappings are refused."""
    _, run = stage1
    raw = cfg.model_dump(mode="json")
    raw["features"] = [f for f in raw["features"] if f["name"] != "context_item_id"]
    copied = with_changes(Config.model_validate(raw), "train.warm_start", new_surfaces_from={"related": "home_feed"})
    old, _ = load_model(run)
    model = fresh(copied)
    ws = warm_start(model, copied, run)
    assert ws.surfaces_from == {"related": "home_feed"} and ws.as_dict()["surfaces_from"] == ws.surfaces_from
    assert not ws.new and "towers.towers.2.heads.weight" in ws.loaded
    assert "surface related starts as a copy of home_feed" in ws.summary()
    state, old_state = model.state_dict(), old.state_dict()
    for name in (n for n in state if n.startswith("towers.towers.2.")):
        assert torch.equal(state[name], old_state[name.replace(".2.", ".0.", 1)]), name
    assert torch.equal(state["mmoe.gate.cand.weight"].view(3, -1)[2], old_state["mmoe.gate.cand.weight"].view(2, -1)[0])
    t = random_table(cfg, 60, seed=4)
    related = t.filter(pc.equal(t["surface"], "related"))
    as_home = related.set_column(related.schema.get_field_index("surface"), "surface",
                                 pa.array(["home_feed"] * related.num_rows))
    p_new = predict(model.eval(), encode_table(related, model.schema, cfg.data))
    p_old = predict(old.eval(), encode_table(as_home, old.schema, cfg.data))
    torch.testing.assert_close(torch.from_numpy(p_new), torch.from_numpy(p_old), atol=1e-6, rtol=0)
    for bad in ({"home_feed": "search"}, {"related": "related"}):
        wrong = with_changes(cfg, "train.warm_start", new_surfaces_from=bad)
        with pytest.raises(WarmStartError, match=r"new_surfaces_from .*maps a surface the old run .* lacks to one it"):
            warm_start(fresh(wrong), wrong, run)
    with pytest.raises(ValueError, match=r"train.warm_start.new_surfaces_from: unknown surface\(s\) \['video'\]"):
        with_changes(cfg, "train.warm_start", new_surfaces_from={"video": "home_feed"})
    # related's own tower feature makes its tower wider than home_feed's: refused, naming the tensor
    widened = with_changes(cfg, "train.warm_start", new_surfaces_from={"related": "home_feed"})
    with pytest.raises(WarmStartError, match=r"incompatible shapes .*towers\.towers\.2\.\S+: \(3, \d+\) -> \(3, \d+\)"):
        warm_start(fresh(widened), widened, run)
