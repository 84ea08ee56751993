"""User-sequence Transformer (TransAct-style) and candidate-aware target attention.

The encoder runs once per unique user; only the target attention, where the candidate meets the
user's events, works per impression. Any encoder of `unictr.modules.encoders` feeds the target attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unictr.config import SequenceModelSpec
from unictr.modules.broadcast import one_user
from unictr.modules.embedding import dense_lookup


def time_bucket(age_s: Tensor, buckets: int) -> Tensor:
    """log2 buckets of the event age: seconds-old and days-old events land far apart."""
    return torch.log2(1.0 + age_s.clamp_min(0)).floor().long().clamp_(0, buckets - 1)


def random_window_mask(age_s: Tensor, mask: Tensor, prob: float, max_seconds: float) -> Tensor:
    """Training-time mask: per user, with probability `prob`, hide events younger than a random window.

    Drawn from torch's global RNG, so a seeded run is reproducible.
    """
    u = age_s.shape[0]
    hit = torch.rand(u, device=age_s.device) < prob
    window = torch.rand(u, device=age_s.device) * max_seconds
    hidden = hit[:, None] & (age_s < window[:, None])
    return mask & ~hidden


def short_term_mean(events: Tensor, mask: Tensor, age_s: Tensor, seconds: float) -> Tensor:
    """The mean of each user's events younger than `seconds` (events `[U, L, D]`, mask/age `[U, L]`) → `[U, D]`;
    zeros for a user with none. What the user is after right now, as one embedding the candidate can meet."""
    recent = (mask & (age_s < seconds)).unsqueeze(-1).to(events.dtype)
    return (events * recent).sum(1) / recent.sum(1).clamp_min(1.0)


class EncoderBlock(nn.Module):
    """Pre-norm Transformer block: self-attention over a user's events, then an MLP."""

    def __init__(self, dim: int, heads: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.sequence.heads={heads} must divide model.embedding_dim={dim}")
        self.heads = heads
        self.dropout = dropout
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        u, length, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(u, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask[:, None, None, :], dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.out(attn.transpose(1, 2).reshape(u, length, d))
        return x + self.mlp(self.ln2(x))


class TransformerEncoder(nn.Module):
    """Event tokens (item + action type + age bucket) → Transformer → max-pool ‖ newest `last_k` tokens.

    The `transformer` encoder (the default `model.sequence.encoder`). A learned start token at position 0
    is always visible, so a user with no events still has a well-defined encoding (no all-masked
    attention rows, no NaN).
    """

    def __init__(self, spec: SequenceModelSpec, dim: int, num_actions: int) -> None:
        super().__init__()
        self.action = nn.Embedding(num_actions, dim)
        self.age = nn.Embedding(spec.time_buckets, dim)
        self.start = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(
            EncoderBlock(dim, spec.heads, spec.ff_mult, spec.dropout) for _ in range(spec.layers)
        )
        self.ln = nn.LayerNorm(dim)
        self.time_buckets = spec.time_buckets
        self.last_k = spec.last_k
        self.window_mask_prob = spec.window_mask_prob
        self.window_max_seconds = spec.window_max_seconds
        self.out_dim = dim * (1 + spec.last_k)

    def forward(self, item: Tensor, action: Tensor, age_s: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """item `[U, L, D]`, action/age/mask `[U, L]`.

        Returns (tokens `[U, L+1, D]`, mask `[U, L+1]`, summary `[U, out_dim]`).
        """
        if self.training and self.window_mask_prob > 0:
            mask = random_window_mask(age_s, mask, self.window_mask_prob, self.window_max_seconds)
        u = item.shape[0]
        age = dense_lookup(self.age.weight, time_bucket(age_s, self.time_buckets))
        x = item + dense_lookup(self.action.weight, action) + age
        x = torch.cat([self.start.expand(u, 1, -1), x * mask[..., None]], dim=1)
        mask = torch.cat([mask.new_ones(u, 1), mask], dim=1)
        for block in self.blocks:
            x = block(x, mask)
        x = self.ln(x) * mask[..., None]
        pooled = x.masked_fill(~mask[..., None], float("-inf")).amax(dim=1)
        newest = x[:, x.shape[1] - self.last_k :].flatten(1)
        return x, mask, torch.cat([pooled, newest], dim=1)


class TargetAttention(nn.Module):
    """The candidate item as the query over its user's events (one output per impression).

    Keys and values see each event twice: its raw embedding (item + side features), which keeps the
    event's identity sharp for matching against the candidate, and its Transformer encoding, which
    carries context. Measured on the simulator, encoded-only keys left the sequence signal unused
    (see docs/model.md). Keys and values are projected once per user, then gathered by `user_index`.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(2 * dim, 2 * dim)
        self.scale = dim**-0.5

    def forward(self, cand_item: Tensor, raw: Tensor, tokens: Tensor, mask: Tensor, user_index: Tensor) -> Tensor:
        """cand_item `[N, D]`, raw events `[U, L, D]`, tokens `[U, L+1, D]` and mask `[U, L+1]` (start token first)."""
        raw = torch.cat([raw.new_zeros(raw.shape[0], 1, raw.shape[2]), raw], dim=1)  # the start token has no raw event
        k, v = self.kv(torch.cat([raw, tokens], -1)).chunk(2, dim=-1)  # [U, L+1, D] each, per user
        if one_user(k):
            return self.attend_one_user(cand_item, k, v, mask)
        return self.attend(cand_item, k, v, mask, user_index)

    def attend(self, cand_item: Tensor, k: Tensor, v: Tensor, mask: Tensor, user_index: Tensor) -> Tensor:
        """The reference: each row gathers its user's keys, values and mask `[U, L+1, ·]`, then attends."""
        q = self.q(cand_item)
        # index_select, not k[user_index]: the same rows, gathered faster forward and backward on CPU
        k, v, mask = (t.index_select(0, user_index) for t in (k, v, mask))
        scores = torch.matmul(k, q.unsqueeze(-1)).squeeze(-1) * self.scale  # [N, L+1]
        weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        return torch.matmul(weights.unsqueeze(1), v).squeeze(1)  # [N, D]

    def attend_one_user(self, cand_item: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """The one-user specialisation: every row attends over the same events, two plain matmuls.

        q·k = item·(W_q^T k) + b_q·k: the query projection, the scale and the mask (as a -inf bias) fold
        into one `[D, L+1]` matrix and one row, made once; per row one GEMM, nothing gathered.
        """
        keys = k[0].transpose(0, 1) * self.scale  # [D, L+1]
        bias = (self.q.bias @ keys).masked_fill(~mask[0], float("-inf"))
        scores = torch.addmm(bias, cand_item, self.q.weight.t() @ keys)  # [N, L+1]
        return torch.matmul(scores.softmax(dim=-1), v[0])
