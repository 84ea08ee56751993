"""On-disk model registry: versions per surface, a gated atomic promote, instant rollback, shadow.

Layout:

    REGISTRY/<surface>/versions/v0001/     a published export (model.safetensors, manifest.json, ...)
    REGISTRY/<surface>/pointer.json        {"live": "v0002", "history": ["v0001"], "shadow": null, ...}
    REGISTRY/<surface>/reports/*.json      one report per promote / rollback

`pointer.json` is the only thing a server reads to decide what is live; it is replaced atomically
(temp file + rename), so a reader sees the old or the new pointer, never a torn one. Writers of one
surface serialise on a lock file. `history` is the stack of earlier live versions that `rollback` pops.

Integrity: `verified_dir` is the one check before a version's files are used (by promote, shadow and
rollback), and `load` the one way to load a version (the server, the gate): the manifest is the published
one (`published.json`'s `manifest_sha256`), every file matches the manifest, and, when a key is configured
(`UNICTR_REGISTRY_KEY` or `UNICTR_REGISTRY_KEY_FILE`), the manifest carries a matching HMAC-SHA256 written
by `publish`. `load` hashes each file once, as the export loads.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unictr.checkpoint import MANIFEST, CheckpointError, save_json
from unictr.export.artifact import (
    LoadedExport,
    NotAnExport,
    load_export,
    read_export_manifest,
    staged_dir,
    verify_files,
)

if TYPE_CHECKING:
    from unictr.gate import GatePolicy, GateReport

POINTER = "pointer.json"
PUBLISHED = "published.json"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_VERSION = re.compile(r"^v(\d{4,})$")
KEY_ENV = "UNICTR_REGISTRY_KEY"
KEY_FILE_ENV = "UNICTR_REGISTRY_KEY_FILE"
MIN_KEY_BYTES = 16
# What `listing(public=True)` shows of `published.json`: no paths of the machine that published it.
_PUBLIC_FIELDS = ("published_at", "manifest_sha256", "tasks")


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


def registry_key(environ: Mapping[str, str] = os.environ) -> bytes | None:
    """The signing key: `UNICTR_REGISTRY_KEY`'s UTF-8 bytes, or the bytes of the file `UNICTR_REGISTRY_KEY_FILE`
    names (trailing newlines dropped); None when neither is set. Error messages never show the key."""
    text, path = environ.get(KEY_ENV), environ.get(KEY_FILE_ENV)
    if text is not None and path is not None:
        raise RegistryError(f"both {KEY_ENV} and {KEY_FILE_ENV} are set; set one of them")
    if path is not None:
        try:
            key, source = Path(path).read_bytes().rstrip(b"\r\n"), f"{KEY_FILE_ENV} ({path})"
        except OSError as e:
            raise RegistryError(f"{KEY_FILE_ENV}: cannot read the key file {path}: {e.strerror}") from None
    elif text is not None:
        key, source = text.encode(), KEY_ENV
    else:
        return None
    if len(key) < MIN_KEY_BYTES:
        raise RegistryError(f"{source}: the key has {len(key)} bytes; at least {MIN_KEY_BYTES} expected "
                            "(e.g. the output of `openssl rand -hex 32`)")
    return key


class Registry:
    """A registry directory; every method reads the disk afresh, so several processes can share it.

    `key` signs what `publish` writes and is required of every version loaded; by default it is read
    from the environment (`registry_key`) when the registry is opened.
    """

    def __init__(self, root: str | Path, key: bytes | None = None) -> None:
        self.root = Path(root)
        self.key = key if key is not None else registry_key()

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
        """`version_dir`, after the integrity checks (`integrity`); the one check before its files are used."""
        return self._verify(surface, version)[0]

    def load(self, surface: str, version: str) -> LoadedExport:
        """A version's export after `verified_dir`'s checks. What loads is what was checked: the manifest
        parsed from the bytes whose sha256 (and signature) matched, and each file's bytes hashed once, as
        the export loads (`load_export`). Any refusal is a RegistryError naming the version."""
        d, _, manifest = self._verify(surface, version, files=False)
        try:
            return load_export(d, manifest)
        except CheckpointError as e:
            raise RegistryError(f"{surface} {version}: {e}") from None

    def integrity(self, surface: str, version: str) -> str:
        """A version's integrity in a few words: `ok, signed`, `ok, unsigned`, `ok, signature unverified (no
        key)`, or `refused: <why>` (what `verified_dir` would raise)."""
        try:
            return self._verify(surface, version)[1]
        except RegistryError as e:
            return f"refused: {e}"

    def _verify(self, surface: str, version: str, files: bool = True) -> tuple[Path, str, dict[str, Any]]:
        """(directory, status, manifest) of a version whose manifest is the published one (`published.json`'s
        `manifest_sha256`), whose files match the manifest (unless `files` is False: `load` checks them as
        it loads them) and, with a key, whose signature matches."""
        d, where = self.version_dir(surface, version), f"{surface} {version}"
        published = _read_json(d / PUBLISHED)
        expected = published.get("manifest_sha256")
        if not isinstance(expected, str) or not expected:
            raise RegistryError(f"{where}: {PUBLISHED} is missing or names no manifest_sha256; publish it again")
        try:
            raw = (d / MANIFEST).read_bytes()
        except OSError:
            raise RegistryError(f"{where}: {MANIFEST} is missing") from None
        if not hmac.compare_digest(hashlib.sha256(raw).hexdigest().encode(), expected.encode()):
            raise RegistryError(f"{where}: {MANIFEST} is not the published one (its sha256 differs from "
                                f"{PUBLISHED}'s manifest_sha256); refusing to load")
        status = self._check_signature(where, raw, published.get("signature"))
        try:
            manifest = read_export_manifest(d, raw)  # the bytes just checked, not a second read
            if manifest.get("surface") != surface:
                raise RegistryError(f"{where}: its {MANIFEST} is an export of surface {manifest.get('surface')!r}")
            if files:
                verify_files(d, manifest)
        except CheckpointError as e:
            raise RegistryError(f"{where}: {e}") from None
        return d, status, manifest

    def _check_signature(self, where: str, manifest: bytes, signature: Any) -> str:
        """The signature part of `integrity`: with a key, a matching HMAC of the manifest or RegistryError."""
        if self.key is None:
            return "ok, signature unverified (no key)" if signature else "ok, unsigned"
        if not isinstance(signature, dict) or not isinstance(signature.get("hmac_sha256"), str):
            raise RegistryError(f"{where}: not signed, but a registry key is configured ({KEY_ENV} or "
                                f"{KEY_FILE_ENV}); refusing to load (publish it again with the key)")
        if not hmac.compare_digest(signature["hmac_sha256"].encode(), _hmac(self.key, manifest).encode()):
            if signature.get("key_id") != _key_id(self.key):
                raise RegistryError(f"{where}: signed with another key (key id {signature.get('key_id')!r}, the "
                                    f"configured key's is {_key_id(self.key)!r}); refusing to load")
            raise RegistryError(f"{where}: {MANIFEST} does not match its signature (changed after publishing); "
                                "refusing to load")
        return "ok, signed"

    def pointer(self, surface: str) -> Pointer:
        path = self._surface_dir(surface) / POINTER
        if not path.is_file():
            return Pointer()
        try:
            raw = json.loads(path.read_text())
            return Pointer(raw.get("live"), tuple(raw.get("history", ())), raw.get("shadow"), raw.get("updated_at"))
        except (json.JSONDecodeError, AttributeError, TypeError) as e:
            raise RegistryError(f"{path}: unreadable pointer: {e}") from None

    def listing(self, public: bool = False) -> list[dict[str, Any]]:
        """One row per (surface, version) with its role, whether it is signed, and where it came from.

        `public=True` (for the HTTP service): only `_PUBLIC_FIELDS` of `published.json`, so no path
        of the machine that published it (`source`, `source_run`) leaves the registry.
        """
        rows = []
        for surface in self.surfaces():
            ptr = self.pointer(surface)
            for v in self.versions(surface):
                info = _read_json(self.version_dir(surface, v) / PUBLISHED)
                roles = [r for r, on in (("live", v == ptr.live), ("shadow", v == ptr.shadow),
                                         ("previous", v in ptr.history[-1:])) if on]
                shown = {k: info.get(k) for k in _PUBLIC_FIELDS} if public else info
                rows.append({"surface": surface, "version": v, "role": ",".join(roles), **shown,
                             "signed": bool(info.get("signature"))})
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
                verify_files(tmp, read_export_manifest(tmp))
                raw = (tmp / MANIFEST).read_bytes()
                signature = {"hmac_sha256": _hmac(self.key, raw), "key_id": _key_id(self.key)} if self.key else None
                save_json({
                    "published_at": utc_now(),
                    "source": str(export_dir.resolve()),
                    "manifest_sha256": hashlib.sha256(raw).hexdigest(),
                    "source_run": manifest.get("source_run", {}).get("path"),
                    "tasks": manifest.get("tasks"),
                    **self._lineage(surface, existing, manifest),
                    **({"signature": signature} if signature else {}),
                }, tmp / PUBLISHED)
        return version

    def _lineage(self, surface: str, versions: list[str], manifest: dict[str, Any]) -> dict[str, Any]:
        """For an export of a calibration-only run: `calibration_only`, its `parent_run` and the published
        `parent_version` exported from that run (None when none is); {} for any other export."""
        if not manifest.get("calibration_only"):
            return {}
        parent = manifest.get("parent") or {}
        found = [v for v in versions if _read_json(self.version_dir(surface, v) / MANIFEST).get("source_run", {})
                 .get("manifest_sha256") == parent.get("manifest_sha256")]
        return {"calibration_only": True, "parent_run": parent.get("path"), "parent_version": (found or [None])[-1]}

    def promote(
        self,
        surface: str,
        version: str | None = None,
        eval_data: str | Path | None = None,
        force: bool = False,
        policy: GatePolicy | None = None,
    ) -> GateReport:
        """Make `version` (default: the newest) live if it passes the gate (or `force`); the report is kept.

        Integrity (`verified_dir`) is checked first and `force` never skips it. The gate runs outside
        the lock; the pointer is then swapped only if the live version is still the one the candidate
        was compared with.
        """
        version = version or self.newest(surface)
        start = self.pointer(surface)
        if version == start.live:
            raise RegistryError(f"{surface}: {version} is already live")
        self._require_intact(surface, version, "not promoted (--force skips the quality gate, never integrity)")
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
        """Make the previous live version live again (no gate: it served before; integrity is checked)."""
        with self._locked(surface):
            now = self.pointer(surface)
            if not now.history:
                raise RegistryError(f"{surface}: no previous version to roll back to (live: {now.live})")
            self._require_intact(surface, now.history[-1], "not rolled back (promote another version)")
            new = Pointer(now.history[-1], now.history[:-1], None if now.shadow == now.history[-1] else now.shadow)
            self._write_pointer(surface, new)
            record = {"surface": surface, "action": "rollback", "from": now.live, "to": new.live,
                      "created_at": utc_now()}
            save_json(record, self._report_path(surface, f"rollback-{now.live}"))
        return self.pointer(surface)

    def set_shadow(self, surface: str, version: str | None) -> Pointer:
        """Score `version` beside the live one on every request (None stops shadowing); integrity is checked."""
        if version is not None:
            self._require_intact(surface, version, "not set as shadow")
        with self._locked(surface):
            now = self.pointer(surface)
            if version is not None and version == now.live:
                raise RegistryError(f"{surface}: {version} is live; a shadow must be another version")
            self._write_pointer(surface, Pointer(now.live, now.history, version))
        return self.pointer(surface)

    # --- internals -----------------------------------------------------------------------------

    def _require_intact(self, surface: str, version: str, outcome: str) -> None:
        """`verified_dir`, its refusal ending with what did not happen (`outcome`)."""
        try:
            self.verified_dir(surface, version)
        except RegistryError as e:
            raise RegistryError(f"{e}; {outcome}") from None

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
    """The JSON object at `path`; {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _hmac(key: bytes, manifest: bytes) -> str:
    """The signature of a version: HMAC-SHA256 of its manifest's bytes, hex."""
    return hmac.new(key, manifest, hashlib.sha256).hexdigest()


def _key_id(key: bytes) -> str:
    """Which key signed a version (to tell "another key" from "changed"); reveals no more than a signature."""
    return hmac.new(key, b"unictr registry key id", hashlib.sha256).hexdigest()[:16]
