"""The `unictr bench` suites (see docs/performance.md).

Each suite module has `run(ctx) -> dict`; `run_suites` runs the chosen ones in one process and
returns the JSON document `unictr bench --out` writes. The package lives at the repository root,
beside `tests/`; pyproject.toml declares it, so the editable install puts it on the import path and
`unictr.bench` imports it by name.
"""

from __future__ import annotations

import importlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks import harness
from benchmarks.harness import Context, load_average, machine, setup_device

# Run order: the floor first, so the matmul rates it measures are reused by the latency suites.
SUITES = ("floor", "embedding", "broadcast", "serving", "training")
# Run only when named: minutes of work (scale: a 10M-row simulation cached on disk; dcn: eleven KuaiRand trainings).
EXTRA_SUITES = ("scale", "dcn")


def run_suites(
    suites: list[str] | tuple[str, ...],
    device: str = "auto",
    threads: int | None = None,
    quick: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run `suites` (names from SUITES, in SUITES order) and return {"machine": ..., suite: result}."""
    unknown = sorted(set(suites) - set(SUITES) - set(EXTRA_SUITES))
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown}; choose from {[*SUITES, *EXTRA_SUITES]} or 'all'")
    threads = threads or torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="unictr-bench-") as tmp, harness.threads(threads):
        ctx = Context(device=setup_device(device), threads=threads, quick=quick, workdir=Path(tmp), log=log)
        out: dict[str, Any] = {"machine": machine(ctx)}
        for name in (s for s in (*SUITES, *EXTRA_SUITES) if s in suites):
            start, load = time.perf_counter(), load_average()
            log(f"[{name}] load average {load}")
            result = importlib.import_module(f"benchmarks.{name}").run(ctx)
            out[name] = {**result, "load_average_at_start": load, "seconds": time.perf_counter() - start}
    return out
