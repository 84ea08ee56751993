"""Shared test builders: a small config, a tiny trained run, derived exports and score requests."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from rich.console import Console
from safetensors.torch import load_file, save_file

from tests.conftest import random_table
from unictr.checkpoint import MANIFEST, MODEL_FILE, sha256_file
from unictr.config import Config
from unictr.export.artifact import ONNX_FILE
from unictr.train.loop import train

SURFACE = "search"  # the surface the serving tests and benches score


def small_config(cfg: Config) -> Config:
    """The sim config with small tables, one short epoch and one thread: a test run trains in well under a second."""
    raw = cfg.model_dump(mode="json")
    for f in raw["features"]:
        if f["hash_size"]:
            f["hash_size"] = min(f["hash_size"], 512)
    raw["train"].update(epochs=1, batch_size=64, threads=1)
    return Config.model_validate(raw)


def train_small_run(cfg: Config, root: Path) -> tuple[Path, Path]:
    """(data dir, run dir) of a tiny run on random canonical data."""
    data = root / "data"
    for split, seed in (("train", 0), ("eval", 1)):
        (data / split).mkdir(parents=True)
        pq.write_table(random_table(cfg, 60, seed=seed), data / split / "part-00000.parquet")
    train(cfg, data, root / "run", console=Console(quiet=True), show_progress=False)
    return data, root / "run"


def derive_export(src: Path, dst: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    """A valid export at `dst` whose weights are `src`'s changed in place by `change` (manifest re-signed)."""
    shutil.copytree(src, dst)
    weights = load_file(str(dst / MODEL_FILE))
    change(weights)
    save_file(weights, str(dst / MODEL_FILE))
    manifest = json.loads((dst / MANIFEST).read_text())
    manifest["files"] = {MODEL_FILE: sha256_file(dst / MODEL_FILE)}
    (dst / ONNX_FILE).unlink(missing_ok=True)
    (dst / MANIFEST).write_text(json.dumps(manifest))
    return dst


def table_to_request(table: pa.Table, cfg: Config, surface: str, request_time_ms: int) -> dict:
    """A score request holding every row of `surface`: one request user per canonical request id."""
    rows = table.filter(pa.compute.equal(table["surface"], surface)).to_pylist()
    user_cols = [f.name for f in cfg.features if f.side == "user"]
    cand_cols = [f.name for f in cfg.features if f.side == "candidate"]
    users: dict[str, dict] = {}
    candidates = []
    for r in rows:
        uid = f"req-{r['request_id']}"
        users.setdefault(uid, {
            "id": uid,
            "features": {n: r[n] for n in user_cols},
            "sequence": {"items": r["seq_item"], "actions": r["seq_action"], "timestamps_ms": r["seq_ts"],
                         **{c: r[c] for c in cfg.sequence.side_features}},
        })
        candidates.append({"user": uid, "features": {n: r[n] for n in cand_cols}, "view_type": r["view_type"]})
    return {"request_time_ms": request_time_ms, "users": list(users.values()), "candidates": candidates}


def same_time_table(cfg: Config, requests: int, seed: int) -> tuple[pa.Table, int]:
    """A random table whose rows all share one timestamp (a single score request's time)."""
    t = random_table(cfg, requests, seed=seed)
    now = int(pa.compute.max(t["timestamp"]).as_py()) + 1
    return t.set_column(t.schema.get_field_index("timestamp"), "timestamp", pa.array([now] * t.num_rows)), now
