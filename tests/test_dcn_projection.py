"""DCNv2 projection width: `model.dcn.out_dim: null` passes the cross layers' output to the towers
unprojected; such a model trains and exports (safetensors and ONNX, with the export's parity checks); the
`dcn` bench suite's result renders as its tables."""

from __future__ import annotations

import torch
from benchmarks.report import dcn

from tests.fixtures import small_config, train_small_run
from unictr.bench import headlines
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
    model = load_export(tmp_path / "exp").model
    width = len(cfg.tasks) * cfg.model.mmoe.expert_dim
    assert model.projection.out_dim == width and isinstance(model.projection.proj, torch.nn.Identity)
    assert model.towers.towers[0].mlp[0].in_features == width
    assert manifest["config"]["model"]["dcn"]["out_dim"] is None


def test_dcn_suite_tables_and_headline() -> None:
    """The dcn suite's result renders as its three tables (widths in numeric order, `none` last) and one
    headline row."""
    timing = {"p50_ms": 2.0, "p99_ms": 3.0}
    arms = {f"width_{w if w else 'none'}": {"out_dim": w, "params": 10, "train_seconds": 1.0,
                                            "aucs": {"a": {"click": 0.7}}} for w in (64, None, 16)}
    arms["separate"] = {"out_dim": 64, "params": 30, "train_seconds": 3.0, "aucs": {"a": {"click": 0.6}}}
    serving = {"a": {name: {"params": 5, "mflop": 1.5, "score": timing, "model_only": timing} for name in arms}}
    result = {"dcn": {"data": "d", "request": "r", "unified_out_dim": 64, "surfaces": ["a"], "arms": arms,
                      "serving": serving}}
    text = dcn(result)
    assert [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| 16")] == ["| 16"] * 3
    first_col = [line.split(" | ")[0].strip("| ") for line in text.splitlines() if line.startswith("| ")]
    assert first_col[:5] == ["out_dim", "---", "16", "64", "none"]
    assert "| a | separate | 5 | 1.5 | 2.00 / 3.00 | 2.00 / 3.00 | 0.6000 |" in text
    (row,) = headlines(result)
    assert row[1] == "16: 0.7000 / 2.00 ms, 64: 0.7000 / 2.00 ms, none: 0.7000 / 2.00 ms, separate: 0.6000 / 2.00 ms"
