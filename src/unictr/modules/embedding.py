"""Fused embedding: every categorical feature's table in one weight, one lookup per forward."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FusedEmbedding(nn.Module):
    """All tables concatenated into one `[sum(sizes), dim]` weight with per-table row offsets.

    Callers turn local ids (row within a feature's table) into global rows with `global_ids`,
    concatenate everything they need for a forward pass, and call the module once: a single
    lookup over the fused table instead of one kernel launch per feature (`F.embedding` when each
    bag holds one id, which exports to one ONNX Gather; `F.embedding_bag` for multi-id bags).
    """

    def __init__(self, names: list[str], sizes: list[int], dim: int, sparse: bool = False) -> None:
        super().__init__()
        if len(names) != len(sizes):
            raise ValueError("names and sizes differ in length")
        self.names = list(names)
        self.sizes = [int(s) for s in sizes]
        self.dim = dim
        self.sparse = sparse  # row-sparse gradients (for optimizers that update only the rows looked up)
        offsets = torch.tensor([0, *self.sizes[:-1]], dtype=torch.int64).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.weight = nn.Parameter(torch.empty(sum(self.sizes), dim))
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(dim))

    def table_offsets(self, names: list[str] | tuple[str, ...]) -> Tensor:
        """Row offsets of the named tables, to add to `[B, len(names)]` local ids."""
        return self.offsets[[self.names.index(n) for n in names]]

    def forward(self, rows: Tensor, bag_offsets: Tensor | None = None) -> Tensor:
        """Sum-pooled lookup of global rows.

        rows: `[n]` (one id per bag, or jagged with `bag_offsets`) or `[n, k]` (k ids per bag).
        Returns `[bags, dim]`.
        """
        if rows.dim() == 1 and bag_offsets is None:  # one id per bag: a plain gather (one ONNX Gather, not a Loop)
            return F.embedding(rows, self.weight, sparse=self.sparse)
        return F.embedding_bag(rows, self.weight, bag_offsets, mode="sum", sparse=self.sparse)
