"""The staging experiment's cost profile per surface, its acceptance checks and its markdown report."""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

import torch

from unictr.config import Config
from unictr.experiment.report import CI_TITLES, _f, _load, diff_ci

CANDIDATES = 500  # a request of 1 user × 500 candidates, as the serving benchmark scores


def cost_profile(run: Path, cfg: Config, data: Path, repeats: int) -> dict[str, dict[str, Any]]:
    """Per surface, of the stage-2 model's export (the unified model cut to that surface, eager, on this
    thread count): parameters, matmul FLOPs per candidate and p50/p99 latency of one request of 1 user ×
    500 candidates, built and timed with the serving benchmark's harness (`benchmarks/`)."""
    from unictr.checkpoint import load_model
    from unictr.export.prune import prune_model

    try:  # the checkout's benchmark harness, as `unictr bench` finds it
        fixtures, floor, harness = (importlib.import_module(f"benchmarks.{m}")
                                    for m in ("fixtures", "floor", "harness"))
    except ModuleNotFoundError as e:
        raise RuntimeError(f"the cost profile uses the benchmark harness in benchmarks/ ({e}); run from a checkout "
                           "of unictr") from None
    full, _ = load_model(run)
    out: dict[str, dict[str, Any]] = {}
    for surface in cfg.surface_names:
        model = prune_model(full, surface)
        batch = fixtures.encode(model, fixtures.make_request(data, cfg, 1, CANDIDATES, surface))
        flops, _ = floor.request_flops(model, batch)
        seconds = []
        with torch.inference_mode():
            for i in range(repeats + 5):
                t0 = time.perf_counter()
                model(batch)
                if i >= 5:  # the first calls warm up
                    seconds.append(time.perf_counter() - t0)
        timing = harness.summarize(seconds)
        out[surface] = {"params": sum(p.numel() for p in model.parameters()), "flops_per_candidate": flops / CANDIDATES,
                        "p50_ms": timing["p50_ms"], "p99_ms": timing["p99_ms"], "repeats": timing["repeats"]}
    return out


def _cell(report: dict[str, Any], view: str, pair: str, surface: str, task: str) -> tuple[Any, Any]:
    d = report["views"][view]["diffs"][pair]
    return d["diff"].get(surface, {}).get(task), d["ci"].get(surface, {}).get(task)


def acceptance(report: dict[str, Any], task: str) -> dict[str, Any]:
    """Issue 18's targets on `task` (the first, click): old surfaces within 0.002 of stage 1 or better, new
    surfaces at least as good as their separate models and within 0.003 of the unified model from scratch,
    stage 2 trained in less time than the model from scratch."""
    old, new = report["stages"]
    checks: dict[str, Any] = {}
    for s in old:
        d, _ = _cell(report, "old", "staged-stage1", s, task)
        checks[f"{s}: staged - stage1 >= -0.002"] = {"value": d, "met": d is not None and d >= -0.002}
    for s in new:
        d, _ = _cell(report, "new", "staged-separate", s, task)
        checks[f"{s}: staged - separate >= 0"] = {"value": d, "met": d is not None and d >= 0}
        d, _ = _cell(report, "new", "staged-scratch", s, task)
        checks[f"{s}: staged - scratch >= -0.003"] = {"value": d, "met": d is not None and d >= -0.003}
    t = report["train_seconds"]
    checks["stage-2 seconds < scratch seconds"] = {"value": [t["staged"], t["scratch"]],
                                                   "met": t["staged"] < t["scratch"]}
    return {"task": task, "checks": checks, "all_met": all(c["met"] for c in checks.values())}


def _md_view(report: dict[str, Any], view: str, title: str) -> list[str]:
    """One view's AUC table: each arm's seed mean (and the oracle's), then each pair's difference [95% CI]."""
    block = report["views"][view]
    arms, pairs = list(block["arms"]), list(block["diffs"])
    first = block["arms"][arms[0]]
    slices = [("overall", t) for t in first["overall"]] * (view == "all")
    slices += [(s, t) for s, tasks in first["surfaces"].items() for t in tasks]
    oracle = any(_get(first, s, t).get("oracle_auc") is not None for s, t in slices)
    cis = [(p, "ci" + k) for p in pairs for k in CI_TITLES if "ci" + k in block["diffs"][p]]
    cols = arms + ["oracle"] * oracle + [f"{p.replace('-', ' − ')} [{CI_TITLES[k[2:]]}]" for p, k in cis]
    lines = ["", f"## {title}", "", "| surface | task | n | positives | " + " | ".join(cols) + " |",
             "| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in cols) + " |"]
    for s, t in slices:
        cells = [_f(_get(block["arms"][a], s, t)["auc"]) for a in arms]
        cells += [_f(_get(first, s, t).get("oracle_auc"))] * oracle
        cells += [diff_ci(block["diffs"][p]["diff"].get(s, {}).get(t), block["diffs"][p][k].get(s, {}).get(t))
                  for p, k in cis]
        cell = _get(first, s, t)
        lines.append(f"| {s} | {t} | {cell['n']:,} | {_f(cell.get('positives'), ',')} | " + " | ".join(cells) + " |")
    return lines


def _get(arm: dict[str, Any], surface: str, task: str) -> dict[str, Any]:
    return arm["overall"][task] if surface == "overall" else arm["surfaces"][surface][task]


def stage_markdown(report: dict[str, Any]) -> str:
    """report.md: what ran, training seconds per stage, the AUC tables per view, the cost profile, the targets."""
    m, (old, new) = report["machine"], report["stages"]
    t = report["train_seconds"]
    lines = [
        f"# Staged unification: {', '.join(old)}, then + {', '.join(new)}", "",
        f"Command: `{report['command']}`", "",
        f"Data: `{report['data'].get('dir')}` (eval_from {report['data'].get('eval_from')}). Seeds "
        f"{report['seeds']}; bootstrap {report['n_boot']} resamples of whole requests. Stage 1: {', '.join(old)} "
        f"rows, {report['epochs']} epochs; stage 2: warm-started from stage 1, {report['stage2_epochs']} epochs over "
        f"the new surfaces' rows and {report.get('stage2_replay', 1):.0%} of the old surfaces' requests (a fresh "
        f"sample each epoch); scratch: one unified model on every row, {report['epochs']} epochs; separate: one "
        "model per new surface.", "",
        f"Machine: {m.get('nproc')} cores, {m.get('cpu')}, torch {m.get('torch')} ({m.get('torch_threads')} "
        f"threads); load average at end {_load(m.get('loadavg_end'))}.", "",
        "## Training seconds (mean per seed)", "", "| stage 1 | stage 2 | stage 1 + 2 | scratch | separate (new) |",
        "| ---: | ---: | ---: | ---: | ---: |",
        f"| {t['stage1']:.0f} | {t['staged']:.0f} | {t['stage1'] + t['staged']:.0f} | {t['scratch']:.0f} | "
        f"{t['separate']:.0f} |",
    ]
    lines += _md_view(report, "old", f"Old surfaces ({', '.join(old)}): regression check against stage 1")
    lines += _md_view(report, "new", f"New surfaces ({', '.join(new)}): against separate models and scratch")
    lines += _md_view(report, "all", "Every surface: staged against the unified model from scratch")
    lines += ["", "## Cost profile per surface export (stage-2 model, 1 user × 500 candidates, eager)", "",
              "| surface | parameters | FLOPs / candidate | p50 ms | p99 ms |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {s} | {c['params']:,} | {c['flops_per_candidate']:,.0f} | {c['p50_ms']:.2f} | {c['p99_ms']:.2f} |"
              for s, c in report["cost"].items()]
    acc = report["acceptance"]
    lines += ["", f"## Targets ({acc['task']} AUC)", "", "| check | value | met? |", "| --- | ---: | --- |"]
    for name, c in acc["checks"].items():
        v = c["value"]
        shown = " vs ".join(f"{x:.0f} s" for x in v) if isinstance(v, list) else _f(v, "+.4f")
        lines.append(f"| {name} | {shown} | {'yes' if c['met'] else '**no**'} |")
    return "\n".join(lines) + "\n"
