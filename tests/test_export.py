"""Per-surface export: parity with the unified model (safetensors and ONNX), pruning, checksums."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from tests.fixtures import small_config, train_small_run
from unictr.checkpoint import MANIFEST, MODEL_FILE, CheckpointError, current_dir, load_model, sha256_file
from unictr.cli import app
from unictr.config import Config
from unictr.data.reader import load_split, load_surface_split
from unictr.export import ExportError
from unictr.export.artifact import ONNX_FILE, ONNX_ONE_USER_FILE, load_export
from unictr.export.job import export_all_surfaces, export_surface
from unictr.export.prune import prune_config, prune_state
from unictr.model import UnifiedCTR, probabilities

# --- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_run(sim_config, tmp_path_factory) -> tuple[Config, Path, Path]:
    cfg = small_config(sim_config)
    data, run = train_small_run(cfg, tmp_path_factory.mktemp("export"))
    return cfg, data, run


@pytest.fixture(scope="module")
def unified_eval(small_run):
    cfg, data, run = small_run
    model, _ = load_model(run)
    b = load_split(data / "eval", model.schema, cfg.data)
    return model, b, probabilities(model, b)


# --- tests ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("surface", ["home_feed", "search", "related"])
def test_export_parity_per_surface(small_run, unified_eval, tmp_path, surface) -> None:
    """safetensors and ONNX exports score the surface's rows like the unified model."""
    import onnxruntime as ort

    cfg, data, run = small_run
    full, full_b, full_p = unified_eval
    manifest = export_surface(run, surface, tmp_path / "exp", fmt="onnx")
    loaded = load_export(tmp_path / "exp")
    model = loaded.model
    assert loaded.manifest == manifest and sorted(loaded.files) == sorted(set(manifest["files"]) - {MODEL_FILE})

    b = load_surface_split(data / "eval", model.schema, cfg.data, surface)
    expected = full_p[full_b.surface == full.schema.surfaces.index(surface)]
    assert b.num_rows == len(expected) > 0
    assert (probabilities(model, b) - expected).abs().max().item() <= 1e-5

    session = ort.InferenceSession(str(tmp_path / "exp" / ONNX_FILE), providers=["CPUExecutionProvider"])
    inputs = {i.name: getattr(b, i.name).numpy() for i in session.get_inputs()}
    assert np.abs(session.run(None, inputs)[0] - expected.numpy()).max() <= 1e-4
    # the one-user graph scores a request of one user (its user tensors broadcast, not gathered) alike
    one_user = ort.InferenceSession(str(tmp_path / "exp" / ONNX_ONE_USER_FILE), providers=["CPUExecutionProvider"])
    u = b.take_users(torch.bincount(b.user_index).argmax().view(1))
    assert u.num_users == 1 and u.num_rows >= 2
    got = one_user.run(None, {i.name: getattr(u, i.name).numpy() for i in one_user.get_inputs()})[0]
    assert np.abs(got - probabilities(model, u).numpy()).max() <= 1e-4

    # only this surface: one surface, one tower, no other surface's tower features, smaller file
    assert model.schema.surfaces == (surface,) and len(model.towers.towers) == 1
    others = {f.name for f in cfg.features if f.towers and surface not in f.towers}
    assert others and not others & set(model.schema.cand_cat)
    assert (tmp_path / "exp" / MODEL_FILE).stat().st_size < (current_dir(run) / MODEL_FILE).stat().st_size
    applies = [t.name for t in cfg.tasks if t.surfaces is None or surface in t.surfaces]
    assert manifest["surface"] == surface and manifest["tasks"] == applies
    assert set(manifest["files"]) == {MODEL_FILE, ONNX_FILE, ONNX_ONE_USER_FILE}
    assert manifest["source_run"]["manifest_sha256"] == sha256_file(current_dir(run) / MANIFEST)
    assert manifest["metrics"]["click"]["n"] > 0 and "onnx" in manifest["versions"]
    assert manifest["calibration"]["keys"] == next(s.view_types for s in cfg.surfaces if s.name == surface)


def test_export_cli(small_run, tmp_path) -> None:
    _, _, run = small_run
    for _ in range(2):  # the second export replaces the first
        result = CliRunner().invoke(app, ["export", "--run", str(run), "--surface", "search", "--out",
                                          str(tmp_path / "x")])
        assert result.exit_code == 0, result.output
    assert "model.safetensors" in result.output and set(json.loads((tmp_path / "x" / MANIFEST).read_text())["files"]) \
        == {MODEL_FILE}
    bad = CliRunner().invoke(app, ["export", "--run", str(run), "--surface", "nope", "--out", str(tmp_path / "y")])
    assert bad.exit_code == 2 and "unknown surface 'nope'" in bad.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_checksum_mismatch_refused(small_run, tmp_path) -> None:
    _, _, run = small_run
    export_surface(run, "home_feed", tmp_path / "exp")
    weights = load_file(str(tmp_path / "exp" / MODEL_FILE))
    weights["calibration.bias"] += 1.0
    save_file(weights, str(tmp_path / "exp" / MODEL_FILE))
    with pytest.raises(CheckpointError, match=r"model.safetensors: sha256 mismatch .* refusing to load"):
        load_export(tmp_path / "exp")


def test_failed_export_leaves_nothing(small_run, tmp_path, monkeypatch) -> None:
    _, _, run = small_run

    def broken(*_: object, **__: object) -> float:
        raise ExportError("ONNX output differs from torch")

    monkeypatch.setattr("unictr.export.job.export_onnx", broken)
    with pytest.raises(ExportError, match="differs"):
        export_surface(run, "search", tmp_path / "exp", fmt="onnx")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_foreign_directory(small_run, tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("not an export")
    with pytest.raises(ExportError, match="not a unictr export"):
        export_surface(small_run[2], "search", tmp_path)


def test_prune_config_keeps_every_task(sim_config) -> None:
    pruned = prune_config(sim_config, "search", keep_shapes=True)
    assert [s.name for s in pruned.surfaces] == ["search"]
    assert [t.surfaces for t in pruned.tasks] == [["search"], [], ["search"]]  # save does not apply on search
    assert [f.name for f in pruned.features if f.towers] == ["query_ad_match"]
    with pytest.raises(ExportError, match=r"unknown surface 'x'; the run knows \['home_feed', 'search', 'related'\]"):
        prune_config(sim_config, "x", keep_shapes=True)


def test_prune_state_slices_extra_calibration_and_refuses_unknown(sim_config) -> None:
    """Tensors added to calibration later are sliced by their key dim; unknown parameters are refused."""
    cfg = small_config(sim_config)
    full = UnifiedCTR(cfg)
    pruned = UnifiedCTR(prune_config(cfg, "related", keep_shapes=True))
    full.calibration.register_buffer("posthoc_a", torch.arange(12.0).view(6, 2))  # 6 view keys
    pruned.calibration.register_buffer("posthoc_a", torch.zeros(2, 2))
    state = prune_state(full, pruned, "related")
    assert state["calibration.posthoc_a"].tolist() == [[8.0, 9.0], [10.0, 11.0]]  # related = view keys 4, 5

    pruned.calibration.register_buffer("posthoc_b", torch.zeros(5))
    full.calibration.register_buffer("posthoc_b", torch.zeros(7))
    with pytest.raises(ExportError, match="'calibration.posthoc_b': cannot tell how shape"):
        prune_state(full, pruned, "related")
    del pruned.calibration.posthoc_b
    pruned.extra = torch.nn.Linear(2, 2)
    with pytest.raises(ExportError, match="no pruning rule for parameter 'extra.weight'"):
        prune_state(full, pruned, "related")


def test_export_all_surfaces(small_run, tmp_path) -> None:
    out = export_all_surfaces(small_run[2], tmp_path)
    assert sorted(out) == ["home_feed", "related", "search"]
    assert all(load_export(path).manifest["surface"] == surface for surface, path in out.items())
