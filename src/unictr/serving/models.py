"""The models a scoring process serves, per surface and role (live, shadow), kept in step with the
registry's pointers by a background poll that no broken version can stall.

Each role of each surface loads on its own. Any exception while loading a version (a manifest that
is not the published one, a checksum mismatch, a truncated or garbage safetensors file, weights that
do not fit the config, whatever else) keeps that role's last good scorer serving and is recorded:
the version the pointer names (desired), the version served, the last failure and its time. A
version that failed is not loaded again until the pointer is written again or its files change,
so a broken version costs one load attempt, not one per poll. A request takes its models once, at
its start (one dict lookup in one snapshot), so in-flight requests finish on the model they started with.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unictr.config import ServeSpec
from unictr.serving.registry import Pointer, Registry, utc_now
from unictr.serving.scorer import Scorer
from unictr.serving.telemetry import ServingMetrics

log = logging.getLogger("unictr.serving")


@dataclass(frozen=True)
class SurfaceModels:
    """The scorers one request of a surface uses: the live one and, in shadow mode, the candidate."""

    live: Scorer
    shadow: Scorer | None


@dataclass(frozen=True)
class LoadFailure:
    """A version that could not be loaded: the error (one line, no absolute path) and when (UTC)."""

    version: str
    error: str
    at: str


@dataclass(frozen=True)
class RoleState:
    """One role of a surface: the version its pointer names, the version loaded, and the last failure."""

    desired: str | None = None
    served: str | None = None
    last_failure: LoadFailure | None = None

    @property
    def ready(self) -> bool:
        return self.desired == self.served

    def problem(self) -> str | None:
        """Why the role does not serve what its pointer names; None when it does."""
        if self.ready:
            return None
        text = f"serves {self.served or 'nothing'}, the registry names {self.desired}"
        failure = self.last_failure
        if failure is not None and failure.version == self.desired:
            return f"{text}; {failure.version} failed to load at {failure.at}: {failure.error}"
        return f"{text}; not loaded yet"

    def to_json(self) -> dict[str, Any]:
        failure = self.last_failure
        return {"desired": self.desired, "served": self.served, "ready": self.ready,
                "last_error": asdict(failure) if failure else None}


@dataclass(frozen=True)
class SurfaceState:
    """Both roles of a surface, and why its pointer could not be read at the last poll (if it could not)."""

    live: RoleState = RoleState()
    shadow: RoleState = RoleState()
    pointer_error: str | None = None

    @property
    def ready(self) -> bool:
        """The live role serves what the pointer names (a shadow's problems leave a surface ready)."""
        return self.pointer_error is None and self.live.ready

    def problems(self) -> dict[str, str]:
        """role (or "pointer") -> why this surface does not serve what the registry names."""
        out = {"pointer": self.pointer_error} if self.pointer_error else {}
        return out | {role: p for role, p in (("live", self.live.problem()), ("shadow", self.shadow.problem())) if p}


@dataclass(frozen=True)
class _Snapshot:
    """What the last poll loaded; replaced as a whole, so a reader never sees half of one poll."""

    models: dict[str, SurfaceModels] = field(default_factory=dict)
    states: dict[str, SurfaceState] = field(default_factory=dict)


class ModelStore:
    """Loaded scorers per surface, kept in step with the registry's pointers (see the module's doc)."""

    def __init__(self, registry: Registry, metrics: ServingMetrics, spec: ServeSpec) -> None:
        self.registry = registry
        self.metrics = metrics
        self.spec = spec  # the scorers' options and the poll interval
        self.poll_seconds = spec.poll_seconds
        self._now = _Snapshot()
        self._cache: dict[tuple[str, str], Scorer] = {}  # (surface, version): live, shadow and previous
        # (surface, version) -> (what it was loaded from, why it failed); tried again once that changes
        self._failed: dict[tuple[str, str], tuple[tuple[Any, ...], LoadFailure]] = {}
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, surface: str) -> SurfaceModels | None:
        return self._now.models.get(surface)

    def known(self, surface: str) -> bool:
        return surface in self._now.states

    def unavailable(self, surface: str) -> str:
        """Why a known surface has no live model: the detail of its 503."""
        state = self._now.states.get(surface, SurfaceState())
        problems = state.problems()
        if "pointer" in problems:
            return f"surface {surface!r} has no live model: its pointer cannot be read ({problems['pointer']})"
        if "live" in problems:
            return f"surface {surface!r} has no live model loaded: it {problems['live']}"
        return f"surface {surface!r} has no live model; promote a version first"

    def summary(self) -> dict[str, Any]:
        """Per surface: the versions served, readiness and load state of each role, tasks and view types."""
        now = self._now
        out: dict[str, Any] = {}
        for surface, state in sorted(now.states.items()):
            m = now.models.get(surface)
            out[surface] = {"live": m and m.live.version, "shadow": m and m.shadow and m.shadow.version,
                            "ready": state.ready, "pointer_error": state.pointer_error,
                            "roles": {"live": state.live.to_json(), "shadow": state.shadow.to_json()}}
            if m is not None:
                source = m.live.manifest.get("source_run", {}).get("path")
                out[surface] |= {"tasks": list(m.live.tasks), "view_types": [v for _, v in m.live.schema.view_keys],
                                 "source_run": Path(source).name if source else None}  # a name, not a path
        return out

    def readiness(self) -> dict[str, Any]:
        """`ready`: every surface's live role serves the version its pointer names (as of the last poll);
        `reasons` says what does not. `shadow_problems` lists shadows that do not, which leave `ready`
        alone: a broken shadow changes no answer, so it must not take a server out of rotation."""
        problems = [(s, role, p) for s, state in sorted(self._now.states.items())
                    for role, p in state.problems().items()]
        reasons = [f"{s} {role}: {p}" for s, role, p in problems if role != "shadow"]
        return {"ready": not reasons, "reasons": reasons,
                "shadow_problems": [f"{s} shadow: {p}" for s, role, p in problems if role == "shadow"]}

    def refresh(self) -> None:
        """Load whatever the pointers now name; a version that fails to load leaves the old one serving."""
        with self._refresh_lock:
            try:
                surfaces = self.registry.surfaces()
            except Exception as e:  # an unreadable registry root: keep serving what is loaded
                log.error("cannot list the registry's surfaces (%s); still serving the loaded models", e)
                return
            old = self._now
            models: dict[str, SurfaceModels] = {}
            states: dict[str, SurfaceState] = {}
            for surface in surfaces:
                state, m = self._refresh_surface(surface, old.states.get(surface), old.models.get(surface))
                states[surface] = state
                if m is not None:
                    models[surface] = m
            for gone in old.states.keys() - states.keys():
                self.metrics.set_models(gone, {})
            self._now = _Snapshot(models, states)  # one reference swap

    def _refresh_surface(
        self, surface: str, state: SurfaceState | None, models: SurfaceModels | None
    ) -> tuple[SurfaceState, SurfaceModels | None]:
        """The state and scorers of `surface` after this poll; each role loads (or fails) on its own."""
        old = state or SurfaceState()
        try:
            ptr = self.registry.pointer(surface)
        except Exception as e:  # a hand-edited pointer: keep serving, say why
            error = self._describe(e)
            if error != old.pointer_error:
                log.error("%s: cannot read the pointer (%s); still serving the loaded models", surface, error)
                self.metrics.load_failures.labels(surface, "live").inc()
            new = SurfaceState(old.live, old.shadow, error)
            self._publish_metrics(surface, state, new)
            return new, models
        live, live_state = self._role(surface, "live", ptr, models and models.live, old.live)
        shadow, shadow_state = self._role(surface, "shadow", ptr, models and models.shadow, old.shadow)
        new = SurfaceState(live_state, shadow_state)
        if live is not None and (models is None or models.live is not live):
            self.metrics.reloads.labels(surface).inc()
        if new != old:
            log.info("%s: live %s (registry: %s), shadow %s (registry: %s)", surface, live_state.served,
                     ptr.live, shadow_state.served, ptr.shadow)
        self._forget(surface, ptr, new)
        self._publish_metrics(surface, state, new)
        if live is None:
            return new, None
        if models is not None and models.live is live and models.shadow is shadow:
            return new, models
        return new, SurfaceModels(live, shadow)

    def _role(
        self, surface: str, role: str, ptr: Pointer, current: Scorer | None, state: RoleState
    ) -> tuple[Scorer | None, RoleState]:
        """The scorer `role` serves after this poll and its state: the pointer's version if it loads,
        else the one served before."""
        desired = ptr.live if role == "live" else ptr.shadow
        if desired is None:
            return None, RoleState(None, None, state.last_failure)
        loaded = current
        if current is None or current.version != desired:
            loaded = self._load(surface, role, desired, ptr)
        if isinstance(loaded, LoadFailure):
            return current, RoleState(desired, current and current.version, loaded)
        return loaded, RoleState(desired, desired, state.last_failure)

    def _load(self, surface: str, role: str, version: str, ptr: Pointer) -> Scorer | LoadFailure:
        """The scorer of `version` (cached), or why it cannot be loaded. A version that failed is tried
        again only once the pointer is written again or the version's files change."""
        key = (surface, version)
        if key in self._cache:
            return self._cache[key]
        stamp = (ptr.updated_at, self._files(surface, version))
        known = self._failed.get(key)
        if known is not None and known[0] == stamp:
            return known[1]
        try:
            scorer = Scorer.of_export(self.registry.load(surface, version), version, self.spec)
        except Exception as e:  # whatever the cause, the last good version keeps serving
            failure = LoadFailure(version, self._describe(e), utc_now())
            self._failed[key] = (stamp, failure)
            self.metrics.load_failures.labels(surface, role).inc()
            log.error("%s: cannot load %s version %s (%s); still serving the old one", surface, role, version,
                      failure.error)
            return failure
        self._failed.pop(key, None)
        self._cache[key] = scorer
        return scorer

    def _files(self, surface: str, version: str) -> tuple[tuple[str, int, int, int], ...]:
        """(name, size, mtime, inode) of each file of a version: when they change, a failed version may load now."""
        try:
            d = self.registry.version_dir(surface, version)
            return tuple(sorted((p.name, s.st_size, s.st_mtime_ns, s.st_ino) for p in d.iterdir() if (s := p.stat())))
        except (OSError, ValueError):  # no such version (yet), or it went away while listed
            return ()

    def _forget(self, surface: str, ptr: Pointer, state: SurfaceState) -> None:
        """Drop cached scorers and remembered failures of versions this surface no longer needs."""
        keep = {ptr.live, ptr.shadow, *ptr.history[-1:], state.live.served, state.shadow.served}
        for key in [k for k in self._cache if k[0] == surface and k[1] not in keep]:
            del self._cache[key]
        for key in [k for k in self._failed if k[0] == surface and k[1] not in (ptr.live, ptr.shadow)]:
            del self._failed[key]

    def _publish_metrics(self, surface: str, old: SurfaceState | None, new: SurfaceState) -> None:
        """Set the surface's served versions and readiness in the metrics when they changed."""
        if old is None or old.problems().keys() != new.problems().keys() or _served(old) != _served(new):
            problems = new.problems()
            self.metrics.set_models(surface, {
                role: (getattr(new, role).served, role not in problems and "pointer" not in problems)
                for role in ("live", "shadow")
            })

    def _describe(self, e: BaseException) -> str:
        """`e` as one line, its type first, without the registry's absolute path (answers must not leak it)."""
        text = " ".join(f"{type(e).__name__}: {e}".split())
        for root in sorted({str(self.registry.root.resolve()), str(self.registry.root)}, key=len, reverse=True):
            text = text.replace(root + os.sep, "").replace(root, "<registry>")
        return text

    def start(self) -> None:
        self._thread = threading.Thread(target=self._poll, name="unictr-registry-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # keep polling whatever happens; the error is logged
                log.exception("registry refresh failed")


def _served(state: SurfaceState) -> tuple[str | None, str | None]:
    return state.live.served, state.shadow.served
