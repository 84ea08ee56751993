"""DIN's local activation unit as a target attention over every field of each event.

DIN (Zhou et al., KDD 2018) scores a user's event `h` against the candidate `t` with an MLP over
`[t, h, t − h, t ⊙ h]`, each a concatenation of the item's fields (id, author, tag, …), and sums the
events weighted by those scores. The dot-product `TargetAttention` sums the fields into one vector
first; this unit keeps them apart, so a candidate can match an event on its author alone.

A linear layer over that concatenation equals `A t + B h + C (t ⊙ h)` (the difference folds into A
and B), so the `h` term runs once per user (with the event's encoder token — action and age, which
DIN lacks), the `t` term once per row, and only `C (t ⊙ h)` per row × event. For one user's request
(`forward_one_user`) the row terms are one GEMM: the user's events folded into A and C once
(`[E, L·H]`), then the rows' targets against them, with no `[N, L, E]` product per row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unictr.modules.broadcast import one_user, rows_of_users


class ActivationUnitAttention(nn.Module):
    """`[N, E]` per impression: the user's events (`E` = fields × dim wide) summed with DIN's weights.

    As in DIN the weights are not normalised (the sum keeps how strongly the history matches); a
    masked event weighs 0, so a user with no events gets zeros.
    """

    def __init__(self, field_dim: int, token_dim: int, hidden: int) -> None:
        super().__init__()
        self.target = nn.Linear(field_dim, hidden, bias=False)
        self.event = nn.Linear(field_dim + token_dim, hidden)
        self.cross = nn.Linear(field_dim, hidden, bias=False)
        self.slope = nn.Parameter(torch.full((hidden,), 0.25))  # PReLU per hidden unit (the last dim)
        self.score = nn.Linear(hidden, 1)
        self.out_dim = field_dim

    def forward(self, target: Tensor, events: Tensor, tokens: Tensor, mask: Tensor, user_index: Tensor) -> Tensor:
        """target `[N, E]`; events `[U, L, E]`, their encoder tokens `[U, L, D]` and mask `[U, L]` per user."""
        per_user = self.event(torch.cat([events, tokens], dim=-1))  # [U, L, H], once per user
        if one_user(events):
            return self.forward_one_user(target, events[0], per_user[0], mask[0])
        return self.forward_general(target, events, per_user, mask, user_index)

    def forward_general(self, target: Tensor, events: Tensor, per_user: Tensor, mask: Tensor,
                        user_index: Tensor) -> Tensor:
        """The reference path: each row's events `[N, L, E]` times its target, then the cross layer."""
        rows = rows_of_users(events, user_index)  # [N, L, E]
        hidden = rows_of_users(per_user, user_index) + self.target(target)[:, None] + self.cross(target[:, None] * rows)
        hidden = hidden.clamp_min(0) + self.slope * hidden.clamp_max(0)  # PReLU over the last dim
        weights = self.score(hidden).squeeze(-1) * rows_of_users(mask, user_index)  # [N, L]
        return torch.matmul(weights.unsqueeze(1).to(rows.dtype), rows).squeeze(1)

    def forward_one_user(self, target: Tensor, events: Tensor, per_user: Tensor, mask: Tensor) -> Tensor:
        """One user's events `[L, E]`, `per_user` `[L, H]`, mask `[L]`. A t + C (t ⊙ h_l) = t · (A + h_l ⊙ C):
        the user's events folded into the weights once (`[E, L·H]`), the rows' part is one GEMM onto the
        user term, then PReLU and the score: three passes over `[N, L, H]` instead of about ten."""
        length, width = events.shape
        folded = events.t()[:, :, None] * self.cross.weight.t()[:, None] + self.target.weight.t()[:, None]  # [E, L, H]
        hidden = torch.addmm(per_user.reshape(1, -1), target, folded.reshape(width, -1))  # [N, L·H]
        hidden = F.prelu(hidden.view(-1, per_user.shape[-1]), self.slope)  # [N·L, H], the slope per hidden unit
        weights = self.score(hidden).view(-1, length) * mask  # [N, L]
        return weights.to(events.dtype) @ events
