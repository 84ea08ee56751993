"""`run_experiment`: train every arm once per seed, score the eval split, write the report."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from unictr.config import Config, with_changes
from unictr.data.batch import Batch, Schema
from unictr.data.reader import load_split
from unictr.experiment.arms import ArmRun, ArmSkipped, train_separate, train_unified
from unictr.experiment.baselines import train_lightgbm
from unictr.experiment.din import train_din
from unictr.experiment.report import build_report, data_meta, machine_info, plot_report, report_markdown
from unictr.threads import resolve_threads

DEFAULT_ARMS = ("unified", "separate", "shared", "lightgbm")  # the unify experiment; the rest are ablations

# Each arm: how it trains, and the config it trains with (the separate arm prunes that per surface).
ARM_PLAN: dict[str, tuple[Callable[..., ArmRun], Callable[[Config], Config]]] = {
    "unified": (train_unified, lambda cfg: cfg),
    "separate": (train_separate, lambda cfg: cfg),
    "shared": (train_unified, lambda cfg: with_changes(cfg, "model.tower", per_surface=False)),
    "lightgbm": (train_lightgbm, lambda cfg: cfg),
    "din": (train_din, lambda cfg: cfg),
    "no_sequence": (train_unified, lambda cfg: with_changes(cfg, "model.sequence", enabled=False)),
    "no_mmoe": (train_unified, lambda cfg: with_changes(cfg, "model.mmoe", enabled=False)),
}
ARMS = tuple(ARM_PLAN)


def run_experiment(
    cfg: Config,
    data: str | Path,
    out: str | Path,
    seeds: tuple[int, ...] = (0,),
    arms: tuple[str, ...] = DEFAULT_ARMS,
    n_boot: int = 1000,
    command: str = "",
    keep_runs: bool = False,
    console: Console | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Train every arm once per seed on `data/train`, score `data/eval`, write the report into `out`.

    Runs (checkpoints, per-surface data subsets) go to `out/runs` with `keep_runs`, else to a temporary
    directory removed at the end. Returns the `report.json` dict.
    """
    console = console or Console()
    data, out = Path(data), Path(out)
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms:
        raise ValueError(f"arms: unknown {bad}, expected some of {list(ARMS)}")
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    schema = Schema.from_config(cfg)
    cfg = with_changes(cfg, "train", threads=resolve_threads(cfg.train.threads))  # one count for every arm
    torch.set_num_threads(cfg.train.threads)
    eval_b = load_split(data / "eval", schema, cfg.data)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "runs" if keep_runs else Path(tempfile.mkdtemp(prefix="runs-", dir=out))
    load_before, started = os.getloadavg(), time.perf_counter()
    try:
        runs, skipped = _train_arms(cfg, data, work, seeds, arms, eval_b, console, show_progress)
    finally:
        if not keep_runs:
            shutil.rmtree(work, ignore_errors=True)
    if not runs:
        raise ValueError("no arm ran: " + "; ".join(skipped.values()))
    report = build_report(schema, eval_b, runs, n_boot)
    report |= {
        "seeds": list(seeds),
        "arms_skipped": skipped,
        "n_boot": n_boot,
        "command": command,
        "data": data_meta(data),
        "machine": machine_info() | {"loadavg_start": load_before},
        "wall_seconds": time.perf_counter() - started,
        "config": cfg.model_dump(mode="json"),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_report(report, out / "auc.png")
    (out / "report.md").write_text(report_markdown(report))
    return report


def _train_arms(
    cfg: Config,
    data: Path,
    work: Path,
    seeds: tuple[int, ...],
    arms: tuple[str, ...],
    eval_b: Batch,
    console: Console,
    show_progress: bool,
) -> tuple[dict[str, dict[int, ArmRun]], dict[str, str]]:
    """Each arm's run per seed, and why each arm that cannot run here was skipped (tried once)."""
    runs: dict[str, dict[int, ArmRun]] = {}
    skipped: dict[str, str] = {}
    for seed in seeds:
        for arm in arms:
            if arm in skipped:
                continue
            trainer, arm_config = ARM_PLAN[arm]
            arm_cfg = with_changes(arm_config(cfg), "train", seed=seed)
            console.print(f"[bold]{arm}[/bold] seed {seed}")
            try:
                run = trainer(arm_cfg, data, work / arm / f"seed{seed}", eval_b, console, show_progress)
            except ArmSkipped as e:
                console.print(f"[yellow]{e}[/yellow]")
                skipped[arm] = str(e)
                continue
            runs.setdefault(arm, {})[seed] = run
            console.print(f"{arm} seed {seed}: {run.train_seconds:.0f}s training, {run.params:,} parameters")
    return runs, skipped
