"""Crash-safe step checkpoints: `run_dir/checkpoints/step-NNNNNNNNN/` directories and an atomic `LATEST`.

A checkpoint is written whole into a temporary directory, fsynced, renamed into place and only then
made current by replacing `LATEST` (temp file, fsync, rename, fsync of the directory). A crash at any
point leaves `LATEST` naming a complete checkpoint, the previous one or the new one; `clean` removes
what an interrupted write left behind. Readers resolve a run through `checkpoint.current_dir`.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

from torch import Tensor

from unictr.checkpoint import (
    CHECKPOINTS,
    POINTER,
    CheckpointError,
    current_dir,
    fault_point,
    fsync_dir,
    save_text,
    write_checkpoint,
)
from unictr.config import Config

_STEP_DIR = re.compile(r"step-(\d{9,})(\.new)?")  # `.new`: the side copy while the current step is re-saved


def _step(name: str) -> int | None:
    """The step of a checkpoint directory's name; None for anything else."""
    m = _STEP_DIR.fullmatch(name)
    return int(m.group(1)) if m else None


def _is_temp(name: str) -> bool:
    """A leftover of an interrupted write: `.tmp-*` directories, `.LATEST.*.tmp` files."""
    return name.startswith(".tmp-") or (name.startswith(".") and name.endswith(".tmp"))


def _remove(path: Path) -> None:
    """Delete a file or directory; a checkpoint directory is first renamed to a temp name, so a crash
    mid-delete leaves a temp leftover for `clean`, never a half-deleted checkpoint."""
    if path.is_dir() and not path.is_symlink():
        if not _is_temp(path.name):
            path = path.rename(path.with_name(f".tmp-old-{path.name}-{secrets.token_hex(4)}"))
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link a finished (never rewritten) file; copy it where the filesystem has no hard links."""
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise
        shutil.copy2(src, dst)


class CheckpointStore:
    """The step checkpoints of one run directory, keeping the last `keep` complete ones."""

    def __init__(self, run_dir: str | Path, keep: int) -> None:
        if keep < 1:
            raise CheckpointError(f"{run_dir}: checkpoints to keep must be >= 1, got {keep}")
        self.run_dir = Path(run_dir)
        self.keep = keep
        self.root = self.run_dir / CHECKPOINTS

    def latest(self) -> Path | None:
        """The current complete checkpoint directory, or None when the run has none in this layout."""
        if not (self.root / POINTER).is_file():
            return None
        return current_dir(self.run_dir)

    def clean(self) -> list[Path]:
        """Remove the leftovers of interrupted writes (temp files and directories, and checkpoint
        directories at or after the current step that were never made current); returns them."""
        return self._sweep(older=None)

    def save(self, step: int, cfg: Config, tensors: dict[str, dict[str, Tensor]], extra: dict[str, Any]) -> Path:
        """Write checkpoint `step` (tensor files, then the manifest naming their sha256), make it current,
        then delete complete checkpoints beyond the last `keep`; returns its directory.

        On any error nothing of it is left and `LATEST` still names the previous checkpoint; no space
        left on device becomes a CheckpointError saying so. Saving the current step again replaces it.
        """
        name = f"step-{step:09d}"
        self.root.mkdir(parents=True, exist_ok=True)
        previous = self.latest()
        tmp = self.root / f".tmp-{name}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            write_checkpoint(tmp, cfg, tensors, extra)  # each file fsynced, then the directory
            final = self._install(tmp, self.root / name, previous)
        except BaseException as e:
            self._sweep(older=None)
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                now = self.latest()
                intact = f"the previous checkpoint {now.name} is intact" if now else "there is no earlier checkpoint"
                raise CheckpointError(
                    f"{self.run_dir}: no space left on device while writing checkpoint {name} ({e}); {intact}"
                ) from e
            raise
        self._sweep(older=self.keep - 1)
        return final

    def _install(self, tmp: Path, final: Path, previous: Path | None) -> Path:
        """Move the finished `tmp` to `final` and make it current."""
        if final == previous:
            return self._replace_current(tmp, final)
        if final.exists():  # a leftover never made current
            _remove(final)
        tmp.rename(final)
        fsync_dir(self.root)
        self._point(final.name)
        return final

    def _replace_current(self, tmp: Path, final: Path) -> Path:
        """Re-save of the current step: `LATEST` moves to a side copy, the old directory goes, a hard-linked
        copy takes its name, `LATEST` moves back. At every moment it names a complete checkpoint."""
        side = final.with_name(f"{final.name}.new")
        if side.exists():
            _remove(side)
        tmp.rename(side)
        fsync_dir(self.root)
        self._point(side.name)
        _remove(final)
        relinked = self.root / f".tmp-{final.name}-{secrets.token_hex(4)}"
        shutil.copytree(side, relinked, copy_function=_link_or_copy)
        fsync_dir(relinked)
        relinked.rename(final)
        fsync_dir(self.root)
        self._point(final.name)
        _remove(side)
        return final

    def _point(self, name: str) -> None:
        """Atomically make checkpoint directory `name` the current one."""
        fault_point("before_pointer")
        save_text(f"{name}\n", self.root / POINTER)
        fault_point("after_pointer")

    def _sweep(self, older: int | None) -> list[Path]:
        """Remove temp leftovers and checkpoints at or after the current step that are not current; with
        `older` set, also all but the newest `older` checkpoints before the current one."""
        if not self.root.is_dir():
            return []
        current = self.latest()
        now = _step(current.name) if current is not None else -1
        doomed, before = [], []
        for path in self.root.iterdir():
            step = _step(path.name)
            if path == current or path.name == POINTER or (step is None and not _is_temp(path.name)):
                continue  # the current checkpoint, the pointer, and files that are not ours
            if step is None or (now is not None and step >= now):
                doomed.append(path)
            else:
                before.append((step, path))
        if older is not None:
            doomed += [path for _, path in sorted(before)[: max(len(before) - older, 0)]]
        for path in doomed:
            _remove(path)
        return sorted(doomed)
