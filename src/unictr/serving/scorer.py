"""Scoring requests with a surface export: validate, encode (numpy), one forward per user chunk.

A request holds one or many users (features and action sequence) and many candidates, each naming
its user. Users are deduplicated by id and only those with candidates are encoded; the model runs
the user side once per unique user and broadcasts it to that user's candidates by `user_index`.
A request with more than `max_unique_users` users is scored in chunks of whole users; the result
is the same as one pass.

Request JSON (see docs/serving.md):

    {"request_time_ms": 1700000000000,                      # optional; default: now
     "users": [{"id": "u1", "features": {"user_id": 7, ...},
                "sequence": {"items": [...], "actions": [...], "timestamps_ms": [...]}}],  # optional
     "candidates": [{"user": "u1", "features": {"ad_id": 42, ...}, "view_type": "grid"}]}

Sequence events may come in any order (they are sorted by time); events at or after the request
time are dropped (clock skew must not fail a request) and counted; only the newest
`sequence.max_len` events are kept (truncation is counted too).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NotRequired

import numpy as np
import torch
from pydantic import Field, PlainValidator, Strict, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from unictr.checkpoint import MODEL_FILE
from unictr.data.batch import Batch, Schema
from unictr.data.encode import hash_ids
from unictr.data.reader import no_sequences, pad_sequences
from unictr.export import BATCH_INPUTS, ONNX_FILE, load_export, probabilities, probe_batch
from unictr.model import UnifiedCTR

Int64 = Annotated[int, Strict(), Field(ge=-(2**63), le=2**63 - 1)]
FLOAT32_MAX = float(np.finfo(np.float32).max)
Dense = Annotated[float, Strict(), Field(allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
MAX_ERRORS_SHOWN = 5
BACKENDS = ("auto", "eager", "compile", "onnx")  # how the model runs; docs/performance.md measures each


class RequestError(ValueError):
    """A request the scorer refuses; `status` is the HTTP status (422 invalid, 413 too large)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def _user_id(value: object) -> str:
    """User ids are strings or integers; both are compared as their string form."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("must be a string or an integer")
    return str(value)


UserId = Annotated[str, PlainValidator(_user_id)]


def request_adapter(schema: Schema) -> TypeAdapter:
    """A validator for requests to a model with this (single-surface) schema.

    Features are typed per name (categorical: int64, dense: finite number); unknown extra features
    are ignored, so one client payload can serve several surfaces.
    """

    def features(name: str, cat: tuple[str, ...], dense: tuple[str, ...]) -> type:
        return TypedDict(name, {**{n: Int64 for n in cat}, **{n: Dense for n in dense}})

    user_features = features("UserFeatures", schema.user_cat, schema.user_dense)
    side = tuple(schema.sequence.side_features) if schema.sequence else ()
    # the event lists, plus one list per sequence side column (e.g. each event item's topic)
    sequence_in = TypedDict(  # noqa: UP013
        "SequenceIn", {n: list[Int64] for n in ("items", "actions", "timestamps_ms", *side)}
    )
    cand_features = features("CandidateFeatures", schema.cand_cat, schema.cand_dense)
    view_types = Literal[tuple(v for _, v in schema.view_keys)]
    # Functional syntax: the field types are local values, which class bodies (string annotations) can't see.
    user = TypedDict(  # noqa: UP013
        "User", {"id": UserId, "features": user_features, "sequence": NotRequired[sequence_in]}
    )
    candidate = TypedDict(  # noqa: UP013
        "Candidate", {"user": UserId, "features": cand_features, "view_type": view_types}
    )
    request = TypedDict(  # noqa: UP013
        "ScoreRequest", {"request_time_ms": NotRequired[Int64], "users": list[user], "candidates": list[candidate]}
    )
    return TypeAdapter(request)


def _format_errors(e: ValidationError) -> str:
    """`users[0].features.user_id: Field required; ...` for the first few errors."""
    parts = []
    for err in e.errors()[:MAX_ERRORS_SHOWN]:
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".") or "body"
        parts.append(f"{loc}: {err['msg']}")
    more = e.error_count() - MAX_ERRORS_SHOWN
    return "; ".join(parts) + (f"; and {more} more error(s)" if more > 0 else "")


@dataclass(frozen=True)
class ScoreResult:
    """Per-candidate probabilities `[N, len(tasks)]` in request order, and what it took."""

    surface: str
    version: str
    tasks: tuple[str, ...]
    probabilities: np.ndarray
    unique_users: int
    chunks: int
    truncated_sequences: int
    dropped_events: int

    def to_json(self) -> dict[str, Any]:
        return {
            "surface": self.surface,
            "model_version": self.version,
            "tasks": list(self.tasks),
            "predictions": [dict(zip(self.tasks, row, strict=True)) for row in self.probabilities.tolist()],
            "unique_users": self.unique_users,
            "chunks": self.chunks,
        }


@dataclass(frozen=True)
class EncodedRequest:
    """A request as a `Batch` whose rows are grouped by user; `order[i]` is row i's candidate index."""

    batch: Batch
    order: np.ndarray
    truncated_sequences: int
    dropped_events: int


class Scorer:
    """Scores requests for one surface export. Thread-safe: the model is only read.

    `backend`: `eager` (PyTorch), `compile` (`torch.compile`, compiled here on probe batches),
    `onnx` (ONNX Runtime on the export's `model.onnx`, CPU) or `auto`: onnx when there is a
    `model.onnx` and neither bf16 nor another device is asked for (the fastest path measured in
    docs/performance.md), else eager. `bf16` runs eager/compile under bf16 autocast (CPUs with AMX
    or AVX512-BF16, or a GPU); `device` is where eager/compile run.
    """

    def __init__(
        self,
        model: UnifiedCTR,
        manifest: Mapping[str, Any],
        version: str | None = None,
        max_unique_users: int = 256,
        max_candidates: int = 5000,
        threads: int | None = None,
        backend: str = "auto",
        bf16: bool = False,
        onnx_path: str | Path | None = None,
        device: str = "cpu",
    ) -> None:
        if max_unique_users < 1 or max_candidates < 1:
            raise ValueError("max_unique_users and max_candidates must be >= 1")
        if len(model.schema.surfaces) != 1:
            raise ValueError(f"a scorer needs a surface export, got a model of {len(model.schema.surfaces)} surfaces")
        if threads is not None:
            torch.set_num_threads(threads)  # process-wide: torch has one intra-op pool
        self.model = model.eval()
        if backend == "auto":
            backend = "onnx" if onnx_path is not None and not bf16 and torch.device(device).type == "cpu" else "eager"
        self.backend = backend
        self._forward = _runner(self.model, backend, bf16, onnx_path, torch.device(device))
        self.manifest = dict(manifest)
        self.schema = model.schema
        self.surface = self.schema.surfaces[0]
        self.version = version or f"{self.surface}@{manifest['files'][MODEL_FILE][:12]}"
        self.max_unique_users = max_unique_users
        self.max_candidates = max_candidates
        self._task_cols = [i for i, on in enumerate(self.schema.task_mask[0]) if on]
        self.tasks = tuple(self.schema.tasks[i] for i in self._task_cols)
        self._adapter = request_adapter(self.schema)

    @classmethod
    def load(cls, export_dir: str | Path, **kwargs: Any) -> Scorer:
        """A scorer for an export directory (checksums verified; `backend="onnx"` needs an ONNX export)."""
        model, manifest = load_export(export_dir)
        if ONNX_FILE in manifest["files"]:
            kwargs.setdefault("onnx_path", Path(export_dir) / ONNX_FILE)
        elif kwargs.get("backend") == "onnx":
            raise ValueError(f"{export_dir}: no {ONNX_FILE}; export with --format onnx to serve with onnx")
        return cls(model, manifest, **kwargs)

    def parse(self, request: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
        """The validated request (JSON text or an already-decoded mapping); raises RequestError."""
        try:
            if isinstance(request, bytes | str):
                return self._adapter.validate_json(request)
            return self._adapter.validate_python(request)
        except ValidationError as e:
            raise RequestError(_format_errors(e)) from None

    def predict(self, batch: Batch) -> np.ndarray:
        """Probabilities `[N, all tasks]` of an encoded batch with this scorer's backend (one pass, no chunking)."""
        return self._forward(batch)

    def score(self, request: bytes | str | Mapping[str, Any]) -> ScoreResult:
        """Validate, encode and score a request."""
        enc = self.encode(self.parse(request))
        b = enc.batch
        parts = []
        for start in range(0, b.num_users, self.max_unique_users):  # rows are grouped by user: chunks are slices
            users = torch.arange(start, min(start + self.max_unique_users, b.num_users))
            chunk = b if len(users) == b.num_users else b.take_users(users)
            parts.append(self.predict(chunk)[:, self._task_cols])
        probs = np.empty((b.num_rows, len(self.tasks)), dtype=np.float32)
        if parts:
            probs[enc.order] = np.concatenate(parts)
        return ScoreResult(
            self.surface, self.version, self.tasks, probs, b.num_users, len(parts), enc.truncated_sequences,
            enc.dropped_events,
        )

    def encode(self, req: Mapping[str, Any]) -> EncodedRequest:
        """A validated request (see `parse`) as a Batch in the broadcast layout."""
        users, cands = req["users"], req["candidates"]
        n = len(cands)
        if n > self.max_candidates:
            raise RequestError(f"candidates: {n} candidates, at most {self.max_candidates} per request", 413)
        position: dict[str, int] = {}
        for i, u in enumerate(users):
            if position.setdefault(u["id"], i) != i:
                raise RequestError(f"users[{i}].id: duplicate user id {u['id']!r} (also users[{position[u['id']]}])")
        ref = np.fromiter((position.get(c["user"], -1) for c in cands), dtype=np.int64, count=n)
        if (ref < 0).any():
            i = int(np.flatnonzero(ref < 0)[0])
            raise RequestError(f"candidates[{i}].user: unknown user {cands[i]['user']!r}; not among users[].id")
        used, user_index = np.unique(ref, return_inverse=True)
        order = np.argsort(user_index, kind="stable")  # rows grouped by user, request order within a user
        s = self.schema
        user_feats = [users[i]["features"] for i in used]
        cand_feats = [cands[i]["features"] for i in order]
        req_ms = int(req.get("request_time_ms", time.time() * 1000))
        seq, truncated, dropped = self._sequences([users[i] for i in used], req_ms)
        view_index = {v: k for k, (_, v) in enumerate(s.view_keys)}
        tasks = len(s.tasks)
        batch = Batch(
            user_cat=torch.from_numpy(_cat_matrix(user_feats, s.user_cat, s.user_cat_sizes)),
            user_dense=torch.from_numpy(_dense_matrix(user_feats, s.user_dense)),
            seq_item=seq[0],
            seq_side=seq[1],
            seq_action=seq[2],
            seq_age=seq[3],
            seq_mask=seq[4],
            cand_cat=torch.from_numpy(_cat_matrix(cand_feats, s.cand_cat, s.cand_cat_sizes)),
            cand_dense=torch.from_numpy(_dense_matrix(cand_feats, s.cand_dense)),
            surface=torch.zeros(n, dtype=torch.int64),
            view_key=torch.tensor([view_index[cands[i]["view_type"]] for i in order], dtype=torch.int64),
            user_index=torch.from_numpy(user_index[order].astype(np.int64)),
            labels=torch.zeros((n, tasks)),
            label_mask=torch.tensor(s.task_mask[0]).expand(n, tasks).clone(),
        )
        return EncodedRequest(batch, order, truncated, dropped)

    def _sequences(
        self, users: list[dict[str, Any]], req_ms: int
    ) -> tuple[tuple[torch.Tensor, ...], int, int]:
        """Padded sequence tensors of the given users, and how many were truncated / events dropped."""
        spec = self.schema.sequence
        if spec is None:
            return no_sequences(len(users)), 0, 0
        keys = ("items", "actions", "timestamps_ms", *spec.side_features)
        seqs = [u.get("sequence") or dict.fromkeys(keys, ()) for u in users]
        for i, q in enumerate(seqs):
            lens = tuple(len(q[k]) for k in keys)
            if len(set(lens)) > 1:
                raise RequestError(f"users[{i}].sequence: {', '.join(keys)} differ in length {lens}")
        counts = np.array([len(q["items"]) for q in seqs], dtype=np.int64)
        total = int(counts.sum())

        def flat(key: str) -> np.ndarray:
            return np.fromiter(itertools.chain.from_iterable(q[key] for q in seqs), dtype=np.int64, count=total)

        items, actions, times = flat("items"), flat("actions"), flat("timestamps_ms")
        sides = [flat(k) for k in spec.side_features]
        owner = np.repeat(np.arange(len(seqs)), counts)
        keep = times < req_ms
        owner, items, actions, times = owner[keep], items[keep], actions[keep], times[keep]
        sides = [v[keep] for v in sides]
        by_time = np.lexsort((times, owner))  # per user, oldest first (stable)
        counts = np.bincount(owner, minlength=len(seqs))
        hi = np.cumsum(counts)
        tensors = pad_sequences(
            hi - counts, hi, items[by_time], actions[by_time], times[by_time],
            np.full(len(seqs), req_ms, dtype=np.int64), self.schema, "request", [v[by_time] for v in sides],
        )
        return tensors, int((counts > spec.max_len).sum()), int((~keep).sum())


def _runner(
    model: UnifiedCTR, backend: str, bf16: bool, onnx_path: str | Path | None, device: torch.device
) -> Callable[[Batch], np.ndarray]:
    """Batch → probabilities `[N, T]` (float32 numpy) with the chosen backend."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend == "onnx":
        if bf16 or device.type != "cpu":
            raise ValueError("the onnx backend runs in fp32 on the CPU (no bf16, no device)")
        if onnx_path is None:
            raise ValueError("the onnx backend needs onnx_path (the export's model.onnx)")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the same thread budget as torch's pool
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        return lambda b: session.run(None, {n: getattr(b, n).numpy() for n in BATCH_INPUTS})[0]
    net = torch.compile(model.to(device), dynamic=True) if backend == "compile" else model.to(device)

    def forward(b: Batch) -> np.ndarray:
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            return probabilities(net, b.to(device)).cpu().numpy()

    if backend == "compile":  # compile now, for one user and for several, not on the first requests
        for users, rows in ((1, 3), (3, 7)):
            forward(probe_batch(model.schema, model.schema.surfaces[0], users, rows))
    return forward


def _cat_matrix(rows: list[Mapping[str, int]], names: tuple[str, ...], sizes: tuple[int, ...]) -> np.ndarray:
    out = np.empty((len(rows), len(names)), dtype=np.int64)
    for j, (name, size) in enumerate(zip(names, sizes, strict=True)):
        out[:, j] = hash_ids(np.fromiter((r[name] for r in rows), dtype=np.int64, count=len(rows)), size)
    return out


def _dense_matrix(rows: list[Mapping[str, float]], names: tuple[str, ...]) -> np.ndarray:
    out = np.empty((len(rows), len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        out[:, j] = np.fromiter((r[name] for r in rows), dtype=np.float64, count=len(rows))
    return out
