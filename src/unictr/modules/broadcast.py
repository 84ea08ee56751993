"""Linear layer over `[user[user_index] ‖ candidate]` that multiplies the user part once per user.

One-user specialisation: a request of one user (one user's feed, hundreds of candidates) is the common
serving case; its user tensors broadcast over the rows instead of being gathered per row. Each module
with such a path keeps the gathering path as its reference and names the one-user path beside it
(`*_one_user`); `one_user` picks between them from static shapes, so the choice is made when the graph
is traced (an ONNX export for exactly one user) and for eager batches of one user, whose scores equal
the reference path's (tests/test_specialisations.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.fx.experimental.symbolic_shapes import statically_known_true


def one_user(user: Tensor) -> bool:
    """True when `user` (leading dim: unique users) holds a single user, known without a shape guard.

    Under an export with a dynamic user dim this is False (the general, gathering graph); eagerly, or
    exported for one user, it is exact.
    """
    return statically_known_true(user.shape[0] == 1)


def rows_of_users(user: Tensor, user_index: Tensor) -> Tensor:
    """`user[user_index]`: each row's user tensor (a broadcast view when there is one user)."""
    if one_user(user):
        return user.expand(user_index.shape[0], *user.shape[1:])
    return user.index_select(0, user_index)


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

    def per_user(self, user: Tensor) -> Tensor:
        """`[U, out]`: the user block and the bias, once per user (what every row of that user adds)."""
        return self.user(user) + self.cand.bias

    def forward(self, user: Tensor, cand: Tensor, user_index: Tensor) -> Tensor:
        if one_user(user):
            return self.forward_one_user(user, cand)
        return self.forward_general(user, cand, user_index)

    def forward_general(self, user: Tensor, cand: Tensor, user_index: Tensor) -> Tensor:
        """The reference path: each row gathers its user's row, then one GEMM accumulates onto it
        (no separate pass over `[N, out]` to add the user rows)."""
        return torch.addmm(torch.index_select(self.per_user(user), 0, user_index), cand, self.cand.weight.t())

    def forward_one_user(self, user: Tensor, cand: Tensor) -> Tensor:
        """The one-user specialisation: the user's `[1, out]` row broadcasts over the rows, nothing is gathered."""
        return torch.addmm(self.per_user(user), cand, self.cand.weight.t())
