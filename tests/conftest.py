"""Shared fixtures: the default config and small random canonical tables."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from unictr.config import Config, load_config, with_changes

ROOT = Path(__file__).resolve().parents[1]
KUAIRAND_ENV = "UNICTR_KUAIRAND_DIR"  # or `pytest --kuairand-dir DIR`


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--kuairand-dir", default=None, help=f"Directory of the KuaiRand-Pure files (sets {KUAIRAND_ENV}; "
                     "default ../shared/data/kuairand beside the checkout). Tests that need it skip without it.")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--kuairand-dir"):
        os.environ[KUAIRAND_ENV] = str(Path(config.getoption("--kuairand-dir")).resolve())


def kuairand_dir() -> Path:
    """Where the KuaiRand-Pure files are: $UNICTR_KUAIRAND_DIR, else ../shared/data/kuairand beside the checkout."""
    return Path(os.environ.get(KUAIRAND_ENV) or ROOT.parent / "shared" / "data" / "kuairand")


def kuairand_missing(files: tuple[Path, ...]) -> str | None:
    """Why KuaiRand tests skip (which file is missing and how to point at the data), or None when all are there."""
    missing = [p for p in files if not p.is_file()]
    if not missing:
        return None
    return (f"KuaiRand-Pure file {missing[0]} not found; point {KUAIRAND_ENV} (or pytest --kuairand-dir) at the "
            "directory holding the KuaiRand-Pure files (README, Data)")


@pytest.fixture(scope="session")
def sim_config() -> Config:
    """configs/sim.yaml with the Transformer sequence encoder (the design's and `SequenceModelSpec`'s default):
    the quickstart's config trains `mean_pool` for speed, and the model, export and serving tests keep covering
    the Transformer's paths (tests/test_encoders.py trains and exports `mean_pool`)."""
    return with_changes(load_config(ROOT / "configs" / "sim.yaml"), "model.sequence", encoder="transformer")


def random_table(cfg: Config, requests: int = 12, seed: int = 0, max_cands: int = 6) -> pa.Table:
    """A valid canonical table with random values: `requests` requests of 1..max_cands rows each."""
    rng = np.random.default_rng(seed)
    per = rng.integers(1, max_cands + 1, size=requests)
    n = int(per.sum())
    req = np.repeat(np.arange(requests, dtype=np.int64), per)
    ts_req = 1_700_000_000_000 + np.arange(requests, dtype=np.int64) * 60_000
    surf_req = rng.integers(0, len(cfg.surfaces), size=requests)
    cols: dict[str, object] = {
        "request_id": req,
        "user_id": rng.integers(0, 50, size=requests)[req],
        "timestamp": ts_req[req],
        "surface": [cfg.surfaces[i].name for i in surf_req[req]],
        "view_type": [cfg.surfaces[surf_req[r]].view_types[rng.integers(len(cfg.surfaces[surf_req[r]].view_types))]
                      for r in req],
    }
    for f in cfg.features:
        if f.kind == "categorical":
            v = rng.integers(-(2**40), 2**40, size=requests if f.side == "user" else n)
            if cfg.modulo(f.name):  # small codes its modulo table keeps apart (the reader refuses others)
                v = np.mod(v, cfg.hash_size(f.name) - 1)
        else:
            v = rng.normal(size=requests if f.side == "user" else n).astype(np.float32)
        cols[f.name] = v[req] if f.side == "user" else v
    for t in cfg.tasks:
        cols[t.label] = rng.integers(0, 2, size=n)
    if cfg.sequence is not None:
        s = cfg.sequence
        lens = rng.integers(0, s.max_len + 10, size=requests)
        items = [rng.integers(0, 1000, size=k).tolist() for k in lens]
        acts = [rng.integers(0, s.num_actions, size=k).tolist() for k in lens]
        tss = [sorted((ts_req[r] - rng.integers(1, 10**8, size=k)).tolist()) for r, k in enumerate(lens)]
        cols[s.item_column] = pa.array([items[r] for r in req], pa.list_(pa.int64()))
        cols[s.action_column] = pa.array([acts[r] for r in req], pa.list_(pa.int64()))
        cols[s.time_column] = pa.array([tss[r] for r in req], pa.list_(pa.int64()))
        for side in s.side_features:
            vals = [rng.integers(0, 20, size=k).tolist() for k in lens]
            cols[side] = pa.array([vals[r] for r in req], pa.list_(pa.int64()))
    return pa.table(cols)
