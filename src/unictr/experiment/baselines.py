"""The LightGBM baseline: one booster per task on the model's columns plus per-request sequence counts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from unictr.config import Config
from unictr.data.batch import Batch, Schema
from unictr.data.reader import load_split
from unictr.experiment.arms import ArmRun, ArmSkipped
from unictr.threads import resolve_threads

# LightGBM settings, chosen on the validation split (train 04-25..28, validate 04-29; docs/results.md):
# strong smoothing of the many sparse categorical columns mattered most.
LIGHTGBM_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.03,
    "num_leaves": 31,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "max_cat_threshold": 16,
    "cat_smooth": 50.0,
    "cat_l2": 30.0,
    "min_data_per_group": 200,
    "max_cat_to_onehot": 8,
    "verbose": -1,
}
LIGHTGBM_ROUNDS = 150


def lightgbm_matrix(b: Batch, num_actions: int) -> tuple[np.ndarray, list[int]]:
    """Per-row feature matrix for trees and the indices of its categorical columns.

    Categorical: every user and candidate id column (hashed, as the model sees it), surface, view key.
    Numeric: the dense columns, the sequence length and its count of each of the `num_actions` types.
    """
    ui = b.user_index
    mask = b.seq_mask
    counts = [mask.sum(1)] + [((b.seq_action == a) & mask).sum(1) for a in range(num_actions)]
    cat = torch.cat([b.user_cat[ui], b.cand_cat, b.surface[:, None], b.view_key[:, None]], 1)
    num = torch.cat([b.user_dense[ui], b.cand_dense, torch.stack(counts, 1)[ui].float()], 1)
    return np.concatenate([cat.numpy().astype(np.float64), num.numpy().astype(np.float64)], 1), list(
        range(cat.shape[1])
    )


def train_lightgbm(cfg: Config, data: Path, work: Path, eval_b: Batch, console: Console, show_progress: bool) -> ArmRun:
    """One LightGBM booster per task on the rows where the task applies."""
    try:
        import lightgbm as lgb
    except ImportError as e:
        raise ArmSkipped(
            f"lightgbm arm skipped: the optional package is not installed ({e}); pip install 'unictr[lightgbm]'"
        ) from None
    schema = Schema.from_config(cfg)
    num_actions = cfg.sequence.num_actions if cfg.sequence is not None else 0
    train_b = load_split(data / "train", schema, cfg.data)
    x_tr, cat_cols = lightgbm_matrix(train_b, num_actions)
    x_ev, _ = lightgbm_matrix(eval_b, num_actions)
    params = LIGHTGBM_PARAMS | {"seed": cfg.train.seed, "num_threads": resolve_threads(cfg.train.threads)}
    probs = np.full((eval_b.num_rows, len(schema.tasks)), np.nan, dtype=np.float32)
    t0, nodes, models = time.perf_counter(), 0, {}
    for ti, task in enumerate(schema.tasks):
        rows = train_b.label_mask[:, ti].numpy()
        ds = lgb.Dataset(x_tr[rows], train_b.labels[rows, ti].numpy(), categorical_feature=cat_cols)
        booster = lgb.train(params, ds, num_boost_round=LIGHTGBM_ROUNDS)
        probs[:, ti] = booster.predict(x_ev)
        trees = booster.num_trees()
        leaves = sum(t["num_leaves"] for t in booster.dump_model()["tree_info"])
        nodes += 2 * leaves - trees  # leaf values + split thresholds
        models[task] = {"train_rows": int(rows.sum()), "trees": trees, "leaves": leaves}
    return ArmRun(probs, time.perf_counter() - t0, nodes, models)
