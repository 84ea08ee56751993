"""Checkpoints: `model.safetensors` + `manifest.json`, written atomically, verified on load.

Nothing is ever unpickled. The manifest carries the config, the feature schema, library versions
and the sha256 of every file it names; a file whose hash does not match is refused.

A training run keeps its checkpoints in `checkpoints/step-NNNNNNNNN/` with `checkpoints/LATEST` naming
the current one (`train/checkpoints.py` writes them); `current_dir` resolves a run directory to the
directory holding its current manifest, so readers take either layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save

import unictr
from unictr.config import Config, config_from_dict
from unictr.data.batch import Schema
from unictr.files import read_parsed
from unictr.model import UnifiedCTR

MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
CHECKPOINTS = "checkpoints"  # run_dir/checkpoints/step-000000123/ holds one complete checkpoint
POINTER = "LATEST"  # run_dir/checkpoints/LATEST: the current checkpoint directory's name and a newline
FAULT_ENV = "UNICTR_FAULT"
_fault_hits: dict[str, int] = {}


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or fails its checksum."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fault_point(stage: str) -> None:
    """Crash-test hook: SIGKILL this process when env UNICTR_FAULT is `stage` or `stage:N` and this is
    the N-th time (1-based) `stage` is reached in this process. Unset, it does nothing.

    Stages: `mid_file` (half of a safetensors file written), `after_tensors` (a checkpoint's tensor files
    written, its manifest not), `before_pointer` (a step directory in place, LATEST not yet replaced),
    `after_pointer` (LATEST replaced, older checkpoints not yet pruned), `rank<R>.step` (rank R's training
    loop after an optimizer step; only in torchrun's first attempt, so an elastic restart is not killed
    again). The crash tests in tests/test_checkpoints.py, test_resume.py and test_torchrun.py use it.
    """
    want = os.environ.get(FAULT_ENV)
    if not want or want.partition(":")[0] != stage:
        return
    nth = want.partition(":")[2] or "1"
    if not nth.isdigit() or int(nth) < 1:
        raise ValueError(f"{FAULT_ENV}={want!r}: expected STAGE or STAGE:N with N >= 1")
    _fault_hits[stage] = _fault_hits.get(stage, 0) + 1
    if _fault_hits[stage] == int(nth):
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` (files created or renamed in it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_replace(path: Path, write: Any) -> None:
    """Write via `write(tmp_path)` into a temp file in the same directory, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_in_halves(path: Path, data: bytes) -> None:
    """Write `data` to `path` in two halves, with the `mid_file` fault point between them."""
    view = memoryview(data)
    with open(path, "wb") as f:
        f.write(view[: len(data) // 2])
        f.flush()
        fault_point("mid_file")
        f.write(view[len(data) // 2 :])


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> str:
    """Atomically write a safetensors file; returns its sha256."""
    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    _atomic_replace(path, lambda tmp: _write_in_halves(tmp, data))
    return hashlib.sha256(data).hexdigest()


def save_text(text: str, path: Path) -> None:
    """Atomically write a small text file (a manifest, a pointer)."""
    _atomic_replace(path, lambda tmp: tmp.write_text(text))


def save_json(obj: dict, path: Path) -> None:
    save_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def versions() -> dict[str, str]:
    return {"unictr": unictr.__version__, "torch": torch.__version__, "python": platform.python_version()}


def schema_dict(schema: Schema) -> dict[str, Any]:
    return {
        "user_categorical": dict(zip(schema.user_cat, schema.user_cat_sizes, strict=True)),
        "user_dense": list(schema.user_dense),
        "candidate_categorical": dict(zip(schema.cand_cat, schema.cand_cat_sizes, strict=True)),
        "candidate_dense": list(schema.cand_dense),
        "surfaces": list(schema.surfaces),
        "view_keys": [list(k) for k in schema.view_keys],
        "tasks": list(schema.tasks),
    }


def write_checkpoint(
    run_dir: Path,
    cfg: Config,
    tensors: dict[str, dict[str, torch.Tensor]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write each `{file_name: tensors}` atomically, then the manifest naming their hashes (last).

    A crash between renames leaves a manifest whose hashes do not match: load refuses it. Training
    writes into a fresh directory (`train/checkpoints.py`), so a crash there never touches the last one.
    """
    run_dir = Path(run_dir)
    files = {name: save_tensors(t, run_dir / name) for name, t in tensors.items()}
    fault_point("after_tensors")
    manifest = {
        "format": "unictr-checkpoint/1",
        "config": cfg.model_dump(mode="json"),
        "schema": schema_dict(Schema.from_config(cfg)),
        "versions": versions(),
        "files": files,
        **(extra or {}),
    }
    save_json(manifest, run_dir / MANIFEST)
    return manifest


def current_dir(run_dir: str | Path) -> Path:
    """The directory holding the run's current manifest: `checkpoints/<name in LATEST>` when the pointer
    exists, else `run_dir` itself (runs written before step checkpoints, exports, calibrated runs)."""
    run_dir = Path(run_dir)
    pointer = run_dir / CHECKPOINTS / POINTER
    if not pointer.is_file():
        return run_dir
    name = pointer.read_text().strip()
    if name in ("", ".", "..") or "/" in name or os.sep in name:
        raise CheckpointError(f"{pointer}: names {name!r}, not a checkpoint directory name")
    if not (pointer.parent / name).is_dir():
        raise CheckpointError(f"{pointer}: names {name!r}, but {pointer.parent / name} is missing")
    return pointer.parent / name


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The parsed manifest of a run or export directory; CheckpointError if missing, not JSON or incomplete."""
    path = Path(run_dir) / MANIFEST
    return _complete(read_parsed(
        path, json.loads, json.JSONDecodeError, CheckpointError,
        missing="no manifest; not a unictr run or export directory", invalid="manifest is not valid JSON",
    ), path)


def parse_manifest(raw: bytes, path: Path) -> dict[str, Any]:
    """The manifest in `raw`, the bytes a caller read (and checked) from `path`; errors as `read_manifest`'s."""
    try:
        return _complete(json.loads(raw), path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: manifest is not valid JSON: {e}") from None


def _complete(manifest: Any, path: Path) -> dict[str, Any]:
    if not isinstance(manifest, dict) or "files" not in manifest or "config" not in manifest:
        raise CheckpointError(f"{path}: manifest lacks 'files' or 'config'")
    return manifest


def _expected_sha(path: Path, name: str, manifest: dict[str, Any]) -> str:
    expected = manifest["files"].get(name)
    if expected is None:
        raise CheckpointError(f"{path}: not listed in {MANIFEST}")
    if not path.is_file():
        raise CheckpointError(f"{path}: listed in {MANIFEST} but missing")
    return expected


def _check_sha(path: Path, expected: str, actual: str) -> None:
    if actual != expected:
        raise CheckpointError(
            f"{path}: sha256 mismatch (manifest {expected[:12]}…, file {actual[:12]}…); refusing to load"
        )


def verify_file(run_dir: Path, name: str, manifest: dict[str, Any]) -> Path:
    """The path of a file the manifest names, after checking it exists and its sha256 matches (streamed:
    for checks; what is loaded goes through `read_verified`)."""
    path = Path(run_dir) / name
    _check_sha(path, _expected_sha(path, name, manifest), sha256_file(path))
    return path


def read_verified(run_dir: Path, name: str, manifest: dict[str, Any]) -> bytes:
    """The bytes of a file the manifest names, read once and checked against its sha256. The caller
    uses these bytes, not the path: a file changed between the check and the load cannot slip in."""
    path = Path(run_dir) / name
    expected = _expected_sha(path, name, manifest)
    data = path.read_bytes()
    _check_sha(path, expected, hashlib.sha256(data).hexdigest())
    return data


def load_tensors(run_dir: Path, name: str, manifest: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Load one safetensors file from the bytes its sha256 was checked on."""
    return load(read_verified(run_dir, name, manifest))


def load_config_from_manifest(manifest: dict[str, Any], source: str) -> Config:
    return config_from_dict(manifest["config"], f"{source}/{MANIFEST}:config", placeholder_tasks=True)  # exports


def load_model(run_dir: str | Path, manifest: dict[str, Any] | None = None) -> tuple[UnifiedCTR, dict[str, Any]]:
    """Rebuild the model from a run directory's current manifest (or `manifest`, one the caller has read and
    verified from that directory) and its verified weights, in eval mode."""
    run_dir = current_dir(run_dir)
    manifest = read_manifest(run_dir) if manifest is None else manifest
    model = UnifiedCTR(load_config_from_manifest(manifest, str(run_dir)))
    model.load_state_dict(load_tensors(run_dir, MODEL_FILE, manifest), strict=True)
    return model.eval(), manifest
