"""The export job: prune a trained run to one surface, check parity with the unified model, write the artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unictr.checkpoint import (
    MANIFEST,
    MODEL_FILE,
    current_dir,
    load_model,
    read_manifest,
    save_json,
    save_tensors,
    sha256_file,
    versions,
)
from unictr.data.batch import Batch, Schema
from unictr.export import ExportError
from unictr.export.artifact import ONNX_FILE, ONNX_ONE_USER_FILE, build_manifest, check_replaceable, staged_dir
from unictr.export.onnx import export_onnx
from unictr.export.probe import probe_batch
from unictr.export.prune import prune_model, to_surface_batch
from unictr.model import UnifiedCTR, probabilities
from unictr.optional import require

PARITY_ATOL = 1e-5  # unified vs exported, fp32 probabilities


def export_surface(
    run_dir: str | Path, surface: str, out_dir: str | Path, fmt: str = "safetensors"
) -> dict[str, Any]:
    """Export `surface` of the run in `run_dir` into `out_dir`; returns the manifest.

    Everything is written into a temporary sibling directory and moved into place only after the
    parity checks pass, so a failed export leaves nothing half-written. An existing export at
    `out_dir` is replaced; any other non-empty directory is refused.
    """
    if fmt not in ("safetensors", "onnx"):
        raise ExportError(f"format must be 'safetensors' or 'onnx', got {fmt!r}")
    if fmt == "onnx":  # before any work: a missing package is one line, not a traceback after the checks
        onnx = require("onnx", "onnx", "export --format onnx")
        onnxruntime = require("onnxruntime", "onnx", "export --format onnx")
        require("onnxscript", "onnx", "export --format onnx")  # torch's dynamo exporter
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    check_replaceable(out_dir)
    full, run_manifest = load_model(run_dir)
    model = prune_model(full, surface)

    probe = probe_batch(full.schema, surface)
    probe_s = to_surface_batch(probe, full.schema, model.schema)
    diff = float((probabilities(full, probe) - probabilities(model, probe_s)).abs().max())
    if not diff <= PARITY_ATOL:
        raise ExportError(f"surface model differs from the unified model by {diff:.3g} (> {PARITY_ATOL})")

    with staged_dir(out_dir) as tmp:
        files = {MODEL_FILE: save_tensors(model.state_dict(), tmp / MODEL_FILE)}
        parity: dict[str, Any] = {"probe_rows": probe.num_rows, "max_abs_diff": diff}
        lib = versions()
        if fmt == "onnx":
            files, parity = _write_onnx(model, full.schema, surface, tmp, probe_s, files, parity)
            lib |= {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
        manifest = build_manifest(model, surface, run_dir, run_manifest, files, parity, lib)
        save_json(manifest, tmp / MANIFEST)
    return manifest


def _write_onnx(
    model: UnifiedCTR,
    full: Schema,
    surface: str,
    out: Path,
    check: Batch,
    files: dict[str, str],
    parity: dict[str, Any],
) -> tuple[dict[str, str], dict[str, Any]]:
    """Write the general and the one-user graph into `out`; `files` and `parity` with their entries added."""

    def surface_probe(users: int, rows: int, seed: int) -> Batch:
        return to_surface_batch(probe_batch(full, surface, users=users, rows=rows, seed=seed), full, model.schema)

    example = surface_probe(users=3, rows=7, seed=1)
    parity = parity | {"onnx_max_abs_diff": export_onnx(model, out / ONNX_FILE, example, check=check)}
    files = files | {ONNX_FILE: sha256_file(out / ONNX_FILE)}
    one, one_check = surface_probe(users=1, rows=7, seed=7), surface_probe(users=1, rows=17, seed=17)
    one_user = export_onnx(model, out / ONNX_ONE_USER_FILE, one, one_check, one_user=True)
    parity |= {"onnx_one_user_max_abs_diff": one_user}
    files |= {ONNX_ONE_USER_FILE: sha256_file(out / ONNX_ONE_USER_FILE)}
    return files, parity


def export_all_surfaces(run_dir: str | Path, out_root: str | Path) -> dict[str, Path]:
    """Export every surface of a run into `out_root/<surface>`; returns surface → directory."""
    names = read_manifest(current_dir(run_dir))["config"]["surfaces"]
    out = {s["name"]: Path(out_root) / s["name"] for s in names}
    for surface, path in out.items():
        export_surface(run_dir, surface, path)
    return out
