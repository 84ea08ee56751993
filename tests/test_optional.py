"""A missing optional package (the `onnx` extra) stops a command with one line naming the extra to install,
before any work, instead of a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.fixtures import small_config, train_small_run
from unictr.cli import app
from unictr.config import Config
from unictr.export.job import export_surface
from unictr.optional import MissingExtra, require


def test_require_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(MissingExtra, match=r"the onnx backend needs the optional package 'onnxruntime'; install "
                                           r"the 'onnx' extra: pip install -c constraints.txt -e '\.\[onnx\]'"):
        require("onnxruntime", "onnx", "the onnx backend")
    assert require("json", "none", "x").__name__ == "json"


def test_onnx_export_without_the_extra_is_one_line(sim_config: Config, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _, run = train_small_run(small_config(sim_config), tmp_path)
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(MissingExtra, match="export --format onnx needs the optional package 'onnxscript'"):
        export_surface(run, "search", tmp_path / "exp", fmt="onnx")
    assert not (tmp_path / "exp").exists()  # nothing written
    done = CliRunner().invoke(app, ["export", "--run", str(run), "--surface", "search", "--out",
                                    str(tmp_path / "exp"), "--format", "onnx"])
    assert done.exit_code == 2 and "install the 'onnx' extra" in done.output
