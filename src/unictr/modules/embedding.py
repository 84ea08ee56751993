"""Fused embedding: every categorical feature's table in one weight, one lookup per forward, and
optionally the optimizer fused into the lookup's backward (what FBGEMM's table-batched kernels do)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unictr.modules import native


def _lookup(weight: Tensor, rows: Tensor, bag_offsets: Tensor | None = None, sparse: bool = False) -> Tensor:
    """Sum-pooled lookup: `F.embedding` when each bag holds one id (one ONNX Gather, not a Loop), else
    `F.embedding_bag`. A dense CPU weight gradient, if one is needed, comes from `_DenseLookup`."""
    if rows.dim() == 1 and bag_offsets is None:
        if not sparse and weight.requires_grad and weight.device.type == "cpu" and torch.is_grad_enabled():
            return _DenseLookup.apply(weight, rows)
        return F.embedding(rows, weight, sparse=sparse)
    return F.embedding_bag(rows, weight, bag_offsets, mode="sum", sparse=sparse)


def dense_lookup(weight: Tensor, ids: Tensor) -> Tensor:
    """`F.embedding(ids, weight)` for ids of any shape, its CPU weight gradient by `_DenseLookup`: bit for bit
    the same, without torch's sort of the ids (the sequence's action and age tables see U·L ids a step)."""
    if ids.dim() == 1:
        return _lookup(weight, ids)
    return _lookup(weight, ids.flatten()).view(*ids.shape, weight.shape[1])


class _DenseLookup(torch.autograd.Function):
    """`F.embedding` of `[n]` rows whose weight gradient is one `index_add_` into a zero table: on the CPU
    the same sums in the same order as torch's `embedding_dense_backward`, bit for bit, and faster (that
    kernel sorts the ids first; docs/performance.md). For the dense optimizers (AdamW), which need the
    table-sized gradient."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, weight: Tensor, rows: Tensor) -> Tensor:
        ctx.save_for_backward(rows)
        ctx.table_rows = weight.shape[0]
        return F.embedding(rows, weight)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        (rows,) = ctx.saved_tensors
        table = grad.new_zeros(ctx.table_rows, grad.shape[1])
        return table.index_add_(0, rows, grad), None


class RowwiseAdagrad:
    """Row-wise Adagrad applied inside the lookup's backward (FBGEMM's EXACT_ROWWISE_ADAGRAD).

    One accumulator per table row (the running sum of the row gradient's mean square), so the state
    is `rows` floats instead of AdamW's two table-sized moments. Only the rows looked up in the step
    are read and written, and no table-sized gradient is ever made: the backward sums each unique
    row's gradient (exactly, duplicates included) and updates that row in place. `weight_decay` is
    L2 on the touched rows. `lr` is a plain attribute so a schedule can set it every step.
    """

    def __init__(
        self, rows: int, lr: float, eps: float = 1e-8, weight_decay: float = 0.0, native: bool = True
    ) -> None:
        self.lr, self.eps, self.weight_decay = lr, eps, weight_decay
        self.sum_sq = torch.zeros(rows)
        self._seen = torch.zeros(rows, dtype=torch.bool)  # scratch: which rows the step touched
        # scratch of the compiled kernel: row -> compact slot (-1 between steps), touched rows, their gradients
        self._slot = torch.full((rows,), -1, dtype=torch.int32)
        self._touched, self._gbuf = torch.empty(0, dtype=torch.int64), torch.empty(0, 0)
        self.native = native  # on the CPU, use the compiled kernel (`modules/native.py`) when it builds
        # set by the trainer under data parallelism: (rows, grad) -> every rank's, so all apply the same update
        self.exchange: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None

    def to(self, device: torch.device | str) -> RowwiseAdagrad:
        self.sum_sq, self._seen, self._slot = self.sum_sq.to(device), self._seen.to(device), self._slot.to(device)
        return self

    @torch.no_grad()
    def update(self, weight: Tensor, rows: Tensor, grad: Tensor) -> None:
        """Apply one step for the ids `rows` `[n, k]` whose bags got the pooled gradients `grad` `[n, dim]`."""
        if self.exchange is not None:
            rows, grad = self.exchange(rows, grad)
        if self.native and weight.device.type == "cpu" and weight.dtype == grad.dtype == torch.float32:
            module, _ = native.kernel()
            if module is not None:
                need = min(rows.numel(), weight.shape[0])
                if self._touched.shape[0] < need:  # scratch grows to the largest step seen, then stays
                    self._touched = torch.empty(need, dtype=torch.int64)
                    self._gbuf = torch.empty(need, weight.shape[1])
                module.rowwise_adagrad_update(
                    weight, self.sum_sq, rows.contiguous(), grad.contiguous(), self._slot, self._touched,
                    self._gbuf, self.lr, self.eps, self.weight_decay,
                )
                return
        # index_fill / index_select / index_copy_: the same as bool-mask and fancy indexing, faster on CPU
        self._seen.index_fill_(0, rows.reshape(-1), True)
        touched = self._seen.nonzero().squeeze(1)  # sorted unique rows, without a sort of all ids
        self._seen.index_fill_(0, touched, False)
        slot = torch.empty_like(self._seen, dtype=torch.int64)
        slot.index_copy_(0, touched, torch.arange(len(touched), device=rows.device))
        g = grad.new_zeros(len(touched), grad.shape[1])
        for j in range(rows.shape[1]):  # k passes over [n, dim] instead of one [n·k, dim] temporary
            g.index_add_(0, slot.index_select(0, rows[:, j]), grad)
        w = weight.index_select(0, touched)
        if self.weight_decay:
            g.add_(w, alpha=self.weight_decay)
        acc = self.sum_sq.index_select(0, touched).add_(g.pow(2).mean(1))
        self.sum_sq.index_copy_(0, touched, acc)
        weight.index_copy_(0, touched, w.addcmul_(g, (-self.lr / (acc.sqrt() + self.eps))[:, None]))


class _LookupWithUpdate(torch.autograd.Function):
    """Sum-pooled lookup whose backward applies `RowwiseAdagrad` to the weight and returns no weight grad."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, weight: Tensor, rows: Tensor, opt: RowwiseAdagrad) -> Tensor:
        ctx.save_for_backward(rows)
        ctx.weight, ctx.opt = weight, opt
        return _lookup(weight, rows)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[None, None, None]:
        (rows,) = ctx.saved_tensors
        ctx.opt.update(ctx.weight, rows.view(rows.shape[0], -1), grad.contiguous())
        return None, None, None


class FusedEmbedding(nn.Module):
    """All tables concatenated into one `[sum(sizes), dim]` weight with per-table row offsets.

    Callers turn local ids (row within a feature's table) into global rows with `global_ids`,
    concatenate everything they need for a forward pass, and call the module once: a single
    lookup over the fused table instead of one kernel launch per feature (`F.embedding` when each
    bag holds one id, which exports to one ONNX Gather; `F.embedding_bag` for multi-id bags).
    """

    def __init__(
        self, names: list[str], sizes: list[int], dim: int, sparse: bool = False, init_std: float | None = None
    ) -> None:
        super().__init__()
        if len(names) != len(sizes):
            raise ValueError("names and sizes differ in length")
        self.names = list(names)
        self.sizes = [int(s) for s in sizes]
        self.dim = dim
        self.sparse = sparse  # row-sparse gradients (for optimizers that update only the rows looked up)
        # set by the trainer for `train.embedding_optimizer: rowwise_adagrad`; not part of the state dict
        self.fused_update: RowwiseAdagrad | None = None
        offsets = torch.tensor([0, *self.sizes[:-1]], dtype=torch.int64).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.weight = nn.Parameter(torch.empty(sum(self.sizes), dim))
        nn.init.normal_(self.weight, std=init_std if init_std is not None else 1.0 / math.sqrt(dim))

    def table_offsets(self, names: list[str] | tuple[str, ...]) -> Tensor:
        """Row offsets of the named tables, to add to `[B, len(names)]` local ids."""
        return self.offsets[[self.names.index(n) for n in names]]

    def forward(self, rows: Tensor, bag_offsets: Tensor | None = None) -> Tensor:
        """Sum-pooled lookup of global rows.

        rows: `[n]` (one id per bag, or jagged with `bag_offsets`) or `[n, k]` (k ids per bag).
        Returns `[bags, dim]`.
        """
        if self.fused_update is not None and torch.is_grad_enabled():
            if bag_offsets is not None:  # a plain lookup here would train nothing: no optimizer holds the table
                raise ValueError("fused_update: jagged bags (bag_offsets) are not supported; use [n] or [n, k] rows")
            return _LookupWithUpdate.apply(self.weight, rows, self.fused_update)
        return _lookup(self.weight, rows, bag_offsets, self.sparse)
