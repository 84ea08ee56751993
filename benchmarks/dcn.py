"""DCN suite: the DCNv2 projection width against AUC, parameters and serving latency, and one unified
model's surface exports against separate models per surface (docs/model.md, *Projection width*).

The projection (`model.dcn.out_dim`) shrinks the trunk output the towers read; `null` passes the cross
layers' output (tasks × `mmoe.expert_dim` wide) unprojected. For each width the unified model is trained
with `unictr experiment unify`'s machinery (arm `unified`, the width set by `with_changes`), and every
surface is exported with ONNX; the separate arm (one model per surface, the config restricted to it, at
the config's own width) is trained and exported alike. Then, per surface, every export scores the same
request of 1 user × 500 candidates in-process (`Scorer.score` on the `candidate_columns` JSON bytes,
ONNX Runtime, the suite's threads), interleaved by `harness.compare` so load changes hit every export
alike; `model_only` times the forward pass alone on the encoded batch.

On KuaiRand (train 04-25 … 04-29, evaluate 04-30, `configs/kuairand.yaml`; the slice found as the
training suite finds it). Run only when named: `unictr bench --suite dcn --threads 1` (15 minutes
on 2 shared cores). `--quick` runs the same steps on a small simulation (two widths, a few repeats).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks import fixtures
from benchmarks.floor import request_flops
from benchmarks.harness import Context, compare, threads
from benchmarks.training import KUAIRAND, KUAIRAND_CONFIG
from unictr.config import Config, load_config, with_changes
from unictr.data.kuairand import convert_kuairand
from unictr.experiment.run import run_experiment
from unictr.export.job import export_surface
from unictr.serving.request import to_columns
from unictr.serving.scorer import Scorer

WIDTHS: tuple[int | None, ...] = (16, 32, 64, 128, None)
QUICK_WIDTHS: tuple[int | None, ...] = (8, None)
SEEDS = (0,)  # one training seed per width; docs/model.md adds seeds 1 and 2 with `experiment unify`
EVAL_FROM = "2022-04-30"  # train 04-25 … 04-29
USERS, CANDIDATES = 1, 500
REPEATS, BLOCK = 500, 20  # p99 of 500 calls: the fifth slowest


def label(width: int | None) -> str:
    """The width's name in results: its number, or `none` (no projection)."""
    return "none" if width is None else str(width)


def _setup(ctx: Context) -> tuple[Config, Path, tuple[int | None, ...]] | str:
    """(config, data directory, widths), or why the suite cannot run here."""
    if ctx.quick:
        cfg = with_changes(fixtures.sim_config(), "train", epochs=1, threads=ctx.threads)
        return cfg, fixtures.sim_data(ctx, 3_000), QUICK_WIDTHS
    files = ["log_standard_4_25_to_4_30_pure.csv", "user_features_pure.csv", "video_features_basic_pure.csv",
             "history_before_4_25.parquet"]
    if not all((KUAIRAND / f).is_file() for f in files):
        return f"{KUAIRAND}: the KuaiRand slice is not there (set UNICTR_KUAIRAND_DIR)"
    cfg = with_changes(load_config(KUAIRAND_CONFIG), "train", threads=ctx.threads)
    out = ctx.workdir / "kuairand"
    log, users, videos, history = (KUAIRAND / f for f in files)
    convert_kuairand([log], users, videos, history, EVAL_FROM, out, max_seq_len=cfg.sequence.max_len)
    return cfg, out, WIDTHS


def _train(ctx: Context, cfg: Config, data: Path, arm: str, name: str) -> tuple[dict[str, Any], Path]:
    """One arm trained per seed (`run_experiment`, runs kept); (its report entry, its runs directory)."""
    out = ctx.workdir / name
    report = run_experiment(cfg, data, out, seeds=SEEDS, arms=(arm,), n_boot=0, keep_runs=True,
                            console=Console(quiet=True))
    entry = report["arms"][arm]
    ctx.log(f"[dcn] {name}: {entry['train_seconds']:.0f} s training per seed, {entry['params']:,} parameters")
    return entry, out / "runs" / arm / f"seed{SEEDS[0]}"


def _export(ctx: Context, run_dir: Path, surface: str, name: str) -> Path:
    """The ONNX export of `surface` from `run_dir`, under the work directory's exports/<name>/<surface>."""
    out = ctx.workdir / "exports" / name / surface
    export_surface(run_dir, surface, out, fmt="onnx")
    return out


def _aucs(entry: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Seed-mean AUC per surface and task of an arm's report entry."""
    return {s: {t: m.get("auc") for t, m in tasks.items()} for s, tasks in entry["surfaces"].items()}


def _latency(ctx: Context, cfg: Config, data: Path, surface: str, exports: dict[str, Path]) -> dict[str, Any]:
    """Per export of `surface`: parameters, matmul MFLOP and 1 × 500 latency (score, model only)."""
    request = fixtures.make_request(data, cfg, USERS, CANDIDATES, surface=surface)
    body = json.dumps(to_columns(request)).encode()
    with threads(ctx.threads):  # ONNX Runtime sizes its pool when the session is made
        scorers = {name: Scorer.load(path, backend="onnx") for name, path in exports.items()}
    batches = {name: s.encode(s.parse(body)).batch for name, s in scorers.items()}
    repeats = ctx.pick(REPEATS, 5)
    with threads(ctx.threads):
        score = compare(ctx, {n: lambda s=s: s.score(body) for n, s in scorers.items()}, repeats, block=BLOCK)
        model = compare(ctx, {n: lambda s=s, b=batches[n]: s.predict(b) for n, s in scorers.items()}, repeats,
                        block=BLOCK)
    return {
        name: {
            "params": sum(p.numel() for p in s.model.parameters()),
            "mflop": request_flops(s.model, batches[name])[0] / 1e6,
            "score": score[name],
            "model_only": model[name],
        }
        for name, s in scorers.items()
    }


def run(ctx: Context) -> dict[str, Any]:
    setup = _setup(ctx)
    if isinstance(setup, str):
        return {"skipped": setup}
    cfg, data, widths = setup
    surfaces = [s.name for s in cfg.surfaces]
    exports: dict[str, dict[str, Path]] = {s: {} for s in surfaces}
    arms: dict[str, Any] = {}
    for width in widths:
        name = f"width_{label(width)}"
        entry, run_dir = _train(ctx, with_changes(cfg, "model.dcn", out_dim=width), data, "unified", name)
        arms[name] = {"out_dim": width, "aucs": _aucs(entry), "params": entry["params"],
                      "train_seconds": entry["train_seconds"]}
        for s in surfaces:
            exports[s][name] = _export(ctx, run_dir, s, name)
    entry, runs = _train(ctx, cfg, data, "separate", "separate")
    arms["separate"] = {"out_dim": cfg.model.dcn.out_dim, "aucs": _aucs(entry), "params": entry["params"],
                        "train_seconds": entry["train_seconds"]}
    for s in surfaces:  # the separate arm keeps one run per surface under runs/<surface>
        exports[s]["separate"] = _export(ctx, runs / "runs" / s, s, "separate")
    serving = {s: _latency(ctx, cfg, data, s, exports[s]) for s in surfaces}
    for s in surfaces:
        ctx.log(f"[dcn] {s}: " + ", ".join(f"{n} p99 {v['score']['p99_ms']:.2f} ms" for n, v in serving[s].items()))
    return {
        "data": "simulated (quick)" if ctx.quick else f"KuaiRand-Pure, train 04-25..04-29, eval {EVAL_FROM}",
        "unified_out_dim": cfg.model.dcn.out_dim,
        "surfaces": surfaces,
        "request": f"{USERS} user x {CANDIDATES} candidates, candidate_columns JSON, onnx",
        "arms": arms,
        "serving": serving,
    }
