"""Training suite: rows/s of `unictr train`'s step on simulated data and on the KuaiRand slice.

The step is `unictr.train.loop.train_step` (forward, weighted BCE, backward, AdamW) on the
trainer's own request minibatches. Variants (fp32, bf16 autocast where the hardware has it, and
fp32 on one thread when the run has more) train identical copies of one initial model, one step
each in turn on the same minibatch, so they see the same data and the same machine load.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import fixtures
from benchmarks.floor import count_flops, floor_ms
from benchmarks.harness import Context, bf16_support, summarize, threads
from unictr.config import Config, load_config
from unictr.data.batch import Schema
from unictr.data.kuairand import convert_kuairand
from unictr.data.reader import load_split
from unictr.model import UnifiedCTR, masked_bce
from unictr.train.loop import make_optimizer, request_minibatches, train_step

# the KuaiRand-Pure files: $UNICTR_KUAIRAND_DIR, else ../shared/data/kuairand beside the checkout
KUAIRAND = Path(os.environ.get("UNICTR_KUAIRAND_DIR") or fixtures.ROOT.parent / "shared" / "data" / "kuairand")
KUAIRAND_CONFIG = fixtures.ROOT / "configs" / "kuairand.yaml"
KUAIRAND_EVAL_FROM = "2022-04-29"


def _variants(ctx: Context) -> dict[str, tuple[int, bool]]:
    """name → (threads, bf16)."""
    out = {"fp32": (ctx.threads, False)}
    if bf16_support(ctx.device)[0]:
        out["bf16"] = (ctx.threads, True)
    if ctx.threads > 1 and ctx.device.type == "cpu":
        out["fp32_1_thread"] = (1, False)
    return out


def measure(ctx: Context, cfg: Config, data_dir: Path) -> dict[str, Any]:
    """Rows/s of each variant over the same training steps."""
    batch_size = ctx.pick(cfg.train.batch_size, 256)
    train_b = load_split(data_dir / "train", Schema.from_config(cfg), cfg.data)
    minibatches = list(request_minibatches(train_b, batch_size, torch.Generator().manual_seed(0)))
    torch.manual_seed(cfg.train.seed)
    initial = UnifiedCTR(cfg)
    weights = torch.tensor([t.weight for t in cfg.tasks], device=ctx.device)
    variants = _variants(ctx)
    probe, first = copy.deepcopy(initial).to(ctx.device).train(), minibatches[0].to(ctx.device)
    flops, _ = count_flops(lambda: masked_bce(probe(first), first, weights)[0].backward())  # forward + backward
    runs = {}
    for name in variants:
        model = copy.deepcopy(initial).to(ctx.device).train()
        runs[name] = (model, make_optimizer(model, cfg.train))
    warmup, steps = ctx.pick(2, 1), ctx.pick(24, 3)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    rows = 0
    names = list(variants)
    for i in range(warmup + steps):
        mb = minibatches[i % len(minibatches)].to(ctx.device)
        for name in names[i % len(names) :] + names[: i % len(names)]:
            n_threads, bf16 = variants[name]
            model, opt = runs[name]
            with threads(n_threads):
                start = time.perf_counter()
                train_step(model, opt, mb, weights, bf16)
                ctx.sync()
                if i >= warmup:
                    seconds[name].append(time.perf_counter() - start)
        rows += mb.num_rows if i >= warmup else 0
    return {
        "batch_size": batch_size,
        "steps": steps,
        "sequence_length": cfg.sequence.max_len if cfg.sequence else 0,
        "sequence_padding": float(1.0 - train_b.seq_mask.float().mean()),  # share of event slots that are padding
        "rows_per_request": train_b.num_rows / train_b.num_users,
        "step_mflop": flops / 1e6,
        "step_mflop_rows": first.num_rows,
        "variants": {
            name: {
                "threads": variants[name][0],
                "bf16": variants[name][1],
                "rows_per_s": rows / sum(seconds[name]),
                "rows_per_s_ceiling": _ceiling(ctx, flops, first.num_rows, *variants[name]),
                "step": summarize(seconds[name]),
            }
            for name in names
        },
    }


def _ceiling(ctx: Context, flops: int, rows: int, n_threads: int, bf16: bool) -> float:
    """Rows/s if the step's matmuls (forward + backward) ran at the peak GEMM rate and nothing else took time."""
    with threads(n_threads):
        return rows / floor_ms(ctx, flops, torch.bfloat16 if bf16 else torch.float32) * 1e3


def kuairand(ctx: Context) -> dict[str, Any]:
    """The KuaiRand slice converted with the repository's adapter and config, then measured; or why not."""
    files = ["log_standard_4_25_to_4_30_pure.csv", "user_features_pure.csv", "video_features_basic_pure.csv",
             "history_before_4_25.parquet"]
    if not all((KUAIRAND / f).is_file() for f in files):
        return {"skipped": f"{KUAIRAND}: the KuaiRand slice is not there (set UNICTR_KUAIRAND_DIR)"}
    if ctx.quick:
        return {"skipped": "--quick (converting the slice takes longer than the quick budget)"}
    cfg = load_config(KUAIRAND_CONFIG)
    out = ctx.workdir / "kuairand"
    log, users, videos, history = (KUAIRAND / f for f in files)
    convert_kuairand([log], users, videos, history, KUAIRAND_EVAL_FROM, out, max_seq_len=cfg.sequence.max_len)
    return measure(ctx, cfg, out)


def run(ctx: Context) -> dict[str, Any]:
    cfg = fixtures.sim_config()
    sim = measure(ctx, cfg, fixtures.sim_data(ctx, ctx.pick(20_000, 3_000)))
    kr = kuairand(ctx)
    out: dict[str, Any] = {
        "rows_per_s": sim["variants"]["fp32"]["rows_per_s"],
        "sim": sim,
        "kuairand": kr,
        "bf16": bf16_support(ctx.device)[1],
    }
    for name, result in (("sim", sim), ("kuairand", kr)):
        if "variants" in result:
            v = result["variants"]
            ctx.log(f"training {name}: " + ", ".join(f"{k} {x['rows_per_s']:,.0f} rows/s" for k, x in v.items()))
            if "bf16" in v:
                out[f"bf16_speedup_{name}"] = v["bf16"]["rows_per_s"] / v["fp32"]["rows_per_s"]
    return out
