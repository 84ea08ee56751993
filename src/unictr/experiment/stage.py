"""`unictr experiment stage`: staged unification. Stage 1 trains on the first group of surfaces only;
stage 2 warm-starts from it (`--init-from`) and trains on every row for fewer epochs, or on the new surfaces'
rows and a replayed sample of the old surfaces' (`train.surface_sample`, a fresh sample each epoch)."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from unictr.config import Config, config_from_dict, cut_train_surfaces, with_changes
from unictr.data.batch import Batch, Schema
from unictr.data.reader import load_split
from unictr.experiment.arms import ArmRun, _train_and_predict, train_separate, train_unified, write_surface_split
from unictr.experiment.report import auc_diff, build_report, data_meta, machine_info, seed_noise


def restrict_config(cfg: Config, surfaces: list[str]) -> Config:
    """The config of a model for `surfaces` only: those surfaces (in the config's order), the trunk features
    and their tower features, and the tasks that apply on one of them (each on those of them it applies to).

    The multi-surface form of `export.prune.prune_config(keep_shapes=False)`: stage 1 of a staged run.
    """
    unknown = sorted(set(surfaces) - set(cfg.surface_names))
    if unknown or not surfaces:
        raise ValueError(f"stages: unknown surface(s) {unknown or surfaces}; the config has {cfg.surface_names}")
    keep = set(surfaces)
    raw = cfg.model_dump(mode="json")
    raw["surfaces"] = [s for s in raw["surfaces"] if s["name"] in keep]
    cut_train_surfaces(raw, keep)
    raw["features"] = [
        {**f, "towers": [s for s in f["towers"] if s in keep]} if f["towers"] else f
        for f in raw["features"]
        if not f["towers"] or keep & set(f["towers"])
    ]
    raw["tasks"] = [
        {**t, "surfaces": None if t["surfaces"] is None else [s for s in t["surfaces"] if s in keep]}
        for t in raw["tasks"]
        if t["surfaces"] is None or keep & set(t["surfaces"])
    ]
    return config_from_dict(raw, f"config restricted to surfaces {sorted(keep)}")


def parse_stages(text: str, cfg: Config) -> list[list[str]]:
    """`"A,B;C,D"` → `[["A", "B"], ["C", "D"]]`: two groups that together hold every surface of the config once."""
    groups = [[s.strip() for s in g.split(",") if s.strip()] for g in text.split(";")]
    flat = [s for g in groups for s in g]
    if len(groups) != 2 or not all(groups):
        raise ValueError(f"--stages: expected two non-empty groups of surfaces as 'A,B;C,D', got {text!r}")
    if sorted(flat) != sorted(cfg.surface_names):
        raise ValueError(f"--stages {text!r}: the groups must hold each surface of the config once; "
                         f"the config has {cfg.surface_names}")
    return groups


@dataclass
class _View:
    """The eval rows of some surfaces, in the schema of the config restricted to them, and where those rows
    and tasks sit in the full eval batch."""

    cfg: Config
    schema: Schema
    batch: Batch
    rows: np.ndarray  # indices into the full eval batch, in order
    tasks: list[int]  # the full schema's task index of each of this view's tasks
    split: Path  # the view's eval rows as a split directory

    @classmethod
    def of(cls, cfg: Config, surfaces: list[str], data: Path, split_dir: Path, full: Batch) -> _View:
        sub = restrict_config(cfg, surfaces)
        write_surface_split(data / "eval", split_dir, cfg.data.surface, surfaces)
        schema = Schema.from_config(sub)
        full_schema = Schema.from_config(cfg)
        on = np.isin(full.surface.numpy(), [full_schema.surfaces.index(s) for s in surfaces])
        tasks = [full_schema.tasks.index(t) for t in schema.tasks]
        return cls(sub, schema, load_split(split_dir, schema, cfg.data), np.flatnonzero(on), tasks, split_dir)

    def cut(self, run: ArmRun) -> ArmRun:
        """An arm's run with its full-eval predictions cut to this view's rows and tasks."""
        return replace(run, probs=run.probs[self.rows][:, self.tasks])


def _stage_runs(
    cfg: Config, data: Path, work: Path, groups: list[list[str]], seed: int, stage2: Config,
    views: dict[str, _View], full: Batch, console: Console, show_progress: bool,
) -> dict[str, ArmRun]:
    """One seed: stage 1 (first group's rows), stage 2 (the `stage2` config warm-started from stage 1), the
    unified model from scratch and separate models for the second group. Each arm's predictions on the full
    eval batch."""
    cfg = with_changes(cfg, "train", seed=seed)
    cfg1 = restrict_config(cfg, groups[0])
    data1 = work / "data" / "stage1"
    if not (data1 / "train").is_dir():
        write_surface_split(data / "train", data1 / "train", cfg.data.surface, groups[0])
    console.print(f"[bold]stage 1[/bold] seed {seed}: {', '.join(groups[0])}")
    p1, s1, n1, i1 = _train_and_predict(cfg1, data1, work / f"seed{seed}" / "stage1", views["old"].split,
                                        console, show_progress)
    stage1 = np.full((full.num_rows, len(cfg.tasks)), np.nan, dtype=np.float32)
    stage1[np.ix_(views["old"].rows, views["old"].tasks)] = p1
    console.print(f"[bold]stage 2[/bold] seed {seed}: every surface, {stage2.train.epochs} epochs, warm-started, "
                  f"old surfaces' requests sampled {stage2.train.surface_sample or 'all'}")
    cfg2 = with_changes(stage2, "train", seed=seed)
    p2, s2, n2, i2 = _train_and_predict(cfg2, data, work / f"seed{seed}" / "stage2", data / "eval", console,
                                        show_progress, init_from=work / f"seed{seed}" / "stage1")
    console.print(f"[bold]scratch[/bold] seed {seed}: every surface, {cfg.train.epochs} epochs")
    scratch = train_unified(cfg, data, work / f"seed{seed}" / "scratch", full, console, show_progress)
    console.print(f"[bold]separate[/bold] seed {seed}: {', '.join(groups[1])}")
    separate = train_separate(cfg, data, work / f"seed{seed}" / "separate", full, console, show_progress,
                              surfaces=groups[1])
    return {"stage1": ArmRun(stage1, s1, n1, {"all": i1}), "staged": ArmRun(p2, s2, n2, {"all": i2}),
            "scratch": scratch, "separate": separate}


# (view, arms compared in it, pairs whose AUC difference gets a bootstrap interval)
_COMPARISONS = {
    "old": (("stage1", "staged", "scratch"), (("staged", "stage1"), ("staged", "scratch"))),
    "new": (("staged", "scratch", "separate"), (("staged", "separate"), ("staged", "scratch"))),
    "all": (("staged", "scratch"), (("staged", "scratch"),)),
}


def run_stage_experiment(  # long: the experiment's steps in order, each a call
    cfg: Config, data: str | Path, out: str | Path, stages: str, seeds: tuple[int, ...] = (0,),
    stage2_epochs: int | None = None, stage2_replay: float = 1.0, n_boot: int = 1000, latency_repeats: int = 200,
    command: str = "",
    keep_runs: bool = False, console: Console | None = None, show_progress: bool = False,
) -> dict[str, Any]:
    """Train the staged arms per seed, compare them per view (old surfaces, new surfaces, all), measure each
    surface's export, write `report.json` and `report.md` into `out`; returns the report.

    Stage 2 trains `stage2_epochs` (default 3/4 of the config's, rounded up) on every new-surface row and a
    fraction `stage2_replay` of the old surfaces' requests, sampled afresh each epoch (1 = every row)."""
    from unictr.experiment.stage_report import acceptance, cost_profile, stage_markdown

    console = console or Console()
    data, out = Path(data), Path(out)
    groups = parse_stages(stages, cfg)
    if not 0 < stage2_replay <= 1:
        raise ValueError(f"stage2_replay: a fraction in (0, 1], got {stage2_replay}")
    replay = {s: stage2_replay for s in groups[0]} if stage2_replay < 1 else {}
    cfg2 = with_changes(cfg, "train", epochs=stage2_epochs or -(-3 * cfg.train.epochs // 4), surface_sample=replay)
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    torch.set_num_threads(cfg.train.threads)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "runs" if keep_runs else Path(tempfile.mkdtemp(prefix="runs-", dir=out))
    started = time.perf_counter()
    try:
        full = load_split(data / "eval", Schema.from_config(cfg), cfg.data)
        views = {"old": _View.of(cfg, groups[0], data, work / "data" / "stage1" / "eval", full),
                 "new": _View.of(cfg, groups[1], data, work / "data" / "new" / "eval", full)}
        runs: dict[str, dict[int, ArmRun]] = {}
        for seed in seeds:
            for arm, run in _stage_runs(cfg, data, work, groups, seed, cfg2, views, full, console,
                                        show_progress).items():
                runs.setdefault(arm, {})[seed] = run
        cost = cost_profile(work / f"seed{seeds[0]}" / "stage2", cfg, data, latency_repeats)
    finally:
        if not keep_runs:
            shutil.rmtree(work, ignore_errors=True)
    report = _compare(cfg, views, full, runs, n_boot) | {
        "stages": groups, "stage2_epochs": cfg2.train.epochs,
        "stage2_replay": stage2_replay, "epochs": cfg.train.epochs, "seeds": list(seeds),
        "train_seconds": {a: float(np.mean([r.train_seconds for r in by.values()])) for a, by in runs.items()},
        "cost": cost, "n_boot": n_boot, "command": command, "data": data_meta(data), "machine": machine_info(),
        "wall_seconds": time.perf_counter() - started, "config": cfg.model_dump(mode="json"),
    }
    report["acceptance"] = acceptance(report, cfg.task_names[0])
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(stage_markdown(report))
    return report


def _compare(
    cfg: Config, views: dict[str, _View], full: Batch, runs: dict[str, dict[int, ArmRun]], n_boot: int
) -> dict[str, Any]:
    """Per view: `experiment unify`'s metrics per arm, and the bootstrap intervals of the compared pairs."""
    out: dict[str, Any] = {}
    for view, (arms, pairs) in _COMPARISONS.items():
        if view == "all":
            schema, batch, cut = Schema.from_config(cfg), full, (lambda r: r)
        else:
            v = views[view]
            schema, batch, cut = v.schema, v.batch, v.cut
        by_arm = {a: {seed: cut(r) for seed, r in runs[a].items()} for a in arms}
        block = build_report(schema, batch, by_arm, n_boot)
        block["diffs"] = {}
        for a, b in pairs:
            diff, ci = auc_diff(schema, batch, by_arm[a], by_arm[b], n_boot, overall=view == "all")
            block["diffs"][f"{a}-{b}"] = {"diff": diff, "ci": ci}
            if seed_noise(by_arm[a], by_arm[b]):
                block["diffs"][f"{a}-{b}"]["ci_seeds"] = auc_diff(
                    schema, batch, by_arm[a], by_arm[b], n_boot, view == "all", resample_seeds=True
                )[1]
        out[view] = block
    return {"views": out}
