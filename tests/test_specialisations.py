"""Each serving specialisation of a module against the module's general (reference) path, same inputs.

Pairs that compute the same products in the same order are checked for equality; the others (the
arithmetic is regrouped) within 1e-6. The whole model's one-user path is checked in test_model.py,
the exported graphs in test_export.py.
"""

from __future__ import annotations

import torch

from tests.conftest import random_table
from unictr.config import config_from_dict
from unictr.data.reader import encode_table
from unictr.model import UnifiedCTR
from unictr.modules.broadcast import BroadcastLinear, rows_of_users
from unictr.modules.mmoe import MMoE, _softmax
from unictr.modules.sequence import TargetAttention
from unictr.modules.towers import TowerTree

ATOL = 1e-6


def _one_user(rows: int = 9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(user `[1, 5]`, candidates `[rows, 3]`, user_index of zeros): one user's request."""
    return torch.randn(1, 5), torch.randn(rows, 3), torch.zeros(rows, dtype=torch.int64)


def test_rows_of_users_broadcast_equals_gather() -> None:
    torch.manual_seed(0)
    user, _, ui = _one_user()
    assert torch.equal(rows_of_users(user, ui), user.index_select(0, ui))


def test_broadcast_linear_one_user_equals_general() -> None:
    torch.manual_seed(0)
    lin = BroadcastLinear(5, 3, 4)
    user, cand, ui = _one_user()
    general = lin.forward_general(user, cand, ui)
    assert torch.equal(lin.forward_one_user(user, cand), general)
    assert torch.equal(lin(user, cand, ui), general)


def test_mmoe_experts_one_user_equals_general() -> None:
    torch.manual_seed(0)
    mmoe = MMoE(5, 3, experts=4, hidden=8, out_dim=6, surfaces=2, tasks=3)
    user, cand, ui = _one_user()
    general = mmoe._experts(user, cand, ui)
    torch.testing.assert_close(mmoe._experts_one_user(user, cand), general, rtol=0, atol=ATOL)


def test_mmoe_one_surface_gate_equals_general() -> None:
    torch.manual_seed(0)
    mmoe = MMoE(5, 3, experts=4, hidden=8, out_dim=6, surfaces=1, tasks=3)
    user, cand, ui = torch.randn(3, 5), torch.randn(9, 3), torch.tensor([0, 1, 2, 2, 1, 0, 0, 2, 1])
    general = mmoe._gate_weights(user, cand, ui, torch.zeros(9, dtype=torch.int64))
    assert general.shape == (9, 3, 4)
    torch.testing.assert_close(mmoe._gate_weights_one_surface(user, cand, ui), general, rtol=0, atol=ATOL)


def test_written_out_softmax_equals_torch_softmax() -> None:
    torch.manual_seed(0)
    x = torch.randn(50, 3, 4) * 10
    for dim in (-1, 1):
        torch.testing.assert_close(_softmax(x, dim=dim), torch.softmax(x, dim=dim), rtol=0, atol=ATOL)


def test_target_attention_one_user_equals_general() -> None:
    torch.manual_seed(0)
    att = TargetAttention(8)
    k, v = torch.randn(1, 6, 8), torch.randn(1, 6, 8)
    mask = torch.tensor([[True, False, False, True, True, True]])  # the start token, then left padding
    cand, ui = torch.randn(9, 8), torch.zeros(9, dtype=torch.int64)
    general = att.attend(cand, k, v, mask, ui)
    torch.testing.assert_close(att.attend_one_user(cand, k, v, mask), general, rtol=0, atol=ATOL)


def test_single_tower_equals_routed() -> None:
    torch.manual_seed(0)
    tree = TowerTree(6, late_columns=[[0, 2]], late_dim=3, hidden=[4], tasks=2, tower_of_surface=[0, 0])
    z, late, surface = torch.randn(7, 6), torch.randn(7, 3, 3), torch.tensor([0, 1, 1, 0, 0, 1, 0])
    assert torch.equal(tree.forward_single_tower(z, late), tree.forward_routed(z, late, surface))


def test_trunk_without_tower_features_skips_the_gather_exactly(sim_config) -> None:
    """A model whose trunk takes every candidate column (a surface export without tower features) skips
    the column gather; gathering every column in order gives the same scores."""
    raw = sim_config.model_dump(mode="json")
    for f in raw["features"]:
        f["towers"] = []
    cfg = config_from_dict(raw, "<no tower features>")
    torch.manual_seed(0)
    model = UnifiedCTR(cfg).eval()
    assert model.trunk_index is None
    b = encode_table(random_table(cfg, 12, seed=3), model.schema, cfg.data)
    with torch.no_grad():
        skipped = model(b)
        model.trunk_index = torch.arange(len(model.schema.cand_cat))
        assert torch.equal(model(b), skipped)
