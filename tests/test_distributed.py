"""Data-parallel training (train/distributed.py): gloo ranks started like torchrun starts them step exactly
like one process on the union of their minibatches, with either embedding optimizer."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from tests.conftest import random_table
from tests.fixtures import small_config
from unictr.config import Config
from unictr.data.batch import Batch, Schema
from unictr.data.reader import load_split
from unictr.data.stream import user_chunks
from unictr.model import UnifiedCTR
from unictr.train import distributed
from unictr.train.loop import make_optimizer, train_step

STEPS = 3  # optimizer steps compared (the first moves AdamW by ~lr on every touched parameter)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(sim_config: Config, optimizer: str) -> Config:
    raw = small_config(sim_config).model_dump(mode="json")
    raw["train"].update(embedding_optimizer=optimizer, embedding_lr=0.05 if optimizer == "rowwise_adagrad" else None)
    return Config.model_validate(raw)


def _global_minibatches(cfg: Config, data: Path) -> list[Batch]:
    b = load_split(data, Schema.from_config(cfg), cfg.data)
    return list(user_chunks(b, 96))[:STEPS]


def _trained(cfg: Config, data: Path, rank: int, world: int) -> dict[str, torch.Tensor]:
    """The weights (and row-wise Adagrad state) after STEPS steps of this rank's share of each minibatch."""
    d = distributed.from_env()
    distributed.join(d, torch.device("cpu"))
    torch.manual_seed(cfg.train.seed)
    model = UnifiedCTR(cfg)
    opt = make_optimizer(model, cfg.train)
    net = distributed.wrap(model, d)
    weights = torch.tensor([t.weight for t in cfg.tasks])
    for mb in _global_minibatches(cfg, data):
        share = mb.take_users(torch.arange(mb.num_users).tensor_split(world)[rank])  # disjoint requests
        counts, _ = distributed.global_counts(d, share.label_mask.sum(0).float(), True)
        train_step(net, opt, share, weights, False, counts if d.enabled else None, float(world))
    out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if model.embedding.fused_update is not None:
        out["sum_sq"] = model.embedding.fused_update.sum_sq.clone()
    d.close()
    return out


def _rank_main(rank: int, world: int, port: int, cfg_json: str, data: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = Config.model_validate(json.loads(cfg_json))
    save_file(_trained(cfg, Path(data), rank, world), f"{out}/rank{rank}.safetensors")


@pytest.mark.parametrize("optimizer", ["adamw", "rowwise_adagrad"])
def test_two_gloo_ranks_step_like_one_process(sim_config: Config, tmp_path: Path, optimizer: str) -> None:
    cfg = _config(sim_config, optimizer)
    data = tmp_path / "train.parquet"
    pq.write_table(random_table(cfg, 160, seed=3), data)
    mp.spawn(_rank_main, args=(2, free_port(), cfg.model_dump_json(), str(data), str(tmp_path)), nprocs=2)
    one = _trained(cfg, data, 0, 1)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    torch.manual_seed(cfg.train.seed)
    moved = (one["embedding.weight"] - UnifiedCTR(cfg).embedding.weight).abs().max().item()
    assert moved > 1e-3, f"{optimizer}: the steps left the embedding table where it started"
    for name, expected in one.items():
        for r, got in enumerate(ranks):
            diff = (got[name] - expected).abs().max().item()
            assert diff <= 1e-5, f"{optimizer}: rank {r}'s {name} differs from one process by {diff:.2e}"
