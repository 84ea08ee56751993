"""Sequence encoders by name: the registry, the config's choice, and a second encoder end to end."""

from __future__ import annotations

import math
import typing

import numpy as np
import pytest
import torch

from tests.fixtures import small_config, train_small_run
from unictr.checkpoint import load_model
from unictr.config import ConfigError, SequenceModelSpec, with_changes
from unictr.data.reader import load_split, load_surface_split
from unictr.export.artifact import ONNX_FILE, load_export
from unictr.export.job import export_surface
from unictr.model import UnifiedCTR, probabilities
from unictr.modules.encoders import ENCODERS, build_sequence_encoder
from unictr.modules.mean_pool import MeanPoolEncoder
from unictr.modules.sequence import TransformerEncoder


def test_registry_matches_the_config_choices() -> None:
    assert set(ENCODERS) == set(typing.get_args(SequenceModelSpec.model_fields["encoder"].annotation))
    assert SequenceModelSpec().encoder == "transformer"
    assert isinstance(build_sequence_encoder(SequenceModelSpec(), 8, 4), TransformerEncoder)


def test_unknown_encoder_is_refused_naming_the_known_ones(sim_config) -> None:
    with pytest.raises(ConfigError, match="'transformer' or 'mean_pool'"):
        with_changes(sim_config, "model.sequence", encoder="lstm")


def test_default_encoder_keeps_its_state_dict_names(sim_config) -> None:
    """Checkpoints written before the registry load: the Transformer's tensors keep their names."""
    names = {n for n in UnifiedCTR(sim_config).state_dict() if n.startswith("sequence.")}
    assert {"sequence.start", "sequence.action.weight", "sequence.age.weight", "sequence.ln.weight",
            "sequence.blocks.0.qkv.weight", "sequence.blocks.0.mlp.2.bias"} <= names


def test_mean_pool_ignores_padding() -> None:
    torch.manual_seed(0)
    enc = MeanPoolEncoder(SequenceModelSpec(encoder="mean_pool", time_buckets=16), dim=8, num_actions=4).eval()
    item, action, age = torch.randn(3, 6, 8), torch.randint(0, 4, (3, 6)), torch.rand(3, 6) * 1000
    mask = torch.arange(6)[None, :] >= (6 - torch.tensor([6, 2, 0]))[:, None]  # left-padded; user 2 has none
    tokens, tmask, summary = enc(item, action, age, mask)
    assert tokens.shape == (3, 7, 8) and tmask.shape == (3, 7) and summary.shape == (3, enc.out_dim)
    assert tmask[:, 0].all() and torch.equal(summary[2], torch.zeros(8))
    noisy = torch.where(mask[..., None], item, torch.randn_like(item) * 100)
    torch.testing.assert_close(enc(noisy, torch.where(mask, action, 3), age, mask)[2], summary)


def test_mean_pool_model_trains_and_exports(sim_config, tmp_path) -> None:
    """Config values swap the encoder and the target attention (KuaiRand's pair: mean_pool and DIN's activation
    unit): the model trains to a finite loss, and its surface export (safetensors and ONNX) scores that
    surface's rows like the unified model."""
    import onnxruntime as ort

    cfg = with_changes(small_config(sim_config), "model.sequence", encoder="mean_pool",
                       target_attention="activation_unit", attention_hidden=8)
    torch.manual_seed(0)
    data, run = train_small_run(cfg, tmp_path)
    full, run_manifest = load_model(run)
    assert isinstance(full.sequence, MeanPoolEncoder) and full.target_attention is None
    assert full.activation_unit is not None
    assert math.isfinite(run_manifest["history"][-1]["train_loss"])

    manifest = export_surface(run, "search", tmp_path / "exp", fmt="onnx")
    model = load_export(tmp_path / "exp").model
    assert manifest["config"]["model"]["sequence"]["encoder"] == "mean_pool"
    full_b = load_split(data / "eval", full.schema, cfg.data)
    expected = probabilities(full, full_b)[full_b.surface == full.schema.surfaces.index("search")]
    b = load_surface_split(data / "eval", model.schema, cfg.data, "search")
    assert b.num_rows == len(expected) > 0
    assert (probabilities(model, b) - expected).abs().max().item() <= 1e-5
    session = ort.InferenceSession(str(tmp_path / "exp" / ONNX_FILE), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: getattr(b, i.name).numpy() for i in session.get_inputs()})[0]
    assert np.abs(got - expected.numpy()).max() <= 1e-4
