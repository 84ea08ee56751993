"""DIN's activation unit as the target attention (`model.sequence.target_attention`), and the per-table
embedding decay (`train.embedding_decay_skip`)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_table
from unictr.config import with_changes
from unictr.data.reader import encode_table
from unictr.model import UnifiedCTR
from unictr.modules.activation_unit import ActivationUnitAttention
from unictr.train.loop import make_optimizer


def _din_reference(unit: ActivationUnitAttention, w: list[torch.Tensor], b1: torch.Tensor, t, h, mask) -> torch.Tensor:
    """DIN written out: MLP([t, h, t − h, t ⊙ h]) → PReLU → score, weights × mask, weighted sum of h."""
    tt = t[:, None].expand_as(h)
    x = torch.cat([tt, h, tt - h, tt * h], dim=-1) @ torch.cat(w, dim=1).t() + b1
    x = torch.where(x > 0, x, unit.slope * x)
    scores = (x @ unit.score.weight.t() + unit.score.bias).squeeze(-1) * mask
    return (scores[..., None] * h).sum(1)


def test_activation_unit_equals_din_formula() -> None:
    """Weights W1..W4 of DIN's first layer over [t, h, t − h, t ⊙ h] map to target = W1 + W3,
    event = W2 − W3 (and 0 on the encoder token), cross = W4: the same scores and sums."""
    torch.manual_seed(0)
    e, d, hidden = 12, 4, 8
    unit = ActivationUnitAttention(e, d, hidden)
    w = [torch.randn(hidden, e) * 0.3 for _ in range(4)]
    b1 = torch.randn(hidden) * 0.1
    with torch.no_grad():
        unit.target.weight.copy_(w[0] + w[2])
        unit.event.weight.copy_(torch.cat([w[1] - w[2], torch.zeros(hidden, d)], dim=1))
        unit.event.bias.copy_(b1)
        unit.cross.weight.copy_(w[3])
    events, tokens = torch.randn(2, 5, e), torch.randn(2, 5, d)
    mask = torch.tensor([[False, False, True, True, True], [True] * 5])
    target, user_index = torch.randn(3, e), torch.tensor([0, 1, 0])
    got = unit(target, events, tokens, mask, user_index)
    want = _din_reference(unit, w, b1, target, events[user_index], mask[user_index].float())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(unit(target, events, tokens, torch.zeros_like(mask), user_index), torch.zeros(3, e))


def test_activation_unit_one_user_equals_gather() -> None:
    """One user's request (broadcast, nothing gathered) scores like the same user gathered per row."""
    torch.manual_seed(1)
    unit = ActivationUnitAttention(8, 4, 6)
    events, tokens, mask = torch.randn(1, 5, 8), torch.randn(1, 5, 4), torch.tensor([[False, True, True, True, True]])
    target = torch.randn(7, 8)
    one = unit(target, events, tokens, mask, torch.zeros(7, dtype=torch.int64))
    two = unit(target, events.repeat(2, 1, 1), tokens.repeat(2, 1, 1), mask.repeat(2, 1), torch.arange(7) % 2)
    torch.testing.assert_close(one, two, rtol=0, atol=1e-6)
    per_user = unit.event(torch.cat([events, tokens], dim=-1))
    general = unit.forward_general(target, events, per_user, mask, torch.zeros(7, dtype=torch.int64))
    torch.testing.assert_close(unit.forward_one_user(target, events[0], per_user[0], mask[0]), general, rtol=0,
                               atol=1e-6)


def test_both_attentions_feed_the_trunk(sim_config) -> None:
    """`both`: the dot-product output (embedding_dim) and the unit's (fields × embedding_dim) join the candidate
    vector (explicit crosses off: they count the dot output as one more field), and the model scores a batch
    to finite logits."""
    sim_config = with_changes(sim_config, "model", interaction=False)
    d = sim_config.model.embedding_dim
    fields = 1 + len(sim_config.sequence.side_features)
    width = {}
    for mode in ("dot", "activation_unit", "both"):
        torch.manual_seed(0)
        model = UnifiedCTR(with_changes(sim_config, "model.sequence", target_attention=mode)).eval()
        width[mode] = model.mmoe.first.cand.in_features
        b = encode_table(random_table(sim_config, 12, seed=3), model.schema, sim_config.data)
        with torch.no_grad():
            assert torch.isfinite(model(b)).all()
    assert width["both"] - width["dot"] == fields * d and width["both"] - width["activation_unit"] == d


def _one_step(cfg, model: UnifiedCTR, rows: torch.Tensor) -> torch.Tensor:
    """One optimizer step whose gradient touches only `rows` of the fused table; the table after it."""
    opt = make_optimizer(model, cfg.train)
    model.embedding.weight[rows].sum().backward()
    opt.step()
    return model.embedding.weight.detach().clone()


def test_embedding_decay_skip(sim_config) -> None:
    """Skipping a table's decay leaves its untouched rows as they were; every other row steps exactly as
    under AdamW's own decay (here: decayed by lr × wd, or decayed and updated for the rows with a gradient)."""
    base = with_changes(sim_config, "train", embedding_weight_decay=5.0, lr=0.01, embedding_lr=None)
    torch.manual_seed(0)
    model = UnifiedCTR(base)
    start = model.embedding.weight.detach().clone()
    rows = torch.tensor([0, 1])
    adamw = _one_step(base, model, rows)
    emb = model.embedding
    skipped, n = emb.names[-1], emb.sizes[-1]
    off = int(emb.offsets[-1])
    assert off > 1
    model.embedding.weight.data.copy_(start)
    hooked = _one_step(with_changes(base, "train", embedding_decay_skip=[skipped]), model, rows)
    torch.testing.assert_close(hooked[:off], adamw[:off], rtol=0, atol=1e-7)
    torch.testing.assert_close(hooked[off:], start[off:], rtol=0, atol=0)
    torch.testing.assert_close(adamw[2:off], start[2:off] * (1 - 0.01 * 5.0), rtol=0, atol=1e-7)
    assert n == hooked[off:].shape[0]


def test_embedding_decay_skip_names_a_table_owner(sim_config) -> None:
    with pytest.raises(ValueError, match="train.embedding_decay_skip: 'nope' must name a categorical feature"):
        with_changes(sim_config, "train", embedding_decay_skip=["nope"])
    with pytest.raises(ValueError, match="train.embedding_decay_skip: applies to embedding_optimizer adamw only"):
        with_changes(sim_config, "train", embedding_decay_skip=["ad_topic"], embedding_optimizer="rowwise_adagrad")
