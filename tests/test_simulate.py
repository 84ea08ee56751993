"""The built-in simulator: canonical layout and dtypes, determinism, and a world with real structure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from unictr.config import Config, config_from_dict, load_config
from unictr.data.simulate import simulate
from unictr.data.simulate.world import MAX_SEQ_LEN, NUM_ACTIONS

ROWS = 20_000
CONFIG_PATH = Path(__file__).resolve().parents[1] / "configs" / "sim.yaml"


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(CONFIG_PATH)


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory, config: Config) -> Path:
    out = tmp_path_factory.mktemp("sim") / "data"
    simulate(ROWS, seed=0, out=out, config=config)
    return out


@pytest.fixture(scope="module")
def table(sim_dir: Path) -> pa.Table:
    """Train then eval rows, in file order."""
    files = sorted((sim_dir / "train").glob("*.parquet")) + sorted((sim_dir / "eval").glob("*.parquet"))
    return pa.concat_tables(pq.read_table(f) for f in files)


def _np(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()


def test_layout_and_meta(sim_dir: Path, table: pa.Table) -> None:
    meta = json.loads((sim_dir / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["rows"] == ROWS == table.num_rows
    assert sum(s["rows"] for s in meta["surfaces"].values()) == ROWS
    assert [p.name for p in sorted(sim_dir.iterdir())] == ["eval", "meta.json", "train"]
    train = pq.read_table(sim_dir / "train" / "part-00000.parquet")
    evals = pq.read_table(sim_dir / "eval" / "part-00000.parquet")
    assert evals.num_rows == meta["splits"]["eval"]["rows"]
    assert 0.15 < evals.num_rows / ROWS < 0.25
    # eval is the later time slice
    assert _np(train, "request_id").max() < _np(evals, "request_id").min()
    assert _np(train, "timestamp").max() <= _np(evals, "timestamp").min()


def test_schema_matches_config(table: pa.Table, config: Config) -> None:
    schema = table.schema
    for key in ("request_id", "user_id", "timestamp"):
        assert schema.field(getattr(config.data, key)).type == pa.int64()
    for key in ("surface", "view_type"):
        assert schema.field(getattr(config.data, key)).type == pa.string()
    for f in config.features:
        assert schema.field(f.name).type == (pa.int64() if f.kind == "categorical" else pa.float32()), f.name
    for t in config.tasks:
        assert set(np.unique(_np(table, t.label))) <= {0, 1}
        assert schema.field(f"p_true_{t.name}").type == pa.float64()
    seq = config.sequence
    assert seq is not None
    for col in (seq.item_column, seq.action_column, seq.time_column):
        assert schema.field(col).type == pa.list_(pa.int64())
    views = {s.name: set(s.view_types) for s in config.surfaces}
    for s, v in zip(table.column("surface").to_pylist(), table.column("view_type").to_pylist(), strict=True):
        assert v in views[s]
    dense = [f.name for f in config.features if f.kind == "dense"]
    assert all(np.isfinite(_np(table, name)).all() for name in dense)


def test_same_seed_same_bytes(tmp_path: Path, sim_dir: Path, config: Config) -> None:
    again, other = tmp_path / "again", tmp_path / "other"
    simulate(ROWS, seed=0, out=again, config=config)
    simulate(ROWS, seed=1, out=other, config=config)
    for rel in ("train/part-00000.parquet", "eval/part-00000.parquet", "meta.json"):
        assert (again / rel).read_bytes() == (sim_dir / rel).read_bytes(), rel
        assert (other / rel).read_bytes() != (sim_dir / rel).read_bytes(), rel


def test_requests_contiguous_and_share_user_side(table: pa.Table, config: Config) -> None:
    rid = _np(table, "request_id")
    assert (np.diff(rid) >= 0).all()
    ts_first = _np(table, "timestamp")[np.r_[0, np.flatnonzero(np.diff(rid)) + 1]]
    assert (np.diff(ts_first) >= 0).all()  # request ids increase with time
    same = rid[1:] == rid[:-1]
    assert same.any()
    seq = config.sequence
    assert seq is not None
    user_side = ["user_id", "timestamp", "surface", "view_type", seq.item_column, seq.action_column,
                 seq.time_column] + [f.name for f in config.features if f.side == "user"]
    for name in user_side:
        values = table.column(name).to_pylist()
        assert all(values[i + 1] == values[i] for i in np.flatnonzero(same)), name
    # positions run 0..n-1 within each request: n in 3..12 (only the very last request may be cut short)
    position = _np(table, "position")
    assert (position[1:][same] == position[:-1][same] + 1).all()
    assert (position[1:][~same] == 0).all() and position[0] == 0
    sizes = np.diff(np.r_[np.flatnonzero(position == 0), len(position)])
    assert sizes[:-1].min() == 3 and sizes.max() == 12


def test_sequences(table: pa.Table) -> None:
    item, action, ts = (table.column(c) for c in ("seq_item", "seq_action", "seq_ts"))
    lengths = pc.list_value_length(item).to_numpy()
    assert (lengths == pc.list_value_length(action).to_numpy()).all()
    assert (lengths == pc.list_value_length(ts).to_numpy()).all()
    assert lengths.max() <= MAX_SEQ_LEN and lengths.std() > 3  # lengths vary
    event_ts = pa.concat_arrays(ts.chunks).flatten().to_numpy()
    row_ts = np.repeat(_np(table, "timestamp"), lengths)
    assert (event_ts < row_ts).all()
    assert (row_ts - event_ts).max() < 60 * 86_400_000
    newest_first_gap = np.diff(event_ts)[np.diff(np.repeat(np.arange(len(lengths)), lengths)) == 0]
    assert (newest_first_gap > 0).all()  # oldest first
    actions = pa.concat_arrays(action.chunks).flatten().to_numpy()
    assert set(np.unique(actions)) == set(range(NUM_ACTIONS))
    ad_ids = set(_np(table, "ad_id"))
    assert np.isin(pa.concat_arrays(item.chunks).flatten().to_numpy()[:1000], list(ad_ids)).mean() > 0.5


def test_surface_shares(table: pa.Table) -> None:
    rid, surface = _np(table, "request_id"), np.array(table.column("surface").to_pylist())
    first = np.r_[0, np.flatnonzero(np.diff(rid)) + 1]
    for name, share in {"home_feed": 0.6, "search": 0.3, "related": 0.1}.items():
        assert abs((surface[first] == name).mean() - share) < 0.04, name


def test_surface_specific_columns(table: pa.Table) -> None:
    surface = np.array(table.column("surface").to_pylist())
    search, related = surface == "search", surface == "related"
    assert (_np(table, "query_topic")[~search] == -1).all() and (_np(table, "query_topic")[search] >= 0).all()
    assert set(np.unique(_np(table, "query_ad_match")[search])) == {1, 2, 3}
    assert (_np(table, "query_ad_match")[~search] == 0).all()
    for col in ("context_topic", "context_item_id"):
        assert (_np(table, col)[~related] == -1).all() and (_np(table, col)[related] >= 0).all()
    assert (_np(table, "long_click") <= _np(table, "click")).all()


def test_oracle_auc_per_surface(table: pa.Table) -> None:
    surface = np.array(table.column("surface").to_pylist())
    click, p = _np(table, "click"), _np(table, "p_true_click")
    assert 0.03 < click.mean() < 0.15
    for name in ("home_feed", "search", "related"):
        on = surface == name
        auc = roc_auc_score(click[on], p[on])
        assert 0.65 <= auc <= 0.90, (name, auc)


def test_view_types_differ(table: pa.Table) -> None:
    surface = np.array(table.column("surface").to_pylist())
    view = np.array(table.column("view_type").to_pylist())
    click, p = _np(table, "click"), _np(table, "p_true_click")
    for name in ("home_feed", "search", "related"):
        grid, full = (surface == name) & (view == "grid"), (surface == name) & (view == "full")
        assert p[full].mean() > 1.2 * p[grid].mean(), name
    home = surface == "home_feed"
    assert click[home & (view == "full")].mean() > 1.5 * click[home & (view == "grid")].mean()


def test_replaces_a_previous_simulation_only(tmp_path: Path) -> None:
    out = tmp_path / "data"
    simulate(500, seed=0, out=out)
    assert simulate(600, seed=1, out=out)["rows"] == 600
    assert json.loads((out / "meta.json").read_text())["seed"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temp dirs left behind
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        simulate(500, seed=0, out=foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_rejects_a_config_it_cannot_satisfy(tmp_path: Path, config: Config) -> None:
    raw = config.model_dump()
    raw["features"].append({"name": "user_age", "kind": "dense", "side": "user"})
    with pytest.raises(ValueError, match="user_age"):
        simulate(500, seed=0, out=tmp_path / "data", config=config_from_dict(raw))
    assert not (tmp_path / "data").exists()
