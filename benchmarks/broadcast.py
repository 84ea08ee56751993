"""Broadcast suite: request latency with the user side run once per user vs repeated per candidate.

A request of U users and N candidates (dealt round-robin to the users) is encoded as the scorer
encodes it and scored by a surface model in inference mode: once in the broadcast layout (user
embeddings and the sequence Transformer run U times, then are gathered by `user_index`) and once
in the per-row layout of `Batch.broadcast_users()` (the user side repeated for each of the N
rows, as a model without broadcasting must run it). Both give the same scores; the suite checks.

Two models: `configs/sim.yaml`'s own (sequence of 32 events, 1 block: the user side is under 1% of
the FLOPs of a 1 × 500 request, so broadcasting can save at most half the work), and the same model
with a production-shaped user side (`fixtures.long_sequence_config`: 512 events, 2 blocks), where
the user side is what dominates a request scored per row. The headline `speedup_1x500` is the
production-shaped model's; `sim_default.speedup_1x500` is the small model's.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import fixtures
from benchmarks.floor import SHAPES, floor_ms, request_flops
from benchmarks.harness import Context, compare, speedup
from unictr.config import Config
from unictr.model import probabilities

QUICK_SHAPES = ((1, 50), (1, 500))


def run(ctx: Context) -> dict[str, Any]:
    data = fixtures.sim_data(ctx, ctx.pick(20_000, 3_000))
    long_cfg = fixtures.long_sequence_config(fixtures.sim_config())
    out: dict[str, Any] = {
        "layout": "users x candidates per request; candidates dealt round-robin to the users",
        "sim_default": _requests(ctx, fixtures.sim_config(), data),
        "long_sequence": _requests(ctx, long_cfg, data),
        "long_sequence_shape": {"max_len": long_cfg.sequence.max_len, "layers": long_cfg.model.sequence.layers},
        "dtype": "fp32",
    }
    out["requests"] = out["long_sequence"]["requests"]
    out["speedup_1x500"] = out["long_sequence"]["speedup_1x500"]
    return out


def _requests(ctx: Context, cfg: Config, data: Path) -> dict[str, Any]:
    """Broadcast vs per-row timings of every request shape for one model config."""
    model = fixtures.surface_model(cfg).to(ctx.device)
    name = f"L={cfg.sequence.max_len}"
    requests = {}
    for users, cands in ctx.pick(SHAPES, QUICK_SHAPES):
        batch = fixtures.encode(model, fixtures.make_request(data, cfg, users, cands)).to(ctx.device)
        per_row = batch.broadcast_users()
        diff = float((probabilities(model, batch) - probabilities(model, per_row)).abs().max())
        score = partial(probabilities, model)
        t = compare(ctx, {"broadcast": partial(score, batch), "per_row": partial(score, per_row)}, ctx.pick(30, 3))
        flops, _ = request_flops(model, batch)
        floor = floor_ms(ctx, flops)
        requests[f"{users}x{cands}"] = {
            "users": users,
            "candidates": cands,
            "broadcast": t["broadcast"],
            "per_row": t["per_row"],
            "speedup": speedup(t["per_row"], t["broadcast"]),
            "floor_ms": floor,
            "broadcast_x_floor": t["broadcast"]["median_ms"] / floor,
            "per_row_x_floor": t["per_row"]["median_ms"] / floor,
            "max_abs_diff": diff,
        }
        ctx.log(
            f"broadcast {name} {users}x{cands}: {t['broadcast']['median_ms']:.2f} ms vs per-row "
            f"{t['per_row']['median_ms']:.2f} ms ({requests[f'{users}x{cands}']['speedup']:.1f}x)"
        )
    return {"requests": requests, "speedup_1x500": requests["1x500"]["speedup"]}
