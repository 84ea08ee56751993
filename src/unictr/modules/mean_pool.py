"""The `mean_pool` user-sequence encoder: no attention between events. An ablation baseline, and
`configs/kuairand.yaml`'s encoder (as good as the Transformer there, 2x faster to train; docs/results.md)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unictr.config import SequenceModelSpec
from unictr.modules.embedding import dense_lookup
from unictr.modules.sequence import random_window_mask, time_bucket


class MeanPoolEncoder(nn.Module):
    """Event tokens (item + action type + age bucket), unmixed; the summary is their masked mean.

    What the Transformer adds over this is the attention between a user's events. Like the Transformer,
    it hides a random recent window while training and puts an always-visible start token (learned)
    first, so the target attention has a valid key for a user with no events.
    """

    def __init__(self, spec: SequenceModelSpec, dim: int, num_actions: int) -> None:
        super().__init__()
        self.action = nn.Embedding(num_actions, dim)
        self.age = nn.Embedding(spec.time_buckets, dim)
        self.start = nn.Parameter(torch.zeros(1, 1, dim))
        self.time_buckets = spec.time_buckets
        self.window_mask_prob = spec.window_mask_prob
        self.window_max_seconds = spec.window_max_seconds
        self.out_dim = dim

    def forward(self, item: Tensor, action: Tensor, age_s: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """item `[U, L, D]`, action/age/mask `[U, L]` → (tokens `[U, L+1, D]`, mask `[U, L+1]`, mean `[U, D]`)."""
        if self.training and self.window_mask_prob > 0:
            mask = random_window_mask(age_s, mask, self.window_mask_prob, self.window_max_seconds)
        u = item.shape[0]
        age = dense_lookup(self.age.weight, time_bucket(age_s, self.time_buckets))
        x = (item + dense_lookup(self.action.weight, action) + age) * mask[..., None]
        mean = x.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)  # a user with no events: zeros
        tokens = torch.cat([self.start.expand(u, 1, -1), x], dim=1)
        return tokens, torch.cat([mask.new_ones(u, 1), mask], dim=1), mean
