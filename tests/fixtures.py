"""Shared test builders: a small config, a tiny trained run, derived exports, score requests, and
registry versions broken on purpose."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from safetensors.torch import load_file, save_file

from tests.conftest import random_table
from unictr.checkpoint import MANIFEST, MODEL_FILE, save_json, sha256_file
from unictr.config import Config
from unictr.data.requests import request_from_rows
from unictr.export.artifact import ONNX_FILE
from unictr.serving.registry import POINTER, PUBLISHED, Registry, utc_now
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
    return request_from_rows(table, cfg, surface, request_time_ms)


def same_time_table(cfg: Config, requests: int, seed: int) -> tuple[pa.Table, int]:
    """A random table whose rows all share one timestamp (a single score request's time)."""
    t = random_table(cfg, requests, seed=seed)
    now = int(pa.compute.max(t["timestamp"]).as_py()) + 1
    return t.set_column(t.schema.get_field_index("timestamp"), "timestamp", pa.array([now] * t.num_rows)), now


# --- a registry's versions broken on purpose, and waiting on a server -------------------------------


def point_at(registry: Registry, surface: str, **fields: object) -> None:
    """Write the surface's pointer with `fields` (live, history, shadow) changed, the way the registry does.

    How a registry comes to name a version that no longer loads (its files broke after it was set, or a
    hand-edited pointer): the registry's own commands check a version before they name it."""
    ptr = registry.pointer(surface)
    raw = {"live": ptr.live, "history": list(ptr.history), "shadow": ptr.shadow, **fields, "updated_at": utc_now()}
    save_json(raw, registry.root / surface / POINTER)


def truncate_weights(registry: Registry, surface: str, version: str) -> None:
    """Cut the version's safetensors file in half: its sha256 no longer matches the manifest."""
    path = registry.version_dir(surface, version) / MODEL_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def rehash(registry: Registry, surface: str, version: str, weights: bytes, publish: bool) -> None:
    """Replace the version's weights with `weights`, rewrite the manifest's sha256 of them and, with
    `publish`, `published.json`'s sha256 of the manifest: every hash then matches but the one not rewritten."""
    d = registry.version_dir(surface, version)
    (d / MODEL_FILE).write_bytes(weights)
    manifest = json.loads((d / MANIFEST).read_text())
    manifest["files"][MODEL_FILE] = sha256_file(d / MODEL_FILE)
    (d / MANIFEST).write_text(json.dumps(manifest))
    if publish:
        published = json.loads((d / PUBLISHED).read_text())
        save_json({**published, "manifest_sha256": sha256_file(d / MANIFEST)}, d / PUBLISHED)


def garbage_weights(registry: Registry, surface: str, version: str) -> None:
    """Garbage in place of the safetensors file with every hash rewritten: only safetensors itself can
    refuse it (a `SafetensorError`, a type of none of the project's errors)."""
    rehash(registry, surface, version, b"not a safetensors file at all" * 64, publish=True)


def wait_for(cond: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def loading_metrics(text: str, surface: str) -> dict[str, object]:
    """`surface`'s loading metrics in a /metrics text: `failures:<role>` (count), `ready:<role>` (0/1) and
    `info:<role>` (the version served)."""
    names = {"unictr_model_load_failures_total": "failures", "unictr_model_ready": "ready", "unictr_model_info": "info"}
    out: dict[str, object] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in names and s.labels["surface"] == surface:
                out[f"{names[s.name]}:{s.labels['role']}"] = s.labels.get("version", s.value)
    return out
