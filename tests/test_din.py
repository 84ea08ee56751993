"""The `din` arm: its layers against a hand-computed formula and against FuxiCTR's own layers, early stopping,
the validation day carved from the training window, and the arm end to end through `experiment unify`."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from typer.testing import CliRunner

from tests.conftest import random_table
from tests.fixtures import small_config
from unictr.cli import app
from unictr.config import Config
from unictr.data.batch import Schema
from unictr.data.reader import load_split
from unictr.experiment.din import DINSettings, carve_validation, fit, predict_logits, train_task
from unictr.metrics import auc
from unictr.modules.din import DINAttention, mlp

runner = CliRunner()
TINY = DINSettings(embedding_dim=4, dnn_units=(8,), attention_units=(4,), batch_size=32, max_epochs=4)


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (Dice's α included), so no term of the formula hides behind a zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def test_attention_matches_the_formula_by_hand() -> None:
    """Two rows, three events (one padded): MLP over [t, h, t−h, t·h] → Dice (batch statistics over all six
    events, padding included) → one score, zeroed at padding, no softmax; the output is Σ score·h."""
    att = DINAttention(dim=2, units=(2,))
    _randomise(att, 0)
    t = torch.tensor([[0.5, -1.0], [2.0, 0.3]])
    h = torch.tensor([[[1.0, 0.0], [0.2, -0.4], [-1.5, 0.7]], [[0.0, 0.0], [0.9, 1.1], [-0.3, 0.6]]])
    mask = torch.tensor([[True, True, True], [False, True, True]])
    w1, b1 = att.mlp[0].weight.detach().numpy(), att.mlp[0].bias.detach().numpy()
    alpha = att.mlp[1].alpha.detach().numpy()
    w2, b2 = att.mlp[2].weight.detach().numpy()[0], att.mlp[2].bias.item()
    tn, hn = t.numpy().astype(np.float64), h.numpy().astype(np.float64)
    z = np.array([[w1 @ np.concatenate([tn[b], hn[b, e], tn[b] - hn[b, e], tn[b] * hn[b, e]]) + b1
                   for e in range(3)] for b in range(2)])
    mean, var = z.reshape(6, 2).mean(0), z.reshape(6, 2).var(0)  # training mode: the batch's (biased) variance
    p = 1 / (1 + np.exp(-(z - mean) / np.sqrt(var + 1e-9)))
    score = (p * z + alpha * (1 - p) * z) @ w2 + b2
    score = score * mask.numpy()
    expected = np.einsum("be,bed->bd", score, hn)
    att.train()
    np.testing.assert_allclose(att(t, h, mask).detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def _fuxictr_layers(monkeypatch: pytest.MonkeyPatch) -> tuple[types.ModuleType, types.ModuleType]:
    """FuxiCTR's target_attention and mlp_block modules, loaded without `fuxictr.pytorch.layers`'s
    `__init__` (it imports polars, which this project does not need): its packages are stubbed by path."""
    spec = importlib.util.find_spec("fuxictr")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("fuxictr is not installed: the parity check needs FuxiCTR's layers (pip install --no-deps fuxictr)")
    root = Path(next(iter(spec.submodule_search_locations))) / "pytorch" / "layers"
    packages = (("layers", root), ("layers.attentions", root / "attentions"), ("layers.blocks", root / "blocks"))
    for name, path in packages:
        stub = types.ModuleType(f"fuxictr.pytorch.{name}")
        stub.__path__ = [str(path)]
        monkeypatch.setitem(sys.modules, stub.__name__, stub)
    for sub in ("activations", "blocks.mlp_block", "attentions.target_attention"):
        monkeypatch.delitem(sys.modules, f"fuxictr.pytorch.layers.{sub}", raising=False)
    ta = importlib.import_module("fuxictr.pytorch.layers.attentions.target_attention")
    return ta, importlib.import_module("fuxictr.pytorch.layers.blocks.mlp_block")


def test_layers_equal_fuxictr_s_din_attention_and_mlp_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our weights copied into FuxiCTR's layers, the same input: the same outputs, in training mode (batch
    statistics; twice, so the running statistics move) and in eval mode. In float64: our first attention
    layer sums its four blocks in another order (the same function), which float32 rounds differently."""
    ta, mb = _fuxictr_layers(monkeypatch)
    dim, seq = 8, 5
    ours = DINAttention(dim, (64,)).double()
    _randomise(ours, 1)
    theirs = ta.DIN_Attention(embedding_dim=dim, attention_units=[64], hidden_activations="Dice",
                              output_activation=None, use_softmax=False).double()
    theirs.load_state_dict({f"attention_layer.{k}": v for k, v in ours.state_dict().items()})
    g = torch.Generator().manual_seed(2)
    t, h = torch.randn(6, dim, generator=g).double(), torch.randn(6, seq, dim, generator=g).double()
    mask = torch.rand(6, seq, generator=g) > 0.3
    for train in (True, True, False):  # two training passes move Dice's running statistics, then eval mode
        ours.train(train)
        theirs.train(train)
        torch.testing.assert_close(ours(t, h, mask), theirs(t, h, mask.double()), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.mlp[1].bn.running_var, theirs.attention_layer.mlp[1].bn.running_var)

    dnn = mlp(32, (256, 128), lambda _: torch.nn.ReLU())
    _randomise(dnn, 3)
    block = mb.MLP_Block(input_dim=32, hidden_units=[256, 128], hidden_activations="ReLU", output_dim=1)
    block.load_state_dict({f"mlp.{k}": v for k, v in dnn.state_dict().items()})
    x = torch.randn(7, 32, generator=g)
    torch.testing.assert_close(dnn(x), block(x), rtol=0, atol=1e-6)


def test_fit_stops_after_two_plateaus_and_restores_the_best_epoch() -> None:
    model = torch.nn.Linear(1, 1, bias=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    aucs = iter([0.60, 0.70, 0.70 + 5e-7, 0.65, 0.99])  # epoch 3 is within min_delta: no improvement

    def run_epoch() -> None:
        with torch.no_grad():
            model.weight.fill_(model.weight.item() + 1.0)  # the weight counts the epochs run

    model.weight.data.fill_(0.0)
    result = fit(model, opt, run_epoch, lambda: next(aucs), DINSettings())
    assert result.best_epoch == 2 and result.val_aucs == [0.60, 0.70, 0.70 + 5e-7, 0.65]
    assert model.weight.item() == 2.0  # epoch 2's weights, not epoch 4's
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)  # ×0.1 on each plateau


@pytest.fixture(scope="module")
def tiny(sim_config: Config, tmp_path_factory: pytest.TempPathFactory) -> dict:
    cfg = small_config(sim_config)
    root = tmp_path_factory.mktemp("din")
    for split, seed in (("train", 0), ("eval", 1)):
        (root / "data" / split).mkdir(parents=True)
        # 90 requests a minute apart, from 22:13 UTC: one calendar day
        pq.write_table(random_table(cfg, 90, seed=seed), root / "data" / split / "part-00000.parquet")
    return {"cfg": cfg, "root": root, "data": root / "data"}


def test_validation_is_the_last_utc_day_or_the_newest_tenth_of_requests(tiny: dict, tmp_path: Path) -> None:
    cfg, src = tiny["cfg"], tiny["data"] / "train"
    one_day = carve_validation(cfg, src, tmp_path / "a", DINSettings())
    assert "newest 10% of requests" in one_day["rule"]
    val = pq.read_table(tmp_path / "a" / "eval")
    assert len(set(val["request_id"].to_pylist())) == 9  # 10% of 90 requests, whole
    rest = pq.read_table(tmp_path / "a" / "train")
    assert max(rest["timestamp"].to_pylist()) < min(val["timestamp"].to_pylist())
    table = pq.read_table(src)  # the same requests spread over three days: the last day validates
    ts = table["timestamp"].to_numpy()
    days = np.array(table["request_id"].to_numpy() % 3, dtype=np.int64)
    shifted = table.set_column(table.schema.get_field_index("timestamp"), "timestamp", pa.array(ts + days * 86_400_000))
    (tmp_path / "days").mkdir()
    pq.write_table(shifted, tmp_path / "days" / "part-00000.parquet")
    carved = carve_validation(cfg, tmp_path / "days", tmp_path / "b", DINSettings())
    assert carved["rule"].startswith("last UTC day of the train split (2023-11-1")
    assert carved["val_rows"] == int((days == 2).sum()) and carved["train_rows"] == int((days < 2).sum())


def test_training_keeps_the_best_validation_epoch(tiny: dict, tmp_path: Path) -> None:
    cfg = tiny["cfg"]
    carve_validation(cfg, tiny["data"] / "train", tmp_path, DINSettings(val_fraction=0.3))
    schema = Schema.from_config(cfg)
    train_b, val_b = (load_split(tmp_path / s, schema, cfg.data) for s in ("train", "eval"))
    model, result = train_task(cfg, 0, train_b, val_b, TINY, seed=0)
    assert 1 <= result.best_epoch <= len(result.val_aucs) <= TINY.max_epochs
    assert result.best_epoch == int(np.argmax(result.val_aucs)) + 1
    rows = torch.nonzero(val_b.label_mask[:, 0]).squeeze(1)
    again = auc(val_b.labels[rows, 0].numpy(), predict_logits(model, val_b.take_rows(rows), 64).numpy())
    assert again == result.val_aucs[result.best_epoch - 1]  # the returned weights are the best epoch's


def test_din_arm_runs_beside_unified_with_intervals_seconds_and_parameters(tiny: dict) -> None:
    cfg, root = tiny["cfg"], tiny["root"]
    cfg_path = root / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    out = root / "report"
    args = ["experiment", "unify", "--config", str(cfg_path), "--data", str(tiny["data"]), "--out", str(out),
            "--arms", "unified,din", "--seeds", "0", "--bootstrap", "20", "--threads", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rep = json.loads((out / "report.json").read_text())
    din = rep["arms"]["din"]
    assert din["params"] > 0 and din["train_seconds"] > 0
    models = din["per_seed"]["0"]["models"]
    assert "newest 10% of requests" in models["validation"]["rule"]
    assert set(models) == {"validation", *cfg.task_names}
    assert sum(models[t]["params"] for t in cfg.task_names) == din["params"]
    for t in cfg.task_names:
        assert models[t]["best_epoch"] >= 1 and len(models[t]["val_aucs"]) == models[t]["epochs_run"]
    lo, hi = din["auc_ci"]["overall"]["click"]  # the arm's own AUC interval, as every arm has
    assert lo <= din["overall"]["click"]["auc"] <= hi
    lo, hi = rep["auc_diff_ci_vs_din"]["overall"]["click"]
    assert lo <= rep["auc_diff_vs_din"]["overall"]["click"] <= hi
    text = (out / "report.md").read_text()
    assert "| unified | din |" in text and "Unified − DIN (overall)" in text
    assert "## DIN: early stopping" in text and "## AUC with 95% bootstrap intervals" in text
