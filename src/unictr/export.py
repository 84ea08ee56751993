"""Per-surface export: cut the unified model down to one surface and write it as a verified checkpoint.

A surface export is a smaller `UnifiedCTR` built from a pruned config (one surface, only the features
that surface uses, every task kept so the trunk's shapes stay whole) whose weights are sliced out of
the unified run. It loads through the same `UnifiedCTR(cfg)` + `load_state_dict(strict=True)` path as
a training run, and its scores equal the unified model's on that surface's rows.

Layout of an export directory: `model.safetensors`, `manifest.json` and, with `fmt="onnx"`,
`model.onnx`. The manifest names the sha256 of every file; loading refuses any mismatch.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from unictr.checkpoint import (
    MANIFEST,
    MODEL_FILE,
    CheckpointError,
    load_model,
    read_manifest,
    save_json,
    save_tensors,
    schema_dict,
    sha256_file,
    verify_file,
    versions,
)
from unictr.config import Config, config_from_dict
from unictr.data.batch import MODEL_INPUTS, USER_FIELDS, Batch, Schema
from unictr.model import UnifiedCTR, probabilities

EXPORT_FORMAT = "unictr-export/1"
ONNX_FILE = "model.onnx"
# The same model exported for requests of exactly one user (the common feed request): the user
# tensors broadcast over the rows instead of being gathered per row (`modules.broadcast.one_user`).
ONNX_ONE_USER_FILE = "model_one_user.onnx"
PARITY_ATOL = 1e-5  # unified vs exported, fp32 probabilities
ONNX_ATOL = 1e-4  # torch vs onnxruntime probabilities
# Parameters that every surface shares: copied unchanged.
_SHARED_PREFIXES = (
    "user_dense.", "cand_dense.", "sequence.", "target_attention.", "mmoe.first.", "mmoe.w2", "mmoe.b2",
    "projection.",
)


class ExportError(ValueError):
    """An export that cannot be made or fails its own checks."""


# --- pruning -------------------------------------------------------------------------------------


def prune_config(cfg: Config, surface: str) -> Config:
    """The config of a model that serves only `surface`.

    Keeps the trunk features and the surface's own tower features (every tower feature when the
    tower is shared, since the shared tower fuses them all), and every task (the DCN input is
    tasks × expert_dim) with `surfaces` set to `[surface]` where it applies there, else `[]`.
    """
    if surface not in cfg.surface_names:
        raise ExportError(f"unknown surface {surface!r}; the run knows {cfg.surface_names}")
    shared_tower = not cfg.model.tower.per_surface
    raw = cfg.model_dump(mode="json")
    raw["surfaces"] = [s for s in raw["surfaces"] if s["name"] == surface]
    raw["features"] = [
        {**f, "towers": [surface]} if f["towers"] else f
        for f in raw["features"]
        if not f["towers"] or surface in f["towers"] or shared_tower
    ]
    applies = dict(zip(cfg.task_names, cfg.task_surface_mask()[cfg.surface_names.index(surface)], strict=True))
    raw["tasks"] = [{**t, "surfaces": [surface] if applies[t["name"]] else []} for t in raw["tasks"]]
    return config_from_dict(raw, f"pruned config for surface {surface!r}")


def prune_state(full: UnifiedCTR, pruned: UnifiedCTR, surface: str) -> dict[str, Tensor]:
    """`pruned`'s state dict with every tensor sliced out of `full`'s for `surface`.

    Each parameter has an explicit rule; a name without one, or a slice whose shape differs from
    the pruned model's, raises instead of copying something wrong.
    """
    fs = full.schema
    s = fs.surfaces.index(surface)
    view_rows = [i for i, (name, _) in enumerate(fs.view_keys) if name == surface]
    starts = full.embedding.table_offsets(pruned.embedding.names).tolist()
    emb_rows = torch.cat([torch.arange(0)] + [  # the kept tables' rows of the fused table, in the pruned order
        torch.arange(a, a + size) for a, size in zip(starts, pruned.embedding.sizes, strict=True)
    ])
    scope_rows = {"view_type": view_rows, "surface": [s], "global": [0]}[full.calibration_scope]
    tower = s if full.cfg.model.tower.per_surface else 0
    pruned_state = pruned.state_dict()

    def rows(idx: list[int] | Tensor) -> Callable[[Tensor], Tensor]:
        return lambda t: t[torch.as_tensor(idx)]

    def calibration(name: str) -> Callable[[Tensor], Tensor]:
        """Calibration tensors: the learned ones by scope; others (e.g. post-hoc) by their leading dim."""
        if name in ("calibration.log_temperature", "calibration.bias"):
            return rows(scope_rows)
        target = pruned_state[name].shape

        def slice_keys(t: Tensor) -> Tensor:
            if t.shape == target:  # not keyed by view type or surface
                return t
            if t.shape[1:] == target[1:] and t.shape[0] == len(fs.view_keys) and target[0] == len(view_rows):
                return t[torch.as_tensor(view_rows)]
            if t.shape[1:] == target[1:] and t.shape[0] == len(fs.surfaces) and target[0] == 1:
                return t[s : s + 1]
            raise ExportError(
                f"parameter {name!r}: cannot tell how shape {tuple(t.shape)} maps to {tuple(target)}; "
                "add a pruning rule to unictr.export.prune_state"
            )

        return slice_keys

    def rule(name: str) -> tuple[str, Callable[[Tensor], Tensor]]:
        """(source name in the unified state dict, slicer) for a pruned parameter name."""
        if name == "embedding.weight":
            return name, rows(emb_rows)
        if name == "view_embedding.weight":
            return name, rows(view_rows)
        if name.startswith("mmoe.gate."):  # out dim laid out [surface, task, expert]
            return name, lambda t: t.view(len(fs.surfaces), -1, *t.shape[1:])[s]
        if name.startswith("towers.towers.0."):
            return name.replace("towers.towers.0.", f"towers.towers.{tower}.", 1), lambda t: t
        if name.startswith("calibration."):
            return name, calibration(name)
        if name.startswith(_SHARED_PREFIXES):
            return name, lambda t: t
        raise ExportError(f"no pruning rule for parameter {name!r}; add one to unictr.export.prune_state")

    source = full.state_dict()
    out: dict[str, Tensor] = {}
    for name, target in pruned_state.items():
        src, slicer = rule(name)
        if src not in source:
            raise ExportError(f"parameter {name!r}: the unified model has no {src!r}")
        value = slicer(source[src])
        if value.shape != target.shape:
            raise ExportError(
                f"parameter {name!r}: sliced shape {tuple(value.shape)} != pruned model's {tuple(target.shape)}"
            )
        out[name] = value.detach().clone().contiguous()
    return out


def prune_model(full: UnifiedCTR, surface: str) -> UnifiedCTR:
    """The surface model with the unified model's weights, in eval mode."""
    pruned = UnifiedCTR(prune_config(full.cfg, surface))
    pruned.load_state_dict(prune_state(full, pruned, surface), strict=True)
    return pruned.eval()


# --- batches --------------------------------------------------------------------------------------


def probe_batch(schema: Schema, surface: str, users: int = 5, rows: int = 17, seed: int = 0) -> Batch:
    """A random but valid batch of `surface` rows (rows >= users), for export-time checks and ONNX tracing."""
    g = torch.Generator().manual_seed(seed)

    def ids(n: int, sizes: tuple[int, ...]) -> Tensor:
        cols = [torch.randint(0, size, (n,), generator=g) for size in sizes]
        return torch.stack(cols, 1) if cols else torch.zeros((n, 0), dtype=torch.int64)

    spec = schema.sequence
    length = spec.max_len if spec is not None else 1
    seen = torch.randint(0, length + 1, (users,), generator=g) if spec is not None else torch.zeros(users).long()
    seq_mask = torch.arange(length)[None, :] >= (length - seen)[:, None]
    view_keys = [i for i, (name, _) in enumerate(schema.view_keys) if name == surface]
    s = schema.surfaces.index(surface)
    tasks = len(schema.tasks)
    return Batch(
        user_cat=ids(users, schema.user_cat_sizes),
        user_dense=torch.randn((users, len(schema.user_dense)), generator=g),
        seq_item=torch.randint(0, schema.item_hash_size if spec else 1, (users, length), generator=g) * seq_mask,
        seq_side=torch.stack(
            [torch.randint(0, size, (users, length), generator=g) * seq_mask for size in schema.seq_side_sizes]
            or [torch.zeros((users, length), dtype=torch.int64)],
            dim=2,
        )[..., : len(schema.seq_side_sizes)],
        seq_action=torch.randint(0, spec.num_actions if spec else 1, (users, length), generator=g) * seq_mask,
        seq_age=torch.rand((users, length), generator=g) * 1e5 * seq_mask,
        seq_mask=seq_mask,
        cand_cat=ids(rows, schema.cand_cat_sizes),
        cand_dense=torch.randn((rows, len(schema.cand_dense)), generator=g),
        surface=torch.full((rows,), s, dtype=torch.int64),
        view_key=torch.tensor(view_keys)[torch.randint(0, len(view_keys), (rows,), generator=g)],
        user_index=torch.cat([torch.arange(users), torch.randint(0, users, (rows - users,), generator=g)]),
        labels=torch.zeros((rows, tasks)),
        label_mask=torch.tensor(schema.task_mask[s]).expand(rows, tasks).clone(),
    )


def to_surface_batch(b: Batch, full: Schema, pruned: Schema) -> Batch:
    """A unified-schema batch of one surface's rows re-expressed in the pruned model's schema."""
    view_index = {key: i for i, key in enumerate(pruned.view_keys)}
    return b.with_(
        cand_cat=b.cand_cat[:, [full.cand_cat.index(n) for n in pruned.cand_cat]],
        surface=torch.zeros_like(b.surface),
        view_key=torch.tensor([view_index[full.view_keys[k]] for k in b.view_key.tolist()], dtype=torch.int64),
        label_mask=torch.tensor(pruned.task_mask[0]).expand_as(b.label_mask).clone(),
    )


# --- ONNX -----------------------------------------------------------------------------------------


class BatchInputs(nn.Module):
    """Wraps a model so it takes the `Batch` tensors positionally (`MODEL_INPUTS`) and returns probabilities."""

    def __init__(self, model: UnifiedCTR) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        user_cat: Tensor,
        user_dense: Tensor,
        seq_item: Tensor,
        seq_side: Tensor,
        seq_action: Tensor,
        seq_age: Tensor,
        seq_mask: Tensor,
        cand_cat: Tensor,
        cand_dense: Tensor,
        surface: Tensor,
        view_key: Tensor,
        user_index: Tensor,
    ) -> Tensor:
        n, tasks = cand_cat.shape[0], len(self.model.schema.tasks)
        b = Batch(
            user_cat, user_dense, seq_item, seq_side, seq_action, seq_age, seq_mask, cand_cat, cand_dense, surface,
            view_key, user_index, labels=cand_dense.new_zeros((n, tasks)),
            label_mask=surface.new_zeros((n, tasks)).bool(),
        )
        return torch.sigmoid(self.model(b).float())


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def export_onnx(model: UnifiedCTR, path: Path, example: Batch, check: Batch, one_user: bool = False) -> float:
    """Write `model` as ONNX (torch's dynamo exporter, dynamic U and N) and check it with onnxruntime.

    `one_user`: the graph for batches of exactly one user (U fixed at 1; `example` and `check` must
    have one user). Returns the max abs difference of the probabilities on `check`; raises
    ExportError above ONNX_ATOL.
    """
    import onnxruntime as ort

    wrapper = BatchInputs(model).eval()
    users, rows = torch.export.Dim("users"), torch.export.Dim("rows")
    user_dims = None if one_user else {0: users}  # one user: the user inputs keep their static first dim of 1
    dynamic = tuple(user_dims if n in USER_FIELDS else {0: rows} for n in MODEL_INPUTS)
    log = io.StringIO()  # the exporter is chatty; keep its output for the error message only
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), \
                _quiet_logger("torch.onnx"):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, tuple(getattr(example, n) for n in MODEL_INPUTS), str(path), dynamo=True,
                input_names=list(MODEL_INPUTS), output_names=["probabilities"], dynamic_shapes=dynamic,
                external_data=False, verbose=False,
            )
    except Exception as e:  # the exporter raises many types; all mean the same here
        raise ExportError(f"ONNX export failed: {type(e).__name__}: {e}\n{log.getvalue()[-2000:]}") from e
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: getattr(check, n).numpy() for n in MODEL_INPUTS})[0]
    diff = float(np.abs(got - probabilities(model, check).numpy()).max())
    if not diff <= ONNX_ATOL:
        raise ExportError(f"ONNX output differs from torch by {diff:.3g} (> {ONNX_ATOL}); export refused")
    return diff


# --- export and load ------------------------------------------------------------------------------


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
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    _check_replaceable(out_dir)
    full, run_manifest = load_model(run_dir)
    model = prune_model(full, surface)

    probe = probe_batch(full.schema, surface)
    probe_s = to_surface_batch(probe, full.schema, model.schema)
    diff = float((probabilities(full, probe) - probabilities(model, probe_s)).abs().max())
    if not diff <= PARITY_ATOL:
        raise ExportError(f"surface model differs from the unified model by {diff:.3g} (> {PARITY_ATOL})")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    tmp.chmod(0o755)
    try:
        files = {MODEL_FILE: save_tensors(model.state_dict(), tmp / MODEL_FILE)}
        parity: dict[str, Any] = {"probe_rows": probe.num_rows, "max_abs_diff": diff}
        lib = versions()
        if fmt == "onnx":
            import onnx
            import onnxruntime

            example = probe_batch(full.schema, surface, users=3, rows=7, seed=1)
            example = to_surface_batch(example, full.schema, model.schema)
            parity["onnx_max_abs_diff"] = export_onnx(model, tmp / ONNX_FILE, example, check=probe_s)
            files[ONNX_FILE] = sha256_file(tmp / ONNX_FILE)
            one, check = (probe_batch(full.schema, surface, users=1, rows=r, seed=r) for r in (7, 17))
            parity["onnx_one_user_max_abs_diff"] = export_onnx(
                model, tmp / ONNX_ONE_USER_FILE, to_surface_batch(one, full.schema, model.schema),
                check=to_surface_batch(check, full.schema, model.schema), one_user=True,
            )
            files[ONNX_ONE_USER_FILE] = sha256_file(tmp / ONNX_ONE_USER_FILE)
            lib |= {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
        manifest = _manifest(model, surface, run_dir, run_manifest, files, parity, lib)
        save_json(manifest, tmp / MANIFEST)
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def export_all_surfaces(run_dir: str | Path, out_root: str | Path) -> dict[str, Path]:
    """Export every surface of a run into `out_root/<surface>`; returns surface → directory."""
    names = read_manifest(Path(run_dir))["config"]["surfaces"]
    out = {s["name"]: Path(out_root) / s["name"] for s in names}
    for surface, path in out.items():
        export_surface(run_dir, surface, path)
    return out


def _manifest(
    model: UnifiedCTR,
    surface: str,
    run_dir: Path,
    run_manifest: dict[str, Any],
    files: dict[str, str],
    parity: dict[str, Any],
    lib: dict[str, str],
) -> dict[str, Any]:
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
            "manifest_sha256": sha256_file(run_dir / MANIFEST),
            "train_state": run_manifest.get("train_state"),
        },
        "metrics": ((run_manifest.get("metrics") or {}).get("surfaces") or {}).get(surface),
        "parity": parity,
        "files": files,
        "versions": lib,
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _check_replaceable(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        try:
            is_export = read_manifest(out_dir).get("format") == EXPORT_FORMAT
        except CheckpointError:
            is_export = False
        if not is_export:
            raise ExportError(f"{out_dir}: exists and is not a unictr export; choose a new or empty --out")


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished directory `src` to `dst`, replacing an earlier export there."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        dst.rename(old)
        src.rename(dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        src.rename(dst)


def verify_files(export_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Check the sha256 of every file the manifest names; raises CheckpointError on any mismatch."""
    for name in manifest["files"]:
        verify_file(Path(export_dir), name, manifest)


def load_export(export_dir: str | Path) -> tuple[UnifiedCTR, dict[str, Any]]:
    """A surface model and its manifest, after verifying every file's checksum; nothing is unpickled."""
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    if manifest.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{export_dir}: not a surface export (format {manifest.get('format')!r})")
    verify_files(export_dir, manifest)
    model, _ = load_model(export_dir)
    return model, manifest
