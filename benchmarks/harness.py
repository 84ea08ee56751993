"""Timing harness shared by the suites: interleaved comparisons, summary statistics, machine facts."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

Variant = Callable[[], object]


@dataclass
class Context:
    """What every suite needs: where to run, how hard, where to write scratch files, how to report."""

    device: torch.device
    threads: int
    quick: bool
    workdir: Path
    log: Callable[[str], None] = print
    cache: dict[str, Any] = field(default_factory=dict)  # shared between suites of one run (data, rates)

    def pick(self, full: Any, quick: Any) -> Any:
        """`quick` in --quick mode, else `full`."""
        return quick if self.quick else full

    def sync(self) -> None:
        """Wait for queued device work, so a timer stops when the work is done."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# Untimed calls at the start of each block: with only one, a block's first timed calls were its slowest
# and set the p99 (measurements in docs/performance.md, "What each optimisation bought").
SETTLE_CALLS = 3


def summarize(seconds: list[float]) -> dict[str, float]:
    """Median, p50/p99, min and max in milliseconds, and the number of timed repeats."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "repeats": int(ms.size),
    }


def compare(
    ctx: Context, variants: Mapping[str, Variant], repeats: int, warmup: int = 2, block: int = 1
) -> dict[str, dict]:
    """Time every variant `repeats` times after `warmup` untimed calls each.

    Runs are interleaved round by round, in an order rotated every round, so a change in the
    machine's load during the measurement hits every variant alike (the machine is shared).
    `block` > 1 times that many consecutive calls per variant and round, after `SETTLE_CALLS`
    untimed ones: for latency tails, which should not include the previous variant's thread pools
    still spinning (OpenMP, ONNX Runtime) or its cold caches; a server runs one configuration, not
    seven in turn.
    """
    names = list(variants)
    for name in names:
        for _ in range(warmup):
            variants[name]()
        ctx.sync()
    samples: dict[str, list[float]] = {name: [] for name in names}
    rounds = -(-repeats // block)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            for _ in range(SETTLE_CALLS if block > 1 else 0):
                variants[name]()
            ctx.sync()
            for _ in range(min(block, repeats - r * block)):
                start = time.perf_counter()
                variants[name]()
                ctx.sync()
                samples[name].append(time.perf_counter() - start)
    return {name: summarize(samples[name]) for name in names}


def speedup(slow: dict[str, float], fast: dict[str, float]) -> float:
    """Ratio of median times (> 1: `fast` is faster)."""
    return slow["median_ms"] / fast["median_ms"]


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to `n` inside the block, restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (runnable processes; compare with the core count)."""
    return [round(x, 2) for x in os.getloadavg()]


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bf16_support(device: torch.device) -> tuple[bool, str]:
    """Whether bf16 matmuls are native here, and why (CPU: avx512_bf16 / AMX flags; CUDA: the device)."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, f"torch.cuda.is_bf16_supported() = {ok}"
    flags = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16", "amx_tile"})
    if flags:
        return True, "CPU flags: " + ", ".join(flags)
    return False, "CPU has neither avx512_bf16 nor amx_bf16: bf16 would be emulated"


def machine(ctx: Context) -> dict[str, Any]:
    """The facts a reader needs to compare a run with another: CPU, cores, load, threads, versions."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_at_start": load_average(),
        "threads": ctx.threads,
        "device": str(ctx.device),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16": bf16_support(ctx.device)[1],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "quick": ctx.quick,
    }
    if ctx.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(ctx.device)
        info["tf32"] = torch.backends.cuda.matmul.allow_tf32
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info


def setup_device(name: str) -> torch.device:
    """The device to run on; on CUDA, TF32 matmuls are switched on (as in training)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: CUDA is not available on this machine")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(name)
