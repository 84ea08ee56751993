"""Scale suite: training rows/s and peak resident memory as the training split grows (100k, 1M, 10M
simulated rows), and 1 against 2 processes under torchrun.

Each measurement is a fresh process running `unictr.train.loop.train` on the sim config for the same
number of optimizer steps (the stream reads the split's row groups in a shuffled order through the bounded
shuffle buffer, so a larger split must cost neither memory nor speed), with no eval split and no mid-run
checkpoints. Peak RSS is the process's own high-water mark (`ru_maxrss`), measured, not estimated. The
splits are simulated once into a cache directory (`UNICTR_BENCH_CACHE`, default ~/.cache/unictr/bench):
the 10M-row split takes ~2 minutes and ~10 GB to simulate, once.

Not part of `--suite all` (it takes ~10 minutes); run it with `unictr bench --suite scale`.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from benchmarks.fixtures import SIM_CONFIG
from benchmarks.harness import Context
from unictr.data.simulate import simulate

SIZES = (100_000, 1_000_000, 10_000_000)
QUICK_SIZES = (2_000, 4_000, 8_000)
DDP_ROWS = 1_000_000  # the split the 1- and 2-process runs train on


def cache_dir() -> Path:
    return Path(os.environ.get("UNICTR_BENCH_CACHE", Path.home() / ".cache" / "unictr" / "bench"))


def cached_split(rows: int, root: Path) -> Path:
    """A data directory holding only the `train/` split of a `rows`-row simulation (made once under `root`)."""
    sim = root / f"sim-{rows}-seed0"
    if not (sim / "meta.json").is_file():
        simulate(rows=rows, seed=0, out=sim)
    only_train = root / f"sim-{rows}-seed0-train-only"
    only_train.mkdir(parents=True, exist_ok=True)
    if not (only_train / "train").exists():
        (only_train / "train").symlink_to(sim / "train", target_is_directory=True)
    return only_train


def _config(path: Path, steps: int, threads: int) -> Path:
    raw = yaml.safe_load(SIM_CONFIG.read_text())
    raw["train"].update(epochs=1000, max_steps=steps, threads=threads, checkpoint_every_steps=None,
                        keep_checkpoints=1, device="cpu")
    path.write_text(yaml.safe_dump(raw))
    return path


def _measure(cmd: list[str], workdir: Path, ctx: Context) -> dict[str, Any]:
    """Run one training process (or torchrun job) and read the JSON line its rank 0 prints."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("{")][-1]
    result = json.loads(line)
    ctx.log(f"  {result}")
    return result


def run(ctx: Context) -> dict[str, Any]:
    steps = ctx.pick(400, 6)
    root = cache_dir() if not ctx.quick else ctx.workdir / "scale-cache"
    worker = [sys.executable, "-m", "benchmarks.scale"]
    rows_per_s, peak_rss_mb = {}, {}
    with tempfile.TemporaryDirectory(dir=ctx.workdir) as tmp:
        work = Path(tmp)
        cfg = _config(work / "sim.yaml", steps, ctx.threads)
        for rows in ctx.pick(SIZES, QUICK_SIZES):
            ctx.log(f"[scale] {rows:,} rows, {steps} steps, {ctx.threads} thread(s)")
            data = cached_split(rows, root)
            r = _measure([*worker, str(cfg), str(data), str(work / f"run-{rows}")], work, ctx)
            rows_per_s[str(rows)], peak_rss_mb[str(rows)] = r["rows_per_s"], r["peak_rss_mb"]
        ddp_rows = ctx.pick(DDP_ROWS, QUICK_SIZES[-1])
        data = cached_split(ddp_rows, root)
        one = _config(work / "one.yaml", steps, 1)
        ddp = {"rows": ddp_rows, "steps": steps, "threads_per_process": 1}
        for n in (1, 2):
            ctx.log(f"[scale] torchrun --nproc-per-node {n}, {ddp_rows:,} rows")
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "-m",
                   "benchmarks.scale", str(one), str(data), str(work / f"ddp-{n}")]
            r = _measure(cmd, work, ctx)
            ddp[f"{n}_process"] = {"rows_per_s": r["rows_per_s"], "peak_rss_mb_rank0": r["peak_rss_mb"]}
        ddp["speedup_2_vs_1"] = ddp["2_process"]["rows_per_s"] / ddp["1_process"]["rows_per_s"]
    rates = list(rows_per_s.values())
    return {
        "rows_per_s": rows_per_s,
        "peak_rss_mb": peak_rss_mb,
        "rows_per_s_spread": max(rates) / min(rates) - 1.0,  # the largest over the smallest, minus 1
        "rss_largest_over_middle": peak_rss_mb[str(ctx.pick(SIZES, QUICK_SIZES)[-1])]
        / peak_rss_mb[str(ctx.pick(SIZES, QUICK_SIZES)[1])],
        "steps": steps,
        "ddp": ddp,
    }


def _worker(config: str, data: str, run_dir: str) -> None:
    """Train (one process, or one rank under torchrun); rank 0 prints its rows/s and peak RSS as JSON."""
    from rich.console import Console

    from unictr.config import load_config
    from unictr.train.loop import train

    manifest = train(load_config(Path(config)), data, run_dir, console=Console(quiet=True), show_progress=False)
    history = manifest["history"]
    rows, seconds = sum(h["rows"] for h in history), sum(h["train_seconds"] for h in history)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps({"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds,
                          "peak_rss_mb": peak_kb / 1024, "steps": manifest["train_state"]["step"]}))


if __name__ == "__main__":
    _worker(*sys.argv[1:4])
