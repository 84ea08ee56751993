"""Linear layer over `[user[user_index] ‖ candidate]` that multiplies the user part once per user."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class BroadcastLinear(nn.Module):
    """y = W [u[user_index]; c] + b, computed as (u W_u^T)[user_index] + c W_c^T + b.

    The result equals the linear layer on the concatenated, per-row repeated input, but the user
    block's FLOPs scale with unique users, not impressions: request-level user broadcasting carried
    into the first trunk layer.
    """

    def __init__(self, user_dim: int, cand_dim: int, out_dim: int) -> None:
        super().__init__()
        self.user = nn.Linear(user_dim, out_dim, bias=False)
        self.cand = nn.Linear(cand_dim, out_dim)
        bound = 1.0 / math.sqrt(user_dim + cand_dim)  # init as one Linear over the concatenation
        for w in (self.user.weight, self.cand.weight, self.cand.bias):
            nn.init.uniform_(w, -bound, bound)

    def forward(self, user: Tensor, cand: Tensor, user_index: Tensor) -> Tensor:
        return torch.index_select(self.user(user), 0, user_index) + self.cand(cand)
