"""Serving suite: latency of one exported surface model for a request of 1 user × 500 candidates.

A small run is trained on simulated data and its `home_feed` surface exported with ONNX. The same
request (JSON bytes, candidates as `candidate_columns`) is scored in-process by `Scorer.score`
(validation, encoding and the model: everything but HTTP) with each backend (eager, `torch.compile`,
ONNX Runtime; fp32, and bf16 autocast where the hardware has it), then again with the candidate
columns as numpy arrays (an in-process caller's request: no JSON, validated per array), then over HTTP
by the real server (`unictr serve` in a child process on 127.0.0.1) with the eager backend, the
fastest one, and ONNX on one thread (the advised configuration), that also with `--inline`. The
fastest backend also scores the request with one object per candidate (`candidates`), side by side
with the two columnar forms.
Latencies are client-side wall times; p99 is also reported as a multiple of the request's FLOP floor
(see the floor suite).

The headline (`backend`, `p50_ms`, `p99_ms`, `floor_ms`) is the configuration docs/serving.md advises:
ONNX Runtime on one thread (one server process per core), scoring the in-process request form
(numpy columns); `fastest` is the variant with the lowest median on the JSON request, whatever its
thread count. Every variant's ratio to its own floor is in `*_x_floor` either way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import torch
from rich.console import Console

from benchmarks import fixtures
from benchmarks.floor import floor_ms, request_flops
from benchmarks.harness import Context, bf16_support, compare, summarize, threads
from unictr.config import with_changes
from unictr.export.job import export_surface
from unictr.serving.process import server_process
from unictr.serving.registry import Registry
from unictr.serving.request import to_columns, to_numpy_columns
from unictr.serving.scorer import Scorer
from unictr.train.loop import train

USERS, CANDIDATES = 1, 500
BLOCK = 20  # consecutive timed calls per variant and round: latency of one configuration (harness.compare)
# Timed calls per variant. A p99 needs them: of 200 calls it is the second slowest, so one stall of the
# shared machine (a few slow calls in a row) decides it (docs/performance.md); of 1,000 it is the tenth.
REPEATS = 1000
SERVER_START_TIMEOUT_S = 600  # the compile backend compiles before it serves


def trained_export(ctx: Context) -> Path:
    """A surface export (safetensors + ONNX) of one short training epoch on simulated data."""
    cfg = with_changes(fixtures.sim_config(), "train", epochs=1, threads=ctx.threads, device=ctx.device.type)
    run = ctx.workdir / "serving-run"
    train(cfg, fixtures.sim_data(ctx, ctx.pick(20_000, 3_000)), run, console=Console(quiet=True), show_progress=False)
    out = ctx.workdir / "serving-export"
    export_surface(run, fixtures.SURFACE, out, fmt="onnx")
    return out


def _variants(ctx: Context) -> dict[str, tuple[int, dict[str, Any]]]:
    """(threads, Scorer options) per variant: every backend in fp32, eager/compile in bf16 where native,
    and eager/ONNX fp32 on one thread when the run has more."""
    out: dict[str, dict[str, Any]] = {"eager_fp32": {"backend": "eager"}}
    bf16 = bf16_support(ctx.device)[0]
    if bf16:
        out["eager_bf16"] = {"backend": "eager", "bf16": True}
    if not ctx.quick:  # compiling takes a minute or more per variant
        out["compile_fp32"] = {"backend": "compile"}
        if bf16:
            out["compile_bf16"] = {"backend": "compile", "bf16": True}
    cpu = ctx.device.type == "cpu"
    if cpu:
        out["onnx_fp32"] = {"backend": "onnx"}
    variants = {name: (ctx.threads, options) for name, options in out.items()}
    if cpu and ctx.threads > 1:
        variants |= {"eager_fp32_1_thread": (1, out["eager_fp32"]), "onnx_fp32_1_thread": (1, out["onnx_fp32"])}
    return variants


def _headline(variants: dict[str, tuple[int, dict[str, Any]]], fastest: str) -> str:
    """The variant of the headline numbers: ONNX Runtime on one thread, the configuration docs/serving.md
    advises (one server process per core; on a shared machine 2 threads per request are far slower,
    docs/performance.md), or the fastest where no such variant runs (a GPU run has no ONNX)."""
    return next((name for name, (n, options) in variants.items() if options["backend"] == "onnx" and n == 1), fastest)


def _on(n_threads: int, fn: Callable[..., object], *args: Any) -> Callable[[], object]:
    """`fn(*args)` with torch on `n_threads` threads."""

    def call() -> object:
        with threads(n_threads):
            return fn(*args)

    return call


def _http(
    ctx: Context, registry: Path, variant: tuple[int, dict[str, Any]], body: bytes, repeats: int,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Client-side latency of `repeats` sequential requests to a fresh `unictr serve` process (with the
    `extra` CLI arguments)."""
    n_threads, options = variant
    args = ["--backend", options["backend"], "--poll-seconds", "30", *(["--bf16"] if options.get("bf16") else []),
            *extra]
    log = ctx.workdir / f"server-{n_threads}-{options['backend']}{''.join(extra)}.log"
    with server_process(registry, log, n_threads, *args) as (server, port), httpx.Client(timeout=60) as client:
        url = f"http://127.0.0.1:{port}/v1/surfaces/{fixtures.SURFACE}/score"
        started = time.perf_counter()
        while not _live(client, port):
            if server.poll() is not None or time.perf_counter() - started > SERVER_START_TIMEOUT_S:
                raise RuntimeError(f"the server did not start; see its log:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        for _ in range(ctx.pick(10, 2)):  # warm-up
            client.post(url, content=body).raise_for_status()
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            client.post(url, content=body).raise_for_status()
            seconds.append(time.perf_counter() - start)
    return summarize(seconds)


def _live(client: httpx.Client, port: int) -> bool:
    try:
        live = client.get(f"http://127.0.0.1:{port}/healthz").json()["live"]
    except (httpx.TransportError, ValueError, KeyError):
        return False
    return live.get(fixtures.SURFACE) is not None


def run(ctx: Context) -> dict[str, Any]:
    export = trained_export(ctx)
    cfg = fixtures.sim_config()
    request = fixtures.make_request(fixtures.sim_data(ctx, ctx.pick(20_000, 3_000)), cfg, USERS, CANDIDATES)
    body = json.dumps(to_columns(request)).encode()  # candidate_columns: the layout for large requests
    row_body = json.dumps(request).encode()  # the same request, one object per candidate
    repeats = ctx.pick(REPEATS, 5)

    variants = _variants(ctx)
    scorers, setup_s = {}, {}
    for name, (n_threads, options) in variants.items():
        start = time.perf_counter()
        with threads(n_threads):  # ONNX Runtime sizes its thread pool when the session is made
            scorers[name] = Scorer.load(export, device=ctx.device.type, **options)
        setup_s[name] = time.perf_counter() - start
    reference = scorers["eager_fp32"].score(body).probabilities
    max_diff = {name: float(abs(s.score(body).probabilities - reference).max()) for name, s in scorers.items()}
    scoring = {name: _on(variants[name][0], s.score, body) for name, s in scorers.items()}
    in_process = compare(ctx, scoring, repeats, block=BLOCK)
    arrays = to_numpy_columns(json.loads(body))  # the same request as an in-process caller holds it
    with_arrays = compare(ctx, {name: _on(variants[name][0], s.score, arrays) for name, s in scorers.items()},
                          repeats, block=BLOCK)

    eager = scorers["eager_fp32"]  # where the time goes: validation, encoding (any backend), then the model
    parsed, parsed_rows = eager.parse(body), eager.parse(row_body)
    batch = eager.encode(parsed).batch
    stages = compare(
        ctx,
        {
            "parse_columns": partial(eager.parse, body),
            "encode_columns": partial(eager.encode, parsed),
            "parse_rows": partial(eager.parse, row_body),
            "encode_rows": partial(eager.encode, parsed_rows),
        },
        repeats,
        block=BLOCK,
    )
    predicting = {name: _on(variants[name][0], s.predict, batch) for name, s in scorers.items()}
    model_only = compare(ctx, predicting, repeats, block=BLOCK)
    flops, _ = request_flops(eager.model, batch.to(ctx.device))
    floors = {"fp32": floor_ms(ctx, flops)}
    if bf16_support(ctx.device)[0]:
        floors["bf16"] = floor_ms(ctx, flops, torch.bfloat16)

    def floor_of(variant: str) -> float:
        """The variant's floor: its dtype's peak rate at its thread count."""
        with threads(variants[variant][0]):
            return floor_ms(ctx, flops, torch.bfloat16 if variants[variant][1].get("bf16") else torch.float32)

    best = min(in_process, key=lambda name: in_process[name]["median_ms"])
    headline = _headline(variants, best)
    floor = floor_of(headline)
    on_best = partial(_on, variants[best][0], scorers[best].score)
    layouts = compare(
        ctx,
        {"candidate_columns": on_best(body), "candidates": on_best(row_body), "numpy_columns": on_best(arrays)},
        repeats,
        block=BLOCK,
    )
    http, http_variant = {}, {}  # server configuration → its result, and the in-process variant it runs
    if ctx.device.type == "cpu":
        registry = Registry(ctx.workdir / "registry")
        version = registry.publish(fixtures.SURFACE, export)
        registry.promote(fixtures.SURFACE, version, force=True)
        # eager, the fastest, and the configuration docs/serving.md advises (one thread per server process),
        # that also scoring on the event loop's thread (--inline)
        servers = [(n, n, ()) for n in dict.fromkeys(("eager_fp32", best, "onnx_fp32_1_thread")) if n in variants]
        if "onnx_fp32_1_thread" in variants:
            servers.append(("onnx_fp32_1_thread_inline", "onnx_fp32_1_thread", ("--inline",)))
        for key, name, extra in servers:
            http[key] = _http(ctx, registry.root, variants[name], body, repeats, extra)
            http_variant[key] = name
    top, fast, fast_floor = with_arrays[headline], in_process[best], floor_of(best)
    ctx.log(
        f"serving 1x500 in-process: {headline} (numpy request) p50 {top['p50_ms']:.2f} ms, p99 {top['p99_ms']:.2f} ms"
        f" = {top['p99_ms'] / floor:.1f}x its floor; fastest {best} (JSON request) p50 {fast['p50_ms']:.2f} ms, "
        f"p99 {fast['p99_ms']:.2f} ms = {fast['p99_ms'] / fast_floor:.1f}x its floor"
    )
    return {
        "surface": fixtures.SURFACE,
        "request": f"{USERS} user x {CANDIDATES} candidates",
        "request_form": "numpy_columns",
        "backend": headline,
        "p50_ms": top["p50_ms"],
        "p99_ms": top["p99_ms"],
        "floor_ms": floor,
        "p99_x_floor": top["p99_ms"] / floor,
        "fastest": {
            "backend": best, "request_form": "json_bytes", "p50_ms": fast["p50_ms"], "p99_ms": fast["p99_ms"],
            "floor_ms": fast_floor, "p99_x_floor": fast["p99_ms"] / fast_floor,
        },
        "mflop": flops / 1e6,
        "floors_ms": floors,
        "in_process": in_process,
        "in_process_x_floor": {name: t["p99_ms"] / floor_of(name) for name, t in in_process.items()},
        "in_process_numpy": with_arrays,
        "in_process_numpy_x_floor": {name: t["p99_ms"] / floor_of(name) for name, t in with_arrays.items()},
        "stages": stages,
        "request_layouts": layouts,
        "model_only": model_only,
        "model_only_x_floor": {name: t["p99_ms"] / floor_of(name) for name, t in model_only.items()},
        "http": http if http else {"skipped": "the HTTP server runs on the CPU"},
        "http_x_floor": {key: t["p99_ms"] / floor_of(http_variant[key]) for key, t in http.items()},
        "setup_s": setup_s,
        "max_abs_diff_vs_eager_fp32": max_diff,
        "bf16": bf16_support(ctx.device)[1],
    }
