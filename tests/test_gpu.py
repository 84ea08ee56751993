"""The CUDA path: training on the GPU (TF32 on), the fused embedding on device, and CPU/GPU score agreement.
Skipped on machines without CUDA."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from rich.console import Console

from tests.conftest import random_table
from tests.fixtures import small_config
from unictr.checkpoint import load_model
from unictr.data.reader import load_split
from unictr.train.evaluate import predict
from unictr.train.loop import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (these tests check the GPU path)")


@pytest.mark.parametrize("embedding_optimizer", ["adamw", "rowwise_adagrad"])
def test_train_on_cuda_and_score_like_cpu(sim_config, tmp_path, embedding_optimizer) -> None:
    """A run trained with train.device=cuda (with either embedding optimizer; the row-wise one updates the
    table inside the backward on the GPU) has a finite loss, TF32 on, and its checkpoint scores the same on
    CPU and GPU (within TF32's ~1e-3 relative precision)."""
    raw = small_config(sim_config).model_dump(mode="json")
    raw["train"] |= {"device": "cuda", "embedding_optimizer": embedding_optimizer}
    cfg = type(sim_config).model_validate(raw)
    for split, seed in (("train", 0), ("eval", 1)):
        (tmp_path / "data" / split).mkdir(parents=True)
        pq.write_table(random_table(cfg, 60, seed=seed), tmp_path / "data" / split / "part-00000.parquet")
    manifest = train(cfg, tmp_path / "data", tmp_path / "run", console=Console(quiet=True), show_progress=False)
    assert torch.backends.cuda.matmul.allow_tf32 is True
    assert math.isfinite(manifest["history"][-1]["train_loss"])

    model, _ = load_model(tmp_path / "run")
    batch = load_split(tmp_path / "data" / "eval", model.schema, cfg.data)
    cpu = predict(model, batch)
    model.to("cuda")
    assert model.embedding.weight.device.type == "cuda"
    gpu = predict(model, batch)
    assert np.isfinite(gpu).all()
    assert np.abs(cpu - gpu).max() < 2e-3, np.abs(cpu - gpu).max()
