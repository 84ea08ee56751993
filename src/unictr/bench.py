"""`unictr bench`: runs the benchmark suites of `benchmarks/` (at the repository root) and reports them.

The suites are development tooling like `tests/`: they live beside the package in the source
checkout, not inside it. pyproject.toml declares `benchmarks` a package of the distribution, so the
editable install (`pip install -e .`) puts the checkout's copy on the import path.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

SUITE_CHOICES = ("embedding", "broadcast", "serving", "training", "floor", "scale", "dcn", "all")


class BenchError(RuntimeError):
    """The suites cannot be found or loaded."""


def load_suites() -> ModuleType:
    """The `benchmarks` package of the installed source checkout."""
    try:
        module = importlib.import_module("benchmarks")
    except ModuleNotFoundError as e:
        if e.name != "benchmarks":
            raise
        raise BenchError(
            "no benchmark suites; `unictr bench` needs a source checkout installed with `pip install -e .`"
        ) from None
    if not hasattr(module, "run_suites"):
        raise BenchError(f"another package named 'benchmarks' ({module.__file__}) shadows the unictr suites")
    return module


def run(
    suite: str = "all",
    quick: bool = False,
    device: str = "auto",
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run one suite or all of them; returns the result document (see docs/performance.md)."""
    if suite not in SUITE_CHOICES:
        raise BenchError(f"unknown suite {suite!r}; choose from {', '.join(SUITE_CHOICES)}")
    suites = load_suites()
    names = suites.SUITES if suite == "all" else (suite,)
    return suites.run_suites(names, device=device, threads=threads, quick=quick, log=log)


def headlines(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(measure, value, target) rows for the summary table, for the suites present in `result`."""
    rows = []
    if "embedding" in result:
        rows.append(("fused embedding training step vs per-feature loop",
                     f"{result['embedding']['train_step_speedup']:.1f}x", ">= 3x"))
    if "broadcast" in result:
        rows.append(("user broadcast speedup at 1 user x 500",
                     f"{result['broadcast']['speedup_1x500']:.1f}x", ">= 10x"))
    if "serving" in result:
        s = result["serving"]
        fast = s["fastest"]
        rows.append((f"serving 1x500 in-process p50 / p99, advised configuration ({s['backend']}, numpy request)",
                     f"{s['p50_ms']:.2f} / {s['p99_ms']:.2f} ms", ""))
        rows.append((f"serving p99 / its FLOP floor, advised configuration ({s['backend']}, numpy request)",
                     f"{s['p99_x_floor']:.1f}x of {s['floor_ms']:.2f} ms", "<= 3x"))
        # the target is the advised configuration's; these two show what it costs to leave it
        rows.append(("serving p99 / its FLOP floor, the same with the request as JSON bytes",
                     f"{s['in_process_x_floor'][s['backend']]:.1f}x", ""))
        rows.append((f"serving p99 / its FLOP floor, fastest variant ({fast['backend']}, JSON request)",
                     f"{fast['p99_x_floor']:.1f}x of {fast['floor_ms']:.2f} ms", ""))
    if "training" in result:
        rows.append(("training throughput (simulated data)", f"{result['training']['rows_per_s']:,.0f} rows/s", ""))
    if "scale" in result:
        sc = result["scale"]
        rates = ", ".join(f"{int(k):,}: {v:,.0f}" for k, v in sc["rows_per_s"].items())
        rss = ", ".join(f"{int(k):,}: {v:,.0f}" for k, v in sc["peak_rss_mb"].items())
        rows.append(("training rows/s by split rows", rates, "within 20%"))
        rows.append(("training peak RSS MB by split rows", rss, "largest < 4096 and <= 1.5x the 1M"))
        rows.append(("torchrun 2 processes vs 1 (1 thread each)", f"{sc['ddp']['speedup_2_vs_1']:.2f}x", ""))
    if "dcn" in result and "arms" in result["dcn"]:
        d = result["dcn"]
        surface = (d.get("surfaces") or list(d["serving"]))[0]
        task = next(iter(d["arms"]["separate"]["aucs"][surface]))
        order = sorted(d["arms"], key=lambda a: (a == "separate", d["arms"][a]["out_dim"] is None,
                                                 d["arms"][a]["out_dim"] or 0))
        cells = ", ".join(f"{a.removeprefix('width_')}: {d['arms'][a]['aucs'][surface][task]:.4f} / "
                          f"{d['serving'][surface][a]['model_only']['p50_ms']:.2f} ms" for a in order)
        rows.append((f"{surface} {task} AUC / model-only p50 per dcn.out_dim (and separate)", cells, ""))
    if "floor" in result:
        fp32 = result["floor"]["matmul"]["fp32"]
        rows.append(("matmul rate fp32 (peak)", f"{fp32['gflops_peak']:.0f} GFLOP/s", ""))
    return rows
