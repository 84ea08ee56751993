"""Scoring requests with a surface export: validate (`request`), encode (`encoding`), one forward per user
chunk (`backends`).

A request holds one or many users and many candidates (see `request` and docs/serving.md); the model
runs the user side once per unique user and broadcasts it to that user's candidates by `user_index`.
A request with more than `max_unique_users` users is scored in chunks of whole users; the result
is the same as one pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unictr.checkpoint import MODEL_FILE
from unictr.config import ServeSpec
from unictr.data.batch import Batch
from unictr.export.artifact import ONNX_FILE, ONNX_ONE_USER_FILE, LoadedExport, load_export
from unictr.model import UnifiedCTR
from unictr.serving.backends import Graph, choose_backend, runner
from unictr.serving.encoding import EncodedRequest, RequestEncoder
from unictr.serving.request import RequestParser

# The `ServeSpec` fields a scorer reads; the others are the app's.
SCORER_OPTIONS = ("max_unique_users", "max_candidates", "backend", "bf16")


@dataclass(frozen=True)
class ScoreResult:
    """Per-candidate probabilities `[N, len(tasks)]` in request order, and what it took.

    `columnar`: the request sent `candidate_columns`, so the JSON answer gives one list per task.
    """

    surface: str
    version: str
    tasks: tuple[str, ...]
    probabilities: np.ndarray
    unique_users: int
    chunks: int
    truncated_sequences: int
    dropped_events: int
    columnar: bool = False
    folded_codes: dict[str, int] = field(default_factory=dict)  # {feature: codes outside its modulo table}

    def to_json(self) -> dict[str, Any]:
        if self.columnar:
            predictions: Any = dict(zip(self.tasks, self.probabilities.T.tolist(), strict=True))
        else:
            predictions = [dict(zip(self.tasks, row, strict=True)) for row in self.probabilities.tolist()]
        return {
            "surface": self.surface,
            "model_version": self.version,
            "tasks": list(self.tasks),
            "predictions": predictions,
            "unique_users": self.unique_users,
            "chunks": self.chunks,
        }


class Scorer:
    """Scores requests for one surface export. Thread-safe: the model is only read.

    `spec` holds the options (`max_unique_users`, `max_candidates`, `backend`, `bf16`; see `ServeSpec`),
    `options` override its fields by name (validated alike). `backend`: `eager` (PyTorch), `compile`
    (`torch.compile`, compiled here on probe batches), `onnx` (ONNX Runtime on the export's
    `model.onnx`, CPU, given as `onnx_graph`, its path or bytes; batches of one user run the export's
    `model_one_user.onnx` when given as `onnx_one_user_graph`) or `auto` (see `backends.choose_backend`).
    `bf16` runs eager/compile under bf16 autocast (CPUs with AMX or AVX512-BF16, or a GPU); `device` is
    where eager/compile run. `threads` sets torch's intra-op threads process-wide (None: as they are; the
    app sets `spec.threads` once).
    """

    def __init__(
        self,
        model: UnifiedCTR,
        manifest: Mapping[str, Any],
        version: str | None = None,
        spec: ServeSpec | None = None,
        *,
        threads: int | None = None,
        device: str = "cpu",
        onnx_graph: Graph | None = None,
        onnx_one_user_graph: Graph | None = None,
        **options: Any,
    ) -> None:
        spec = _with_options(spec, options)
        if len(model.schema.surfaces) != 1:
            raise ValueError(f"a scorer needs a surface export, got a model of {len(model.schema.surfaces)} surfaces")
        if threads is not None:
            torch.set_num_threads(threads)  # process-wide: torch has one intra-op pool
        self.model = model.eval()
        self.backend = choose_backend(spec.backend, onnx_graph, spec.bf16, torch.device(device))
        self._run = runner(self.model, self.backend, spec.bf16, onnx_graph, onnx_one_user_graph, torch.device(device))
        self.manifest = dict(manifest)
        self.schema = model.schema
        self.surface = self.schema.surfaces[0]
        self.version = version or f"{self.surface}@{manifest['files'][MODEL_FILE][:12]}"
        self.max_unique_users = spec.max_unique_users
        self.max_candidates = spec.max_candidates
        task_cols = [i for i, on in enumerate(self.schema.task_mask[0]) if on]
        self.tasks = tuple(self.schema.tasks[i] for i in task_cols)
        # the model's outputs of the tasks that apply on this surface (None: all of them, nothing to select)
        self._task_cols = None if len(task_cols) == len(self.schema.tasks) else task_cols
        self._parser = RequestParser(self.schema)
        self._encoder = RequestEncoder(self.schema, spec.max_candidates)

    @classmethod
    def load(
        cls, export_dir: str | Path, version: str | None = None, spec: ServeSpec | None = None, **kwargs: Any
    ) -> Scorer:
        """A scorer for an export directory (checksums verified; `backend="onnx"` needs an ONNX export);
        `kwargs` as `Scorer`'s. A bad option is refused before the export is read."""
        spec = _with_options(spec, {k: kwargs.pop(k) for k in SCORER_OPTIONS if k in kwargs})
        return cls.of_export(load_export(export_dir), version, spec, **kwargs)

    @classmethod
    def of_export(
        cls, export: LoadedExport, version: str | None = None, spec: ServeSpec | None = None, **kwargs: Any,
    ) -> Scorer:
        """A scorer for an export `load_export` (or `Registry.load`) has loaded and verified: it runs the
        verified bytes of the ONNX graphs, never the files again; as `load` otherwise."""
        spec = _with_options(spec, {k: kwargs.pop(k) for k in SCORER_OPTIONS if k in kwargs})
        if ONNX_FILE in export.files:
            kwargs.setdefault("onnx_graph", export.files[ONNX_FILE])
        elif spec.backend == "onnx":
            raise ValueError(f"{export.path}: no {ONNX_FILE}; export with --format onnx to serve with onnx")
        if ONNX_ONE_USER_FILE in export.files:  # exports before it have the general graph only
            kwargs.setdefault("onnx_one_user_graph", export.files[ONNX_ONE_USER_FILE])
        return cls(export.model, export.manifest, version, spec, **kwargs)

    def parse(self, request: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
        """The validated request (JSON text or an already-decoded mapping); raises RequestError."""
        return self._parser.parse(request)

    def encode(self, req: Mapping[str, Any]) -> EncodedRequest:
        """A validated request (see `parse`) in the Batch layout (broadcast: one row per unique user)."""
        return self._encoder.encode(req)

    def predict(self, batch: Batch) -> np.ndarray:
        """Probabilities `[N, all tasks]` of an encoded batch with this scorer's backend (one pass, no chunking)."""
        return self._run.batch(batch)

    def score(self, request: bytes | str | Mapping[str, Any]) -> ScoreResult:
        """Validate, encode and score a request."""
        enc = self.encode(self.parse(request))
        users = enc.num_users
        starts = range(0, users, self.max_unique_users)  # rows are grouped by user: chunks are slices
        if len(starts) == 1:  # one pass over the encoded arrays
            parts = [self._run.arrays(enc.arrays)]
        else:
            b = enc.batch
            parts = [self.predict(b.take_users(torch.arange(s, min(s + self.max_unique_users, users)))) for s in starts]
        if parts:
            probs = parts[0] if len(parts) == 1 else np.concatenate(parts)
        else:  # no candidates
            probs = np.empty((0, len(self.schema.tasks)), dtype=np.float32)
        if self._task_cols is not None:
            probs = probs[:, self._task_cols]
        if isinstance(enc.order, np.ndarray):  # rows were regrouped by user: back to request order
            grouped, probs = probs, np.empty_like(probs)
            probs[enc.order] = grouped
        return ScoreResult(
            self.surface, self.version, self.tasks, probs, users, len(parts), enc.truncated_sequences,
            enc.dropped_events, enc.columnar, enc.folded_codes,
        )


def _with_options(spec: ServeSpec | None, options: Mapping[str, Any]) -> ServeSpec:
    """`spec` (default: `ServeSpec()`) with the `SCORER_OPTIONS` named in `options` changed, validated again."""
    if unknown := sorted(set(options) - set(SCORER_OPTIONS)):
        raise TypeError(f"Scorer got unexpected option(s) {unknown}; it takes {', '.join(SCORER_OPTIONS)}")
    if spec is None and not options:
        return ServeSpec()
    return ServeSpec.model_validate({**(spec or ServeSpec()).model_dump(), **options})
