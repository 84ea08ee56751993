"""DIN's local activation unit as a target attention over every field of each event.

DIN (Zhou et al., KDD 2018) scores a user's event `h` against the candidate `t` with an MLP over
`[t, h, t − h, t ⊙ h]`, each a concatenation of the item's fields (id, author, tag, …), and sums the
events weighted by those scores. The dot-product `TargetAttention` sums the fields into one vector
first; this unit keeps them apart, so a candidate can match an event on its author alone.

A linear layer over that concatenation equals `A t + B h + C (t ⊙ h)` (the difference folds into A
and B), so the `h` term runs once per user (with the event's encoder token — action and age, which
DIN lacks), the `t` term once per row, and only `C (t ⊙ h)` per row × event.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unictr.modules.broadcast import rows_of_users


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
        rows = rows_of_users(events, user_index)  # [N, L, E]
        hidden = rows_of_users(per_user, user_index) + self.target(target)[:, None] + self.cross(target[:, None] * rows)
        hidden = hidden.clamp_min(0) + self.slope * hidden.clamp_max(0)
        weights = self.score(hidden).squeeze(-1) * rows_of_users(mask, user_index)  # [N, L]
        return torch.matmul(weights.unsqueeze(1).to(rows.dtype), rows).squeeze(1)
