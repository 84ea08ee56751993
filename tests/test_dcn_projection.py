"""DCNv2 projection width: `model.dcn.out_dim: null` passes the cross layers' output to the towers
unprojected; such a model trains and exports (safetensors and ONNX, with the export's parity checks)."""

from __future__ import annotations

import torch

from tests.fixtures import small_config, train_small_run
from unictr.config import with_changes
from unictr.export.artifact import load_export
from unictr.export.job import export_surface
from unictr.modules.dcn import DCNv2Projection


def test_no_projection_is_the_cross_output() -> None:
    torch.manual_seed(0)
    proj = DCNv2Projection(12, layers=2, rank=4, out_dim=None)
    x = torch.randn(5, 12)
    expected = x
    for layer in proj.cross:
        expected = layer(x, expected)
    assert proj.out_dim == 12 and torch.equal(proj(x), expected)
    assert not any(n.startswith("proj") for n, _ in proj.named_parameters())


def test_unprojected_model_trains_and_exports(sim_config, tmp_path) -> None:
    cfg = with_changes(small_config(sim_config), "model.dcn", out_dim=None)
    assert cfg.model.dcn.out_dim is None
    _, run = train_small_run(cfg, tmp_path)
    manifest = export_surface(run, "search", tmp_path / "exp", fmt="onnx")  # raises unless parity holds
    model, _ = load_export(tmp_path / "exp")
    width = len(cfg.tasks) * cfg.model.mmoe.expert_dim
    assert model.projection.out_dim == width and isinstance(model.projection.proj, torch.nn.Identity)
    assert model.towers.towers[0].mlp[0].in_features == width
    assert manifest["config"]["model"]["dcn"]["out_dim"] is None
