"""The trainer's optimizer (`train.loop.make_optimizer`): AdamW's fused kernel takes the textbook steps."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_table
from tests.fixtures import small_config
from unictr.config import with_changes
from unictr.data.batch import Schema
from unictr.data.reader import encode_table
from unictr.model import UnifiedCTR
from unictr.train.loop import make_optimizer, train_step


@pytest.mark.parametrize("skip", [False, True])
def test_fused_adamw_steps_like_the_reference(sim_config, skip: bool) -> None:
    """Five training steps with `make_optimizer` (fused AdamW; with `embedding_decay_skip`, the per-row decay
    hook) end within float rounding of the same steps taken by torch's single-tensor AdamW."""
    cfg = with_changes(small_config(sim_config), "train", embedding_weight_decay=2.0, lr=0.01,
                       embedding_decay_skip=["ad_topic"] if skip else [])
    weights = torch.tensor([t.weight for t in cfg.tasks])
    schema = Schema.from_config(cfg)
    batches = [encode_table(random_table(cfg, 16, seed=s), schema, cfg.data) for s in range(5)]
    trained = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = UnifiedCTR(cfg)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        opt = make_optimizer(model, cfg.train)
        assert all(g["fused"] for g in opt.param_groups)
        if not fused:  # the same groups and hooks, the reference kernel
            for g in opt.param_groups:
                g["fused"], g["foreach"] = False, False
        for b in batches:
            train_step(model, opt, b, weights, False)
        trained.append(model.state_dict())
    # 5e-5: Adam scales each step by the gradient's own size, so rounding in a gradient that is ~0 (the
    # attention's key bias, which the softmax ignores) moves by up to 1e-5 in 5 steps; every other tensor
    # agrees within 4e-6, and a wrong step (lr, decay) would be off by ~lr·decay·|w| ≈ 1e-3
    for name, value in trained[0].items():
        torch.testing.assert_close(value, trained[1][name], rtol=0, atol=5e-5, msg=lambda m, n=name: f"{n}: {m}")
    # the steps moved the weights by far more than that: the comparison is not between two untrained models
    assert (trained[0]["embedding.weight"] - start["embedding.weight"]).abs().max() > 1e-3


@pytest.mark.parametrize(("threads", "skip"), [(1, True), (2, True), (2, False)])
def test_decay_sets_rows_it_would_keep_subnormal_to_zero(sim_config, threads: int, skip: bool) -> None:
    """The embedding decay multiplies unseen rows by 1 − lr·wd each step (0.7 here, as configs/kuairand.yaml);
    0.7 × the smallest subnormal rounds back to itself, so those rows would stay subnormal, the CPU's slow
    path on every later op over the table. The decay sets every subnormal of the table to 0, on any thread
    count, with or without `embedding_decay_skip`."""
    cfg = with_changes(small_config(sim_config), "train", embedding_weight_decay=50.0, lr=0.006,
                       embedding_decay_skip=["ad_topic"] if skip else [])
    subnormal = torch.finfo(torch.float32).tiny / 4
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = UnifiedCTR(cfg)
        table = model.embedding.weight
        with torch.no_grad():
            table.fill_(subnormal)
        opt = make_optimizer(model, cfg.train)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    finally:
        torch.set_num_threads(before)
    assert (table == 0).all(), table.abs().max()
