"""Embedding suite: the fused single-table lookup against one `nn.EmbeddingBag` per feature.

26 categorical features (table sizes from 100k rows down to 4, like a hashed click log), 16-dim
rows, a batch of 4096 examples with 1 or 10 ids per bag. Forward: inference lookup of the whole
batch. Training step: forward + backward + optimizer step with a linear read-out as the loss,
under three optimizers: row-wise Adagrad (the headline: fused into the lookup's backward in the
fused layout, `train.embedding_optimizer: rowwise_adagrad`, as FBGEMM's table-batched kernels do;
torch's Adagrad on row-sparse gradients per feature in the loop), row-sparse SGD (each step
touches only the rows looked up) and dense AdamW (`unictr train`'s default for the table: every
row's moments move every step, so the step costs O(table) either way). Both layouts start from the
same weights; the suite checks they compute the same output. Each variant is timed in blocks of
consecutive calls (`BLOCK`), as a training loop runs one configuration step after step: timed one call
per variant in turn, a step pays for the previous variant's allocations and cache traffic
(docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks.harness import Context, compare, speedup
from unictr.modules.embedding import FusedEmbedding, RowwiseAdagrad

FEATURES = 26
DIM = 16
BAG_SIZES = (1, 10)
LR = 0.01
# Consecutive timed calls per variant and round (after harness.SETTLE_CALLS untimed ones). One call per
# variant in turn charged each step for the other variants' traffic, not its own cost (measurements in
# docs/performance.md, "What each optimisation bought").
BLOCK = 5


def table_sizes(largest: int) -> list[int]:
    """26 table sizes spaced geometrically from `largest` rows down to 4."""
    return [int(s) for s in np.geomspace(largest, 4, FEATURES).round()]


class PerFeature(nn.Module):
    """The baseline: one `nn.EmbeddingBag` per feature, looked up in a Python loop."""

    def __init__(self, sizes: list[int], sparse: bool) -> None:
        super().__init__()
        self.bags = nn.ModuleList(nn.EmbeddingBag(s, DIM, mode="sum", sparse=sparse) for s in sizes)

    def forward(self, ids: Tensor) -> Tensor:
        """ids `[B, F, k]` (local rows) → `[B, F·D]`."""
        return torch.cat([bag(ids[:, f]) for f, bag in enumerate(self.bags)], dim=1)


class Fused(nn.Module):
    """The model's layout: every table in one `FusedEmbedding`, one lookup for all features."""

    def __init__(self, sizes: list[int], sparse: bool) -> None:
        super().__init__()
        self.table = FusedEmbedding([f"f{i}" for i in range(len(sizes))], sizes, DIM, sparse=sparse)
        self.register_buffer("feature_offsets", self.table.offsets[:, None].clone(), persistent=False)

    def forward(self, ids: Tensor) -> Tensor:
        b, f, k = ids.shape
        rows = (ids + self.feature_offsets).view(b * f, k)
        return self.table(rows.view(-1) if k == 1 else rows).view(b, f * DIM)


def _fbgemm() -> tuple[Any, str | None]:
    """fbgemm_gpu's training TBE module class, or None and why not."""
    try:
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import SplitTableBatchedEmbeddingBagsCodegen
    except Exception as e:  # ImportError, or a broken native library
        return None, f"fbgemm_gpu not importable ({type(e).__name__}: {e}); optional, not installed here"
    return SplitTableBatchedEmbeddingBagsCodegen, None


class Fbgemm(nn.Module):
    """FBGEMM's table-batched embedding (EXACT_ROWWISE_ADAGRAD fused into the backward), when fbgemm_gpu imports."""

    def __init__(self, sizes: list[int], device: torch.device) -> None:
        super().__init__()
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import ComputeDevice

        tbe, _ = _fbgemm()
        cuda = device.type == "cuda"
        location = EmbeddingLocation.DEVICE if cuda else EmbeddingLocation.HOST
        compute = ComputeDevice.CUDA if cuda else ComputeDevice.CPU
        self.tbe = tbe(
            embedding_specs=[(s, DIM, location, compute) for s in sizes],
            optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD, learning_rate=LR, eps=1e-8, pooling_mode=PoolingMode.SUM,
        ).to(device)

    def forward(self, ids: Tensor) -> Tensor:
        b, f, k = ids.shape
        indices = ids.permute(1, 0, 2).reshape(-1)  # table-major: every bag of table 0, then table 1, ...
        offsets = torch.arange(0, b * f * k + 1, k, device=ids.device)
        return self.tbe(indices, offsets)


def _step(module: nn.Module, ids: Tensor, readout: Tensor, opt: torch.optim.Optimizer | None) -> Callable[[], None]:
    def step() -> None:
        loss = module(ids) @ readout
        loss.mean().backward()
        if opt is not None:  # FBGEMM applies its optimizer inside the backward
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step


def _forward(module: nn.Module, ids: Tensor) -> Callable[[], Tensor]:
    def forward() -> Tensor:
        with torch.no_grad():  # not inference_mode: FBGEMM's CPU lookup has no kernel for it; alike for all
            return module(ids)

    return forward


def _sgd(module: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(module.parameters(), lr=LR)


def _adagrad(module: nn.Module) -> torch.optim.Optimizer:
    """torch's Adagrad, which takes the loop's row-sparse gradients (element-wise accumulators)."""
    return torch.optim.Adagrad(module.parameters(), lr=LR)


def _fused_adagrad(sizes: list[int], device: torch.device) -> Fused:
    """The fused layout with row-wise Adagrad applied inside its backward (no optimizer step to call)."""
    fused = Fused(sizes, sparse=False).to(device)
    fused.table.fused_update = RowwiseAdagrad(sum(sizes), lr=LR).to(device)
    return fused


def _adamw(module: nn.Module) -> torch.optim.Optimizer:
    """AdamW as `unictr train` configures it for the embedding table (no weight decay)."""
    return torch.optim.AdamW(module.parameters(), lr=LR, weight_decay=0.0)


def _pair(sizes: list[int], sparse: bool, device: torch.device) -> tuple[Fused, PerFeature]:
    """A fused and a per-feature module holding the same weights."""
    fused = Fused(sizes, sparse)
    loop = PerFeature(sizes, sparse)
    with torch.no_grad():
        for bag, part in zip(loop.bags, fused.table.weight.split(sizes), strict=True):
            bag.weight.copy_(part)
    return fused.to(device), loop.to(device)


def run(ctx: Context) -> dict[str, Any]:
    torch.manual_seed(0)
    sizes = table_sizes(ctx.pick(100_000, 2_000))
    batch = ctx.pick(4096, 256)
    repeats = ctx.pick(20, 3)
    fbgemm_cls, fbgemm_skip = _fbgemm()
    readout = torch.randn(FEATURES * DIM, device=ctx.device)
    out: dict[str, Any] = {
        "features": FEATURES, "dim": DIM, "batch": batch, "table_rows": sum(sizes), "largest_table": sizes[0],
        "fbgemm": {"skipped": fbgemm_skip} if fbgemm_skip else {"optimizer": "EXACT_ROWWISE_ADAGRAD"},
    }
    for k in BAG_SIZES:
        ids = torch.stack([torch.randint(0, s, (batch, k)) for s in sizes], dim=1).to(ctx.device)
        fused, loop = _pair(sizes, sparse=False, device=ctx.device)
        diff = float((_forward(fused, ids)() - _forward(loop, ids)()).abs().max())
        forward = {"fused": _forward(fused, ids), "per_feature": _forward(loop, ids)}
        sparse_fused, sparse_loop = _pair(sizes, sparse=True, device=ctx.device)
        adagrad_loop = PerFeature(sizes, sparse=True).to(ctx.device)
        steps = {
            "adagrad_fused_in_backward": _step(_fused_adagrad(sizes, ctx.device), ids, readout, None),
            "adagrad_sparse_per_feature": _step(adagrad_loop, ids, readout, _adagrad(adagrad_loop)),
            "sgd_sparse_fused": _step(sparse_fused, ids, readout, _sgd(sparse_fused)),
            "sgd_sparse_per_feature": _step(sparse_loop, ids, readout, _sgd(sparse_loop)),
            "adamw_dense_fused": _step(fused, ids, readout, _adamw(fused)),
            "adamw_dense_per_feature": _step(loop, ids, readout, _adamw(loop)),
        }
        if fbgemm_cls is not None:
            tbe = Fbgemm(sizes, ctx.device)
            forward["fbgemm"] = _forward(tbe, ids)
            steps["adagrad_fbgemm"] = _step(tbe, ids, readout, None)
        fwd = compare(ctx, forward, repeats, block=BLOCK)
        step = compare(ctx, steps, repeats, block=BLOCK)
        result = {
            "forward": fwd,
            "train_step": step,
            "forward_speedup": speedup(fwd["per_feature"], fwd["fused"]),
            "train_step_speedup_adagrad": speedup(
                step["adagrad_sparse_per_feature"], step["adagrad_fused_in_backward"]
            ),
            "train_step_speedup_sgd_sparse": speedup(step["sgd_sparse_per_feature"], step["sgd_sparse_fused"]),
            "train_step_speedup_adamw_dense": speedup(step["adamw_dense_per_feature"], step["adamw_dense_fused"]),
            "max_abs_diff": diff,
        }
        if fbgemm_cls is not None:
            result["train_step_vs_fbgemm"] = speedup(step["adagrad_fbgemm"], step["adagrad_fused_in_backward"])
        out[f"ids_per_bag_{k}"] = result
        ctx.log(
            f"embedding k={k}: forward {result['forward_speedup']:.1f}x, train step (row-wise Adagrad, fused in "
            f"backward vs sparse per feature) {result['train_step_speedup_adagrad']:.1f}x, (sparse SGD) "
            f"{result['train_step_speedup_sgd_sparse']:.1f}x, (dense AdamW) "
            f"{result['train_step_speedup_adamw_dense']:.1f}x"
        )
    # Headline: the smaller of the two bag sizes' Adagrad training-step speedups (fused optimizer vs loop).
    out["train_step_speedup"] = min(out[f"ids_per_bag_{k}"]["train_step_speedup_adagrad"] for k in BAG_SIZES)
    out["forward_speedup"] = min(out[f"ids_per_bag_{k}"]["forward_speedup"] for k in BAG_SIZES)
    return out
