"""Floor suite: FLOPs per request, this machine's matmul rate, and the latency floor they imply.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` while the model scores the
request: every matmul-type op the forward actually dispatches (`mm`, `addmm`, `bmm`, the `einsum`s,
which lower to `bmm`, and the sequence self-attention, counted with torch's SDPA formula) is
charged 2·m·n·k from its operand shapes, so the count follows U, N and L exactly as the model's
layer shapes do. Element-wise work (activations, softmax, layer norm, gathers) is not counted:
the floor is a lower bound. The rate is the best of repeated square GEMMs at the run's thread
count, so floor = FLOPs / peak rate is what the matmuls alone would take at full speed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from benchmarks import fixtures
from benchmarks.harness import Context, bf16_support, compare
from unictr.data.batch import Batch
from unictr.model import UnifiedCTR

SHAPES = ((1, 50), (1, 500), (1, 2000), (64, 500))  # (users, candidates) per request
QUICK_SHAPES = ((1, 50), (1, 500))


def _sdpa_cpu_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flops(grad: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_backward_flop_count(grad, query, key, value)


def count_flops(fn: Callable[[], object]) -> tuple[int, dict[str, int]]:
    """Matmul FLOPs of running `fn`: the total and the split over the model's top-level modules."""
    aten = torch.ops.aten
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,  # torch counts only the GPU kernels
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops,
    }
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with counter:
        fn()
    by_module = {
        name.split(".", 1)[1]: int(sum(counts.values()))
        for name, counts in counter.get_flop_counts().items()
        if name.count(".") == 1
    }
    return int(counter.get_total_flops()), by_module


def request_flops(model: UnifiedCTR, batch: Batch) -> tuple[int, dict[str, int]]:
    """Matmul FLOPs of scoring `batch` (one inference forward)."""
    with torch.inference_mode():
        return count_flops(lambda: model(batch))


def matmul_rate(ctx: Context, dtype: torch.dtype) -> dict[str, float]:
    """GFLOP/s of a square GEMM at torch's current thread count: the best (peak) and the median of the repeats."""
    key = f"matmul_{dtype}_{torch.get_num_threads()}"
    if key not in ctx.cache:
        n = ctx.pick(2048, 512)
        a = torch.randn(n, n, device=ctx.device).to(dtype)
        b = torch.randn(n, n, device=ctx.device).to(dtype)
        t = compare(ctx, {"mm": lambda: torch.mm(a, b)}, repeats=ctx.pick(20, 5), warmup=3)["mm"]
        flop = 2 * n**3
        ctx.cache[key] = {
            "size": n,
            "gflops_peak": flop / t["min_ms"] / 1e6,
            "gflops_median": flop / t["median_ms"] / 1e6,
        }
    return ctx.cache[key]


def floor_ms(ctx: Context, flops: int, dtype: torch.dtype = torch.float32) -> float:
    """Milliseconds `flops` take at this machine's peak matmul rate in `dtype`."""
    return flops / matmul_rate(ctx, dtype)["gflops_peak"] / 1e6


def dtypes(ctx: Context) -> dict[str, torch.dtype]:
    """fp32, plus bf16 where the hardware has it."""
    out = {"fp32": torch.float32}
    if bf16_support(ctx.device)[0]:
        out["bf16"] = torch.bfloat16
    return out


def run(ctx: Context) -> dict[str, Any]:
    cfg = fixtures.sim_config()
    model = fixtures.surface_model(cfg).to(ctx.device)
    data = fixtures.sim_data(ctx, ctx.pick(20_000, 3_000))
    kinds = dtypes(ctx)
    requests = {}
    for users, cands in ctx.pick(SHAPES, QUICK_SHAPES):
        batch = fixtures.encode(model, fixtures.make_request(data, cfg, users, cands)).to(ctx.device)
        flops, by_module = request_flops(model, batch)
        per_row, _ = request_flops(model, batch.broadcast_users())
        requests[f"{users}x{cands}"] = {
            "users": users,
            "candidates": cands,
            "sequence_length": int(batch.seq_mask.shape[1]),
            "mflop": flops / 1e6,
            "mflop_by_module": {k: v / 1e6 for k, v in sorted(by_module.items(), key=lambda kv: -kv[1])},
            "per_row_mflop": per_row / 1e6,
            "floor_ms": {name: floor_ms(ctx, flops, dt) for name, dt in kinds.items()},
        }
    out: dict[str, Any] = {
        "method": "FlopCounterMode over the model's forward (matmul-type ops, 2·m·n·k); floor = FLOPs / peak GEMM rate",
        "matmul": {name: matmul_rate(ctx, dt) for name, dt in kinds.items()},
        "requests": requests,
    }
    if "bf16" not in kinds:
        out["matmul"]["bf16"] = {"skipped": bf16_support(ctx.device)[1]}
    ctx.log(
        "floor: matmul "
        + ", ".join(f"{k} {v['gflops_peak']:.0f} GFLOP/s" for k, v in out["matmul"].items() if "gflops_peak" in v)
        + "; 1x500 "
        + f"{requests['1x500']['mflop']:.0f} MFLOP → floor {requests['1x500']['floor_ms']['fp32']:.2f} ms (fp32)"
    )
    return out
