"""Pairwise dot-product interactions between feature embeddings (DLRM-style explicit crosses)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DotInteraction(nn.Module):
    """All pairwise dot products `<e_i, e_j>` (i < j) of the per-row feature embeddings.

    An MLP learns "does the user's segment match the ad's topic" slowly from concatenated embeddings;
    the dot product hands it over directly. Input `[N, F, D]`, output `[N, F·(F-1)/2]`.
    """

    def __init__(self, fields: int) -> None:
        super().__init__()
        i, j = torch.triu_indices(fields, fields, offset=1)
        self.register_buffer("pair_i", i, persistent=False)
        self.register_buffer("pair_j", j, persistent=False)
        self.out_dim = int(i.numel())

    def forward(self, emb: Tensor) -> Tensor:
        gram = torch.bmm(emb, emb.transpose(1, 2))  # [N, F, F]
        return gram[:, self.pair_i, self.pair_j]
