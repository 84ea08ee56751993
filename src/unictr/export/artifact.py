"""The export directory format: its manifest, a staged atomic write, checksum verification and loading.

Layout: `model.safetensors`, `manifest.json` and, for ONNX exports, `model.onnx` and
`model_one_user.onnx`. The manifest names the sha256 of every file; loading refuses any mismatch.
The registry publishes exports through the same reading and verification.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unictr.checkpoint import (
    MANIFEST,
    MODEL_FILE,
    CheckpointError,
    current_dir,
    load_model,
    parse_manifest,
    read_manifest,
    read_verified,
    schema_dict,
    sha256_file,
    verify_file,
)
from unictr.export import ExportError
from unictr.model import UnifiedCTR

EXPORT_FORMAT = "unictr-export/1"
ONNX_FILE = "model.onnx"
# The same model exported for requests of exactly one user (the common feed request): the user
# tensors broadcast over the rows instead of being gathered per row (`modules.broadcast.one_user`).
ONNX_ONE_USER_FILE = "model_one_user.onnx"


class NotAnExport(CheckpointError):
    """A directory with a readable manifest of something other than a surface export."""


def build_manifest(
    model: UnifiedCTR,
    surface: str,
    run_dir: Path,
    run_manifest: dict[str, Any],
    files: dict[str, str],
    parity: dict[str, Any],
    lib: dict[str, str],
) -> dict[str, Any]:
    """The manifest of `model`, the export of `surface` from the run in `run_dir`."""
    cfg, schema = model.cfg, model.schema
    state = model.state_dict()
    return {
        "format": EXPORT_FORMAT,
        "surface": surface,
        "tasks": [t for t, on in zip(schema.tasks, schema.task_mask[0], strict=True) if on],
        "schema": schema_dict(schema),
        "config": cfg.model_dump(mode="json"),
        "calibration": {
            "scope": model.calibration_scope,
            "keys": {"view_type": [v for _, v in schema.view_keys], "surface": [surface], "global": ["*"]}[
                model.calibration_scope
            ],
            "tensors": {k: state[k].tolist() for k in state if k.startswith("calibration.")},
        },
        "source_run": {
            "path": str(run_dir.resolve()),
            "manifest_sha256": sha256_file(current_dir(run_dir) / MANIFEST),
            "train_state": run_manifest.get("train_state"),
        },
        # A run made by `unictr calibrate` differs from its parent run only in its calibration.
        "calibration_only": bool(run_manifest.get("calibration_only", False)),
        "parent": run_manifest.get("parent"),
        "metrics": ((run_manifest.get("metrics") or {}).get("surfaces") or {}).get(surface),
        "parity": parity,
        "files": files,
        "versions": lib,
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def read_export_manifest(export_dir: str | Path, raw: bytes | None = None) -> dict[str, Any]:
    """The manifest of a surface export (parsed from `raw`, its bytes as the caller read them, when given);
    raises NotAnExport for any other manifest (CheckpointError: none)."""
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir) if raw is None else parse_manifest(raw, export_dir / MANIFEST)
    if manifest.get("format") != EXPORT_FORMAT:
        raise NotAnExport(f"{export_dir}: not a surface export (format {manifest.get('format')!r})")
    return manifest


def verify_files(export_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Check the sha256 of every file the manifest names; raises CheckpointError on any mismatch."""
    for name in manifest["files"]:
        verify_file(Path(export_dir), name, manifest)


@dataclass(frozen=True)
class LoadedExport:
    """A surface export as loaded: each file read once and checked against the manifest's sha256, and only
    those bytes used (the weights in `model`, the other files, the ONNX graphs, in `files`), so a file
    changed on disk after its check is never the one that runs."""

    path: Path
    model: UnifiedCTR
    manifest: dict[str, Any]
    files: dict[str, bytes]  # every file the manifest names but the weights: name -> verified bytes


def load_export(export_dir: str | Path, manifest: dict[str, Any] | None = None) -> LoadedExport:
    """A surface export, verified as it loads (`LoadedExport`); nothing is unpickled. `manifest`: the one
    a caller has already read from `export_dir` and checked (the registry's published manifest)."""
    export_dir = Path(export_dir)
    manifest = read_export_manifest(export_dir) if manifest is None else manifest
    files = {name: read_verified(export_dir, name, manifest) for name in manifest["files"] if name != MODEL_FILE}
    model, _ = load_model(export_dir, manifest)
    return LoadedExport(export_dir, model, manifest, files)


def check_replaceable(out_dir: Path) -> None:
    """Refuse to write over a non-empty directory unless it holds an earlier export."""
    if out_dir.exists() and any(out_dir.iterdir()):
        try:
            read_export_manifest(out_dir)
        except CheckpointError:
            raise ExportError(f"{out_dir}: exists and is not a unictr export; choose a new or empty --out") from None


@contextlib.contextmanager
def staged_dir(dst: Path) -> Iterator[Path]:
    """A temporary sibling of `dst` to write into, moved to `dst` only if the block succeeds.

    A failed write leaves nothing half-written; an existing `dst` is replaced in two renames.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp"))
    try:
        tmp.chmod(0o755)
        yield tmp
        _replace_dir(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished directory `src` to `dst`, replacing an earlier one there."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        dst.rename(old)
        src.rename(dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        src.rename(dst)
