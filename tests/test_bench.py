"""`unictr bench`: every suite runs at a tiny size and writes its JSON keys (no timing assertions);
the scorer's serving backends score like the eager model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.fixtures import SURFACE, same_time_table, small_config, table_to_request, train_small_run
from unictr.bench import headlines
from unictr.checkpoint import MANIFEST
from unictr.cli import app
from unictr.export.artifact import ONNX_ONE_USER_FILE
from unictr.export.job import export_surface
from unictr.modules.embedding import FusedEmbedding
from unictr.serving.scorer import Scorer

CONTRACT = {
    "embedding": {"train_step_speedup"},
    "broadcast": {"speedup_1x500"},
    "serving": {"p50_ms", "p99_ms", "floor_ms"},
    "training": {"rows_per_s"},
    "floor": {"matmul", "requests"},
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> dict:
    """One `unictr bench --suite all --quick` run, shared by the checks below."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--suite", "all", "--quick", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_quick_run_writes_the_contract_keys(quick_run) -> None:
    for suite, keys in CONTRACT.items():
        assert keys <= set(quick_run[suite]), (suite, sorted(quick_run[suite]))
        assert len(quick_run[suite]["load_average_at_start"]) == 3
    machine = quick_run["machine"]
    assert machine["threads"] == 1 and machine["quick"] and machine["logical_cores"] >= 1
    assert len(headlines(quick_run)) == 8


def test_quick_run_measures_like_for_like(quick_run) -> None:
    """Compared variants compute the same thing; every timing has its statistics."""
    for k in (1, 10):
        emb = quick_run["embedding"][f"ids_per_bag_{k}"]
        assert emb["max_abs_diff"] < 1e-5
        assert {"median_ms", "min_ms", "max_ms", "repeats"} <= set(emb["forward"]["fused"])
    for model in ("sim_default", "long_sequence"):
        for req in quick_run["broadcast"][model]["requests"].values():
            assert req["max_abs_diff"] <= 1e-6 and req["floor_ms"] > 0
    serving = quick_run["serving"]
    # the headline is the advised configuration (ONNX Runtime, one thread here) on the numpy request
    assert serving["backend"] == "onnx_fp32" and serving["request_form"] == "numpy_columns"
    assert serving["p99_ms"] == serving["in_process_numpy"]["onnx_fp32"]["p99_ms"]
    fastest = serving["fastest"]
    assert fastest["p50_ms"] == min(t["median_ms"] for t in serving["in_process"].values())
    assert fastest["p99_ms"] == serving["in_process"][fastest["backend"]]["p99_ms"]
    assert set(serving["in_process_numpy"]) == set(serving["in_process"])  # both request forms, every variant
    assert set(serving["request_layouts"]) == {"candidate_columns", "candidates", "numpy_columns"}
    assert all(d < 1e-2 for d in serving["max_abs_diff_vs_eager_fp32"].values())  # bf16 is within 1e-2
    assert set(serving["http"]) >= {"eager_fp32"}
    assert serving["p99_x_floor"] == pytest.approx(serving["p99_ms"] / serving["floor_ms"])
    assert quick_run["training"]["rows_per_s"] > 0


def test_unknown_suite_fails_cleanly() -> None:
    result = CliRunner().invoke(app, ["bench", "--suite", "nope", "--quick"])
    assert result.exit_code == 2 and "unknown suite 'nope'" in result.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_suites_run(tmp_path) -> None:
    out = tmp_path / "gpu.json"
    args = ["bench", "--suite", "all", "--quick", "--device", "cuda", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["machine"]["device"].startswith("cuda") and doc["machine"]["tf32"] is True
    assert doc["serving"]["http"] == {"skipped": "the HTTP server runs on the CPU"}


def test_scorer_backends_score_like_eager(sim_config, tmp_path) -> None:
    """The ONNX backend (the export's model.onnx in ONNX Runtime, what `auto` picks when there is one; its
    model_one_user.onnx for chunks of one user) and bf16 autocast serve the same scores as eager PyTorch."""
    cfg = small_config(sim_config)
    _, run = train_small_run(cfg, tmp_path)
    export_surface(run, SURFACE, tmp_path / "export", fmt="onnx")
    table, now = same_time_table(cfg, 30, seed=3)
    request = table_to_request(table, cfg, SURFACE, now)
    eager = Scorer.load(tmp_path / "export", backend="eager").score(request).probabilities
    assert Scorer.load(tmp_path / "export").backend == "onnx"
    onnx = Scorer.load(tmp_path / "export", backend="onnx", max_unique_users=4).score(request)
    np.testing.assert_allclose(onnx.probabilities, eager, rtol=0, atol=1e-5)
    assert onnx.chunks > 1
    one_user = Scorer.load(tmp_path / "export", backend="onnx", max_unique_users=1).score(request)  # one-user graph
    np.testing.assert_allclose(one_user.probabilities, eager, rtol=0, atol=1e-5)
    assert one_user.chunks == one_user.unique_users > 1
    older = tmp_path / "older"  # an export from before model_one_user.onnx: the general graph serves all
    shutil.copytree(tmp_path / "export", older)
    (older / ONNX_ONE_USER_FILE).unlink()
    manifest = json.loads((older / MANIFEST).read_text())
    del manifest["files"][ONNX_ONE_USER_FILE]
    (older / MANIFEST).write_text(json.dumps(manifest))
    general = Scorer.load(older, backend="onnx", max_unique_users=1).score(request).probabilities
    np.testing.assert_allclose(general, eager, rtol=0, atol=1e-5)
    bf16 = Scorer.load(tmp_path / "export", bf16=True).score(request).probabilities
    np.testing.assert_allclose(bf16, eager, rtol=0, atol=2e-2)
    with pytest.raises(ValueError, match="backend must be one of auto, eager, compile, onnx"):
        Scorer.load(tmp_path / "export", backend="tvm")
    with pytest.raises(ValueError, match="backend must be one of"):  # refused before the (missing) export is read
        Scorer.load(tmp_path / "no-such-export", backend="tvm")
    export_surface(run, SURFACE, tmp_path / "plain")
    assert Scorer.load(tmp_path / "plain").backend == "eager"
    with pytest.raises(ValueError, match="no model.onnx; export with --format onnx"):
        Scorer.load(tmp_path / "plain", backend="onnx")


def test_fused_embedding_sparse_gradients_equal_dense() -> None:
    """`sparse=True` (the embedding suite's row-sparse SGD) changes the gradient's layout, not its value."""
    torch.manual_seed(0)
    dense = FusedEmbedding(["a", "b"], [7, 5], 4)
    sparse = FusedEmbedding(["a", "b"], [7, 5], 4, sparse=True)
    sparse.load_state_dict(dense.state_dict())
    for rows in (torch.tensor([0, 3, 3, 11]), torch.tensor([[0, 8], [3, 3]])):
        dense.weight.grad = sparse.weight.grad = None
        dense(rows).sum().backward()
        sparse(rows).sum().backward()
        assert sparse.weight.grad.is_sparse
        torch.testing.assert_close(sparse.weight.grad.to_dense(), dense.weight.grad)
