"""On-disk model registry: versions per surface, a gated atomic promote, instant rollback, shadow.

Layout:

    REGISTRY/<surface>/versions/v0001/     a published export (model.safetensors, manifest.json, ...)
    REGISTRY/<surface>/pointer.json        {"live": "v0002", "history": ["v0001"], "shadow": null, ...}
    REGISTRY/<surface>/reports/*.json      one report per promote / rollback

`pointer.json` is the only thing a server reads to decide what is live; it is replaced atomically
(temp file + rename), so a reader sees the old or the new pointer, never a torn one. Writers of one
surface serialise on a lock file. `history` is the stack of earlier live versions that `rollback` pops.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unictr.checkpoint import MANIFEST, save_json, sha256_file
from unictr.export.artifact import NotAnExport, read_export_manifest, staged_dir, verify_files

if TYPE_CHECKING:
    from unictr.gate import GatePolicy, GateReport

POINTER = "pointer.json"
PUBLISHED = "published.json"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_VERSION = re.compile(r"^v(\d{4,})$")


class RegistryError(ValueError):
    """A registry operation that cannot be done; the message says why."""


@dataclass(frozen=True)
class Pointer:
    """What a surface serves: the live version, the versions before it, and an optional shadow."""

    live: str | None = None
    history: tuple[str, ...] = ()
    shadow: str | None = None
    updated_at: str | None = None


def utc_now() -> str:
    """The time now, UTC, ISO 8601 to the millisecond (what reports and records carry)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class Registry:
    """A registry directory; every method reads the disk afresh, so several processes can share it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # --- reading -------------------------------------------------------------------------------

    def surfaces(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "versions").is_dir() and _NAME.match(p.name))

    def versions(self, surface: str) -> list[str]:
        d = self._surface_dir(surface) / "versions"
        found = [p.name for p in d.iterdir() if p.is_dir() and _VERSION.match(p.name)] if d.is_dir() else []
        return sorted(found, key=lambda v: int(v[1:]))

    def newest(self, surface: str) -> str:
        versions = self.versions(surface)
        if not versions:
            raise RegistryError(f"surface {surface!r} has no published versions in {self.root}")
        return versions[-1]

    def version_dir(self, surface: str, version: str) -> Path:
        d = self._surface_dir(surface) / "versions" / version
        if not _VERSION.match(version) or not d.is_dir():
            raise RegistryError(f"surface {surface!r} has no version {version!r}; it has {self.versions(surface)}")
        return d

    def verified_dir(self, surface: str, version: str) -> Path:
        """`version_dir`, after checking that its manifest is the one published (`published.json`'s
        `manifest_sha256`), so a manifest rewritten together with its files' hashes is refused. The files
        are checked against the manifest by whoever loads them (`load_export`)."""
        d = self.version_dir(surface, version)
        published = _read_json(d / PUBLISHED).get("manifest_sha256")
        if not published:
            raise RegistryError(f"{surface} {version}: no manifest_sha256 in {PUBLISHED}; publish the export again")
        if not (d / MANIFEST).is_file() or sha256_file(d / MANIFEST) != published:
            raise RegistryError(f"{surface} {version}: {MANIFEST} is not the published one (sha256 mismatch)")
        return d

    def pointer(self, surface: str) -> Pointer:
        path = self._surface_dir(surface) / POINTER
        if not path.is_file():
            return Pointer()
        try:
            raw = json.loads(path.read_text())
            return Pointer(raw.get("live"), tuple(raw.get("history", ())), raw.get("shadow"), raw.get("updated_at"))
        except (json.JSONDecodeError, AttributeError, TypeError) as e:
            raise RegistryError(f"{path}: unreadable pointer: {e}") from None

    def listing(self) -> list[dict[str, Any]]:
        """One row per (surface, version) with its role and where it came from."""
        rows = []
        for surface in self.surfaces():
            ptr = self.pointer(surface)
            for v in self.versions(surface):
                info = _read_json(self.version_dir(surface, v) / PUBLISHED)
                roles = [r for r, on in (("live", v == ptr.live), ("shadow", v == ptr.shadow),
                                         ("previous", v in ptr.history[-1:])) if on]
                rows.append({"surface": surface, "version": v, "role": ",".join(roles), **info})
        return rows

    # --- writing -------------------------------------------------------------------------------

    def publish(self, surface: str, export_dir: str | Path) -> str:
        """Copy a verified export of `surface` in as the next version; returns its name. Nothing goes live."""
        versions_dir = self._surface_dir(surface) / "versions"
        export_dir = Path(export_dir)
        try:
            manifest = read_export_manifest(export_dir)
        except NotAnExport:
            raise RegistryError(f"{export_dir}: not a surface export (run `unictr export` first)") from None
        if manifest.get("surface") != surface:
            raise RegistryError(f"{export_dir}: is an export of surface {manifest.get('surface')!r}, not {surface!r}")
        verify_files(export_dir, manifest)
        versions_dir.mkdir(parents=True, exist_ok=True)
        with self._locked(surface):
            existing = self.versions(surface)
            version = f"v{int(existing[-1][1:]) + 1 if existing else 1:04d}"
            with staged_dir(versions_dir / version) as tmp:
                for name in [*manifest["files"], MANIFEST]:
                    shutil.copy2(export_dir / name, tmp / name)
                verify_files(tmp, manifest)
                save_json({
                    "published_at": utc_now(),
                    "source": str(export_dir.resolve()),
                    "manifest_sha256": sha256_file(tmp / MANIFEST),
                    "source_run": manifest.get("source_run", {}).get("path"),
                    "tasks": manifest.get("tasks"),
                }, tmp / PUBLISHED)
        return version

    def promote(
        self,
        surface: str,
        version: str | None = None,
        eval_data: str | Path | None = None,
        force: bool = False,
        policy: GatePolicy | None = None,
    ) -> GateReport:
        """Make `version` (default: the newest) live if it passes the gate (or `force`); the report is kept.

        The gate runs outside the lock; the pointer is then swapped only if the live version is still
        the one the candidate was compared with.
        """
        version = version or self.newest(surface)
        start = self.pointer(surface)
        if version == start.live:
            raise RegistryError(f"{surface}: {version} is already live")
        from unictr.gate import GatePolicy, run_gate  # here, not at the top: a server never loads eval data

        report = run_gate(self, surface, version, start.live, eval_data, policy or GatePolicy())
        report.forced = force and not report.passed
        with self._locked(surface):
            now = self.pointer(surface)
            if now.live != start.live:
                raise RegistryError(f"{surface}: live changed from {start.live} to {now.live} meanwhile; promote again")
            if report.passed or force:
                history = (*now.history, now.live) if now.live else now.history
                self._write_pointer(surface, Pointer(version, history, None if now.shadow == version else now.shadow))
                report.promoted = True
            report.path = str(self._report_path(surface, f"promote-{version}"))
            save_json(report.to_json(), Path(report.path))
        return report

    def rollback(self, surface: str) -> Pointer:
        """Make the previous live version live again (no gate: it served before)."""
        with self._locked(surface):
            now = self.pointer(surface)
            if not now.history:
                raise RegistryError(f"{surface}: no previous version to roll back to (live: {now.live})")
            new = Pointer(now.history[-1], now.history[:-1], None if now.shadow == now.history[-1] else now.shadow)
            self._write_pointer(surface, new)
            record = {"surface": surface, "action": "rollback", "from": now.live, "to": new.live,
                      "created_at": utc_now()}
            save_json(record, self._report_path(surface, f"rollback-{now.live}"))
        return self.pointer(surface)

    def set_shadow(self, surface: str, version: str | None) -> Pointer:
        """Score `version` beside the live one on every request (None stops shadowing)."""
        if version is not None:
            self.version_dir(surface, version)
        with self._locked(surface):
            now = self.pointer(surface)
            if version is not None and version == now.live:
                raise RegistryError(f"{surface}: {version} is live; a shadow must be another version")
            self._write_pointer(surface, Pointer(now.live, now.history, version))
        return self.pointer(surface)

    # --- internals -----------------------------------------------------------------------------

    def _surface_dir(self, surface: str) -> Path:
        if not _NAME.match(surface):
            raise RegistryError(f"invalid surface name {surface!r} (letters, digits, '_', '-', '.')")
        return self.root / surface

    @contextlib.contextmanager
    def _locked(self, surface: str) -> Iterator[None]:
        path = self._surface_dir(surface) / ".lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _write_pointer(self, surface: str, ptr: Pointer) -> None:
        save_json({**asdict(ptr), "history": list(ptr.history), "updated_at": utc_now()},
                  self._surface_dir(surface) / POINTER)

    def _report_path(self, surface: str, name: str) -> Path:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return self._surface_dir(surface) / "reports" / f"{stamp}-{name}.json"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
