"""What the suites measure on: the sim config, simulated data, surface models and score requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from benchmarks.harness import Context
from unictr.config import Config, load_config, with_changes
from unictr.data.batch import Batch
from unictr.data.simulate import simulate
from unictr.export.prune import prune_model
from unictr.model import UnifiedCTR
from unictr.serving.scorer import Scorer

ROOT = Path(__file__).resolve().parents[1]
SIM_CONFIG = ROOT / "configs" / "sim.yaml"
SURFACE = "home_feed"  # the biggest simulated surface; every task applies on it


def sim_config() -> Config:
    return load_config(SIM_CONFIG)


# The production-shaped user side: a long action history through a deeper sequence Transformer, the
# part of the model that request-level broadcasting runs once per user (TransAct-style models keep the
# newest hundreds to thousands of events; the simulator's users have at most 48, and configs/sim.yaml
# keeps 32 because that is all its data holds).
LONG_SEQUENCE = 512
LONG_SEQUENCE_LAYERS = 2


def long_sequence_config(cfg: Config) -> Config:
    """`cfg` with the user side production-shaped: `LONG_SEQUENCE` events through `LONG_SEQUENCE_LAYERS` blocks."""
    return with_changes(with_changes(cfg, "sequence", max_len=LONG_SEQUENCE), "model.sequence",
                        layers=LONG_SEQUENCE_LAYERS)


def sim_data(ctx: Context, rows: int) -> Path:
    """A simulated data directory of about `rows` impressions (made once per run and size)."""
    key = f"sim_data_{rows}"
    if key not in ctx.cache:
        out = ctx.workdir / f"sim-{rows}"
        simulate(rows=rows, seed=0, out=out)
        ctx.cache[key] = out
    return ctx.cache[key]


def surface_model(cfg: Config, surface: str = SURFACE, seed: int = 0) -> UnifiedCTR:
    """A randomly initialised unified model cut down to one surface, in eval mode (latency needs no training)."""
    torch.manual_seed(seed)
    return prune_model(UnifiedCTR(cfg).eval(), surface)


def make_request(
    data_dir: Path, cfg: Config, users: int, candidates: int, surface: str = SURFACE, seed: int = 0
) -> dict[str, Any]:
    """A score request of `users` users and `candidates` candidates (dealt round-robin to the users).

    Users (features and action sequences) and candidates are real simulated rows of `surface`, drawn
    with a fixed seed, so every run scores the same request. When the config keeps more events than a
    simulated user has, the user's events are repeated back in time (one a minute) to fill
    `sequence.max_len`, so the sequence Transformer does the work a user with a long history costs.
    """
    table = pq.read_table(data_dir / "eval")
    table = table.filter(pc.equal(table["surface"], pa.scalar(surface)))
    rng = np.random.default_rng(seed)
    user_rows = table.take(rng.choice(table.num_rows, size=users, replace=users > table.num_rows)).to_pylist()
    cand_rows = table.take(rng.integers(0, table.num_rows, size=candidates)).to_pylist()
    user_cols = [f.name for f in cfg.features if f.side == "user"]
    cand_cols = [f.name for f in cfg.features if f.side == "candidate" and (not f.towers or surface in f.towers)]
    seq = cfg.sequence
    seq_cols = {"items": seq.item_column, "actions": seq.action_column, "timestamps_ms": seq.time_column}
    seq_cols |= {c: c for c in seq.side_features}
    now = max(r["timestamp"] for r in user_rows)
    return {
        "request_time_ms": now,
        "users": [
            {
                "id": f"u{i}",
                "features": {c: r[c] for c in user_cols},
                "sequence": _fill_sequence({k: r[c] for k, c in seq_cols.items()}, seq.max_len, now),
            }
            for i, r in enumerate(user_rows)
        ],
        "candidates": [
            {"user": f"u{i % users}", "features": {c: r[c] for c in cand_cols}, "view_type": r["view_type"]}
            for i, r in enumerate(cand_rows)
        ],
    }


def _fill_sequence(events: dict[str, list[int]], length: int, now_ms: int) -> dict[str, list[int]]:
    """The user's events, repeated to `length` if it has fewer (one event a minute back from `now_ms`)."""
    n = len(events["items"])
    if n == 0 or n >= length:
        return events
    take = [(n - 1 - i) % n for i in range(length)][::-1]  # newest real event last, older copies before it
    out = {k: [v[j] for j in take] for k, v in events.items() if k != "timestamps_ms"}
    out["timestamps_ms"] = [now_ms - 60_000 * (length - i) for i in range(length)]
    return out


def encode(model: UnifiedCTR, request: dict[str, Any]) -> Batch:
    """The request as the scorer hands it to the model (broadcast layout, rows grouped by user)."""
    device = str(next(model.parameters()).device)
    scorer = Scorer(model, {}, version="bench", max_candidates=max(len(request["candidates"]), 1), device=device)
    return scorer.encode(scorer.parse(request)).batch
