"""The composed model: broadcast equivalence, row independence, the masked loss."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_table
from unictr.config import Config
from unictr.data.batch import Schema
from unictr.data.reader import encode_table
from unictr.model import UnifiedCTR, masked_bce


def _variant(cfg: Config, **model_changes) -> Config:
    return cfg.model_copy(update={"model": cfg.model.model_copy(update=model_changes)})


@pytest.fixture(scope="module")
def batch(sim_config):
    return encode_table(random_table(sim_config, 40, seed=7), Schema.from_config(sim_config), sim_config.data)


@pytest.mark.parametrize("variant", ["full", "no_sequence", "shared_tower", "no_mmoe"])
def test_broadcast_equals_repeated_user_rows(sim_config, batch, variant) -> None:
    m = sim_config.model
    changes = {
        "full": {},
        "no_sequence": {"sequence": m.sequence.model_copy(update={"enabled": False})},
        "shared_tower": {"tower": m.tower.model_copy(update={"per_surface": False})},
        "no_mmoe": {"mmoe": m.mmoe.model_copy(update={"enabled": False})},
    }[variant]
    torch.manual_seed(0)
    model = UnifiedCTR(_variant(sim_config, **changes)).eval()
    with torch.no_grad():
        broadcast = model(batch)
        repeated = batch.broadcast_users()
        assert repeated.num_users == batch.num_rows
        per_row = model(repeated)
    assert broadcast.shape == (batch.num_rows, 3)
    assert (broadcast - per_row).abs().max() <= 1e-6


def test_one_user_fast_path_equals_gathered_path(sim_config, batch) -> None:
    """A 1-user batch broadcasts its user (no per-row gathers); the general path gives the same scores."""
    torch.manual_seed(0)
    model = UnifiedCTR(sim_config).eval()
    busiest = torch.bincount(batch.user_index).argmax()
    one = batch.take_users(busiest.view(1))
    assert one.num_users == 1 and one.num_rows >= 2
    with torch.no_grad():
        fast = model(one)
        gathered = model(one.broadcast_users())  # U == N >= 2: every row gathers its user
    assert (fast - gathered).abs().max() <= 1e-6


def test_rows_scored_independently_of_batch(sim_config, batch) -> None:
    torch.manual_seed(0)
    model = UnifiedCTR(sim_config).eval()
    with torch.no_grad():
        full = model(batch)
        users = torch.tensor([5, 1, 17])
        sub = batch.take_users(users)
        part = model(sub)
    rows = torch.cat([torch.nonzero(batch.user_index == u).flatten() for u in users])
    torch.testing.assert_close(part, full[rows], atol=1e-6, rtol=1e-5)


def test_masked_bce_ignores_tasks_off_surface(sim_config, batch) -> None:
    weights = torch.tensor([1.0, 0.5, 0.5])
    logits = torch.zeros(batch.num_rows, 3)
    loss, per_task = masked_bce(logits, batch, weights)
    torch.testing.assert_close(per_task, torch.full((3,), 0.6931472), atol=1e-5, rtol=0)
    # garbage logits where a task does not apply change nothing
    poisoned = torch.where(batch.label_mask, logits, torch.full_like(logits, 1e4))
    loss2, _ = masked_bce(poisoned, batch, weights)
    torch.testing.assert_close(loss, loss2)


def test_training_step_moves_only_used_towers(sim_config, batch) -> None:
    torch.manual_seed(0)
    model = UnifiedCTR(sim_config).train()
    search = Schema.from_config(sim_config).surfaces.index("search")
    sub = batch.take_users(torch.unique(batch.user_index[batch.surface == search]))
    loss, _ = masked_bce(model(sub), sub, torch.ones(3))
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.towers.towers[search].parameters())
    for i, tower in enumerate(model.towers.towers):
        if i != search:
            assert all(p.grad is None for p in tower.parameters())


@pytest.mark.parametrize("std", [None, 1e-4, 0.05])
def test_embedding_init_std_reaches_the_table(sim_config, std) -> None:
    """`model.embedding_init_std` sets the fused table's start (null: 1/sqrt(embedding_dim)), within 2%."""
    torch.manual_seed(0)
    model = UnifiedCTR(_variant(sim_config, embedding_init_std=std))
    want = std if std is not None else sim_config.model.embedding_dim ** -0.5
    assert model.embedding.weight.std().item() == pytest.approx(want, rel=0.02)
