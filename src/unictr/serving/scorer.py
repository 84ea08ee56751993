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

or, for large requests, the candidates as columns (one list per field, the same validation; 2.5x
less JSON, half the validation time and no per-candidate objects to build), answered with columns:

     "candidate_columns": {"user": ["u1", ...], "view_type": ["grid", ...], "features": {"ad_id": [42, ...], ...}}

In-process, the candidate columns may be 1-D numpy arrays instead of lists (all of them), each checked
whole rather than value by value.

Sequence events may come in any order (they are sorted by time); events at or after the request
time are dropped (clock skew must not fail a request) and counted; only the newest
`sequence.max_len` events are kept (truncation is counted too).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Annotated, Any, Literal, NotRequired

import numpy as np
import torch
from pydantic import Field, PlainValidator, Strict, StrictInt, StrictStr, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from unictr.checkpoint import MODEL_FILE
from unictr.data.batch import MODEL_INPUTS, SEQUENCE_FIELDS, Batch, Schema
from unictr.data.encode import hash_ids
from unictr.data.reader import SequenceArrays, no_sequences, pad_sequences
from unictr.export.artifact import ONNX_FILE, ONNX_ONE_USER_FILE, load_export
from unictr.export.probe import probe_batch
from unictr.model import UnifiedCTR, probabilities

Int64 = Annotated[int, Strict(), Field(ge=-(2**63), le=2**63 - 1)]
# Candidate ids, hundreds per request: the int64 range is checked when they become an array
# (`_cat_matrix`), which costs nothing, instead of per value in the validator (a third of its time).
CandidateId = StrictInt
FLOAT32_MAX = float(np.finfo(np.float32).max)
Dense = Annotated[float, Strict(), Field(allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
MAX_ERRORS_SHOWN = 5
BACKENDS = ("auto", "eager", "compile", "onnx")  # how the model runs; docs/performance.md measures each


class RequestError(ValueError):
    """A request the scorer refuses; `status` is the HTTP status (422 invalid, 413 too large)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


# User ids are strings or integers (not bools), compared as their string form (`encode` converts).
# A union checked in pydantic's core: a Python validator per candidate cost ~0.2 ms per 500 candidates.
UserId = StrictStr | StrictInt
USER_ID_BRANCHES = {("str", "string_type"), ("int", "int_type")}  # how pydantic reports the union's failures
INT64_MAX = np.iinfo(np.int64).max


def _array(value: Any, kinds: str, what: str) -> np.ndarray:
    """`value` if it is a 1-D numpy array whose dtype kind is one of `kinds`; else a ValueError."""
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in kinds:
        return value
    got = f"a {value.ndim}-D {value.dtype} array" if isinstance(value, np.ndarray) else type(value).__name__
    raise ValueError(f"expected a 1-D numpy array of {what} (the request's candidate columns are arrays), got {got}")


def _first_bad(bad: np.ndarray, message: str) -> None:
    """Raise `message` for the first True position of `bad`, if any."""
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"position {i}: {message}")


def _id_array(value: Any) -> np.ndarray:
    ids = _array(value, "iu", "integer ids")
    if ids.dtype.kind == "u":
        _first_bad(ids > INT64_MAX, "an id outside the int64 range")
    return ids


def _dense_array(value: Any) -> np.ndarray:
    dense = _array(value, "iuf", "numbers")
    _first_bad(~(np.abs(dense.astype(np.float64)) <= FLOAT32_MAX), "not a finite number within the float32 range")
    return dense


def _user_array(value: Any) -> list[Any]:
    """User references as a list (ids are matched as Python strings or ints)."""
    refs = _array(value, "iuUO", "user ids (strings or integers)")
    out = refs.tolist()
    if refs.dtype.kind == "O":
        _first_bad(np.array([type(r) not in (str, int) for r in out]), "a user id must be a string or an integer")
    return out


def _view_codes(names: tuple[str, ...], value: Any) -> np.ndarray:
    """View-type names as their positions in `names` (the schema's view keys), int64, checked whole."""
    views = _array(value, "UO", "view type names")
    codes = np.full(len(views), -1, dtype=np.int64)
    for k, name in enumerate(names):  # a surface's few view types, each one comparison over the column
        codes[views == name] = k
    _first_bad(codes < 0, f"view type must be one of {', '.join(map(repr, names))}")
    return codes


# In-process requests may give `candidate_columns` as numpy arrays: validated whole, never per value.
IdArray = Annotated[Any, PlainValidator(_id_array)]
DenseArray = Annotated[Any, PlainValidator(_dense_array)]
UserArray = Annotated[Any, PlainValidator(_user_array)]


def request_adapter(schema: Schema, arrays: bool = False) -> TypeAdapter:
    """A validator for requests to a model with this (single-surface) schema.

    Features are typed per name (categorical: int64, dense: finite number); unknown extra features
    are ignored, so one client payload can serve several surfaces. `arrays`: the `candidate_columns`
    are 1-D numpy arrays (an in-process caller's), checked whole by dtype and value range.
    """
    view_names = tuple(v for _, v in schema.view_keys)
    view_types = Literal[view_names]
    id_column, dense_column = (IdArray, DenseArray) if arrays else (list[CandidateId], list[Dense])
    user_column = UserArray if arrays else list[UserId]
    view_column = Annotated[Any, PlainValidator(partial(_view_codes, view_names))] if arrays else list[view_types]

    def features(name: str, cat: tuple[str, ...], dense: tuple[str, ...], id_type: Any, columns: bool = False) -> type:
        """One value per feature, or (`columns`) one list (or array) of values per feature."""
        cat_t, dense_t = (id_column, dense_column) if columns else (id_type, Dense)
        return TypedDict(name, {**{n: cat_t for n in cat}, **{n: dense_t for n in dense}})

    user_features = features("UserFeatures", schema.user_cat, schema.user_dense, Int64)
    side = tuple(schema.sequence.side_features) if schema.sequence else ()
    # the event lists, plus one list per sequence side column (e.g. each event item's topic)
    sequence_in = TypedDict(  # noqa: UP013
        "SequenceIn", {n: list[Int64] for n in ("items", "actions", "timestamps_ms", *side)}
    )
    cand_features = features("CandidateFeatures", schema.cand_cat, schema.cand_dense, CandidateId)
    cand_columns = features("CandidateFeatureColumns", schema.cand_cat, schema.cand_dense, CandidateId, columns=True)
    # Functional syntax: the field types are local values, which class bodies (string annotations) can't see.
    user = TypedDict(  # noqa: UP013
        "User", {"id": UserId, "features": user_features, "sequence": NotRequired[sequence_in]}
    )
    candidate = TypedDict(  # noqa: UP013
        "Candidate", {"user": UserId, "features": cand_features, "view_type": view_types}
    )
    columns = TypedDict(  # noqa: UP013
        "CandidateColumns", {"user": user_column, "view_type": view_column, "features": cand_columns}
    )
    request = TypedDict(  # noqa: UP013
        "ScoreRequest",
        {
            "request_time_ms": NotRequired[Int64],
            "users": list[user],
            "candidates": NotRequired[list[candidate]],
            "candidate_columns": NotRequired[columns],
        },
    )
    return TypeAdapter(request)


def _format_errors(e: ValidationError) -> str:
    """`users[0].features.user_id: Field required; ...` for the first few errors.

    A user id that is neither string nor integer fails both branches of `UserId`; it is one error.
    """
    parts: dict[str, str] = {}
    for err in e.errors():
        loc, msg = err["loc"], err["msg"]
        if loc and (loc[-1], err["type"]) in USER_ID_BRANCHES:
            loc, msg = loc[:-1], "Input should be a string or an integer"
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "body"
        parts.setdefault(path, msg)
    more = len(parts) - MAX_ERRORS_SHOWN
    shown = [f"{path}: {msg}" for path, msg in list(parts.items())[:MAX_ERRORS_SHOWN]]
    return "; ".join(shown) + (f"; and {more} more error(s)" if more > 0 else "")


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


@dataclass(frozen=True)
class EncodedRequest:
    """A request in the Batch layout, rows grouped by user: `arrays` holds one numpy array per Batch
    field (what ONNX Runtime reads; no torch tensor is made for it), `batch` the same as a `Batch`.
    `order[i]` is row i's candidate index (`slice(0, N)` when the request order already is: one user)."""

    arrays: dict[str, np.ndarray]
    order: np.ndarray | slice
    truncated_sequences: int
    dropped_events: int
    columnar: bool

    @cached_property
    def batch(self) -> Batch:
        return Batch.from_numpy(self.arrays)

    @property
    def num_users(self) -> int:
        return len(self.arrays["user_cat"])


class Scorer:
    """Scores requests for one surface export. Thread-safe: the model is only read.

    `backend`: `eager` (PyTorch), `compile` (`torch.compile`, compiled here on probe batches),
    `onnx` (ONNX Runtime on the export's `model.onnx`, CPU; batches of one user run the export's
    `model_one_user.onnx` when given as `onnx_one_user_path`) or `auto`: onnx when there is a
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
        onnx_one_user_path: str | Path | None = None,
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
        self._run = _runner(self.model, backend, bf16, onnx_path, onnx_one_user_path, torch.device(device))
        self.manifest = dict(manifest)
        self.schema = model.schema
        self.surface = self.schema.surfaces[0]
        self.version = version or f"{self.surface}@{manifest['files'][MODEL_FILE][:12]}"
        self.max_unique_users = max_unique_users
        self.max_candidates = max_candidates
        task_cols = [i for i, on in enumerate(self.schema.task_mask[0]) if on]
        self.tasks = tuple(self.schema.tasks[i] for i in task_cols)
        # the model's outputs of the tasks that apply on this surface (None: all of them, nothing to select)
        self._task_cols = None if len(task_cols) == len(self.schema.tasks) else task_cols
        self._adapter = request_adapter(self.schema)
        self._array_adapter = request_adapter(self.schema, arrays=True)
        self._view_index = {v: k for k, (_, v) in enumerate(self.schema.view_keys)}
        # Per-row arrays that are the same in every request (the one surface, no labels, the surface's
        # tasks), made once for the largest request: a request takes views of its first rows.
        tasks = len(self.schema.tasks)
        self._row_constants = {
            "surface": np.zeros(max_candidates, dtype=np.int64),
            "labels": np.zeros((max_candidates, tasks), dtype=np.float32),
            "label_mask": np.tile(np.asarray(self.schema.task_mask[0]), (max_candidates, 1)),
        }

    @classmethod
    def load(cls, export_dir: str | Path, **kwargs: Any) -> Scorer:
        """A scorer for an export directory (checksums verified; `backend="onnx"` needs an ONNX export)."""
        model, manifest = load_export(export_dir)
        if ONNX_FILE in manifest["files"]:
            kwargs.setdefault("onnx_path", Path(export_dir) / ONNX_FILE)
        elif kwargs.get("backend") == "onnx":
            raise ValueError(f"{export_dir}: no {ONNX_FILE}; export with --format onnx to serve with onnx")
        if ONNX_ONE_USER_FILE in manifest["files"]:  # exports before it have the general graph only
            kwargs.setdefault("onnx_one_user_path", Path(export_dir) / ONNX_ONE_USER_FILE)
        return cls(model, manifest, **kwargs)

    def parse(self, request: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
        """The validated request (JSON text or an already-decoded mapping); raises RequestError."""
        try:
            if isinstance(request, bytes | str):
                return self._adapter.validate_json(request)
            adapter = self._array_adapter if _has_arrays(request) else self._adapter
            return adapter.validate_python(request)
        except ValidationError as e:
            raise RequestError(_format_errors(e)) from None

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
            enc.dropped_events, enc.columnar,
        )

    def encode(self, req: Mapping[str, Any]) -> EncodedRequest:
        """A validated request (see `parse`) in the Batch layout (broadcast: one row per unique user)."""
        users = req["users"]
        columnar = "candidate_columns" in req
        cand_users, view_types, features = self._candidate_columns(req)
        n = len(cand_users)
        if n > self.max_candidates:
            raise RequestError(f"candidates: {n} candidates, at most {self.max_candidates} per request", 413)
        position: dict[str, int] = {}
        for i, u in enumerate(users):
            if (first := position.setdefault(str(u["id"]), i)) != i:
                raise RequestError(f"users[{i}].id: duplicate user id {u['id']!r} (also users[{first}])")
        ref = _codes(cand_users, lambda u: position.get(str(u), -1))
        if (ref < 0).any():
            i = int(np.flatnonzero(ref < 0)[0])
            where = _candidate_field(columnar, "user", i)
            raise RequestError(f"{where}: unknown user {cand_users[i]!r}; not among users[].id")
        referenced = np.zeros(len(users), dtype=bool)
        referenced[ref] = True
        used = np.flatnonzero(referenced)  # users with candidates, in request order
        user_index = (np.cumsum(referenced) - 1)[ref]
        # rows grouped by user, request order within a user; one user's rows already are (no copies)
        order = np.argsort(user_index, kind="stable") if len(used) > 1 else slice(0, n)
        s = self.schema
        user_cols = {name: [users[i]["features"][name] for i in used] for name in (*s.user_cat, *s.user_dense)}
        every_user = slice(0, len(used))  # user_cols are already in `used` order: nothing to gather
        req_ms = int(req.get("request_time_ms", time.time() * 1000))
        seq, truncated, dropped = self._sequences(users, used, req_ms)
        if not isinstance(view_types, np.ndarray):  # numpy requests arrive coded (`_view_codes`)
            view_types = _codes(view_types, self._view_index.__getitem__)
        view_key = view_types[order]
        user_cat = _cat_matrix(user_cols, s.user_cat, s.user_cat_sizes, every_user, "users[].features")
        cand_cat = _cat_matrix(features, s.cand_cat, s.cand_cat_sizes, order, _candidate_field(columnar, "features"))
        arrays = dict(
            user_cat=user_cat,
            user_dense=_dense_matrix(user_cols, s.user_dense, every_user),
            **dict(zip(SEQUENCE_FIELDS, seq, strict=True)),
            cand_cat=cand_cat,
            cand_dense=_dense_matrix(features, s.cand_dense, order),
            surface=self._row_constants["surface"][:n],
            view_key=view_key,
            user_index=user_index[order].astype(np.int64, copy=False),
            labels=self._row_constants["labels"][:n],
            label_mask=self._row_constants["label_mask"][:n],
        )
        return EncodedRequest(arrays, order, truncated, dropped, columnar)

    def _candidate_columns(self, req: Mapping[str, Any]) -> tuple[list[Any], list[str] | np.ndarray, Mapping[str, Any]]:
        """(user refs, view types, feature name → values) of the candidates, from either layout; a numpy
        request's view types arrive as codes (`_view_codes`) and its features as arrays."""
        if ("candidates" in req) == ("candidate_columns" in req):
            raise RequestError(
                "body: give the candidates either as candidates (a list of objects) or as "
                "candidate_columns (one list per field), exactly one of the two"
            )
        if "candidates" in req:
            rows = req["candidates"]
            names = (*self.schema.cand_cat, *self.schema.cand_dense)
            features = {name: [r["features"][name] for r in rows] for name in names}
            return [r["user"] for r in rows], [r["view_type"] for r in rows], features
        cols = req["candidate_columns"]
        n = len(cols["user"])
        lists = {"view_type": cols["view_type"]} | {f"features.{k}": v for k, v in cols["features"].items()}
        for key, values in lists.items():
            if len(values) != n:
                raise RequestError(
                    f"candidate_columns.{key}: {len(values)} values, expected {n} (one per candidate_columns.user)"
                )
        return cols["user"], cols["view_type"], cols["features"]

    def _sequences(
        self, users: list[dict[str, Any]], used: np.ndarray, req_ms: int
    ) -> tuple[SequenceArrays, int, int]:
        """Padded sequence arrays of `users[used]`, and how many were truncated / events dropped."""
        spec = self.schema.sequence
        if spec is None:
            return no_sequences(len(used)), 0, 0
        names = ("items", "actions", "timestamps_ms", *spec.side_features)  # as the request gives them
        seqs = [users[i].get("sequence") or dict.fromkeys(names, ()) for i in used]
        for i, q in zip(used.tolist(), seqs, strict=True):  # errors name the user's place in the request
            lens = tuple(len(q[k]) for k in names)
            if len(set(lens)) > 1:
                raise RequestError(f"users[{i}].sequence: {', '.join(names)} differ in length {lens}")
        counts = np.array([len(q["items"]) for q in seqs], dtype=np.int64)
        total = int(counts.sum())
        # every event list in one conversion: [keys, events], one row per key (pad_sequences' order), users
        # in order along it
        keys = ("items", *spec.side_features, "actions", "timestamps_ms")
        rows = itertools.chain.from_iterable(q[k] for k in keys for q in seqs)
        events = np.fromiter(rows, dtype=np.int64, count=len(keys) * total).reshape(len(keys), total)
        owner = np.repeat(np.arange(len(seqs)), counts)
        keep = events[-1] < req_ms
        dropped = total - int(np.count_nonzero(keep))
        if dropped:
            events, owner = events[:, keep], owner[keep]
        events = events[:, np.lexsort((events[-1], owner))]  # per user, oldest first (stable)
        counts = np.bincount(owner, minlength=len(seqs))
        hi = np.cumsum(counts)
        arrays = pad_sequences(hi - counts, hi, events, np.full(len(seqs), req_ms, dtype=np.int64), self.schema,
                               "request")
        return arrays, int((counts > spec.max_len).sum()), dropped


@dataclass(frozen=True)
class _Runner:
    """A backend's forward → probabilities `[N, T]` (float32 numpy), on an encoded request's numpy arrays
    (`EncodedRequest.arrays`) or on a `Batch`; each backend takes one natively and converts the other
    without copying."""

    arrays: Callable[[Mapping[str, np.ndarray]], np.ndarray]
    batch: Callable[[Batch], np.ndarray]


def _runner(
    model: UnifiedCTR,
    backend: str,
    bf16: bool,
    onnx_path: str | Path | None,
    onnx_one_user_path: str | Path | None,
    device: torch.device,
) -> _Runner:
    """The chosen backend's forward."""
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
        general = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        one_user = general
        if onnx_one_user_path is not None:
            one_user = ort.InferenceSession(str(onnx_one_user_path), options, providers=["CPUExecutionProvider"])

        def run(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
            session = one_user if len(arrays["user_cat"]) == 1 else general
            return session.run(None, {n: arrays[n] for n in MODEL_INPUTS})[0]

        return _Runner(run, lambda b: run({n: getattr(b, n).numpy() for n in MODEL_INPUTS}))
    net = torch.compile(model.to(device), dynamic=True) if backend == "compile" else model.to(device)

    def forward(b: Batch) -> np.ndarray:
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            return probabilities(net, b.to(device)).cpu().numpy()

    if backend == "compile":  # compile now, for one user and for several, not on the first requests
        for users, rows in ((1, 3), (3, 7)):
            forward(probe_batch(model.schema, model.schema.surfaces[0], users, rows))
    return _Runner(lambda arrays: forward(Batch.from_numpy(arrays)), forward)


def _has_arrays(request: Mapping[str, Any]) -> bool:
    """Whether the request's `candidate_columns` hold numpy arrays (then all of them must)."""
    columns = request.get("candidate_columns")
    if not isinstance(columns, Mapping):
        return False
    features = columns.get("features")
    values = [*columns.values(), *(features.values() if isinstance(features, Mapping) else ())]
    return any(isinstance(v, np.ndarray) for v in values)


def to_columns(request: Mapping[str, Any]) -> dict[str, Any]:
    """A request with `candidates` (one object each) rewritten with `candidate_columns` (one list per field)."""
    rows = request["candidates"]
    names = dict.fromkeys(name for row in rows for name in row["features"])
    columns = {
        "user": [row["user"] for row in rows],
        "view_type": [row["view_type"] for row in rows],
        "features": {name: [row["features"][name] for row in rows] for name in names},
    }
    return {k: v for k, v in request.items() if k != "candidates"} | {"candidate_columns": columns}


def to_numpy_columns(request: Mapping[str, Any]) -> dict[str, Any]:
    """A `candidate_columns` request with its candidate columns as numpy arrays (the in-process form)."""
    cols = request["candidate_columns"]
    arrays = {"user": np.array(cols["user"]), "view_type": np.array(cols["view_type"])}
    arrays["features"] = {name: np.array(values) for name, values in cols["features"].items()}
    return {**request, "candidate_columns": arrays}


def _candidate_field(columnar: bool, field: str, i: int | None = None) -> str:
    """How an error names candidate `i`'s `field` (every candidate's when `i` is None) in the request's layout."""
    if columnar:
        return f"candidate_columns.{field}" + ("" if i is None else f"[{i}]")
    return f"candidates[{'' if i is None else i}].{field}"


def _cat_matrix(
    columns: Mapping[str, Sequence[int]],
    names: tuple[str, ...],
    sizes: tuple[int, ...],
    take: np.ndarray | slice,
    label: str,
) -> np.ndarray:
    """Hashed ids `[len(take), len(names)]`: each named column's values at the positions `take`.

    Raises RequestError naming `label.<feature>` for an id outside the int64 range.
    """
    if not names:
        return np.empty((_rows(take), 0), dtype=np.int64)
    try:
        raw = np.array([columns[name] for name in names], dtype=np.int64)  # [F, N]: one conversion for all
    except OverflowError:
        name = next(n for n in names if not _fits_int64(columns[n]))
        raise RequestError(f"{label}.{name}: an id outside the int64 range") from None
    # one vectorised hash for every column (one size per column), then rows in `take` order
    return np.ascontiguousarray(hash_ids(raw, np.asarray(sizes)[:, None]).T[take])


def _rows(take: np.ndarray | slice) -> int:
    """How many rows the positions `take` select (a slice here is `slice(0, n)`)."""
    return take.stop if isinstance(take, slice) else len(take)


def _fits_int64(values: Sequence[int]) -> bool:
    try:
        np.asarray(values, dtype=np.int64)
    except OverflowError:
        return False
    return True


def _codes(values: list[Any], code: Callable[[Any], int]) -> np.ndarray:
    """`[code(v) for v in values]` as int64, calling `code` once per distinct value (a request repeats a
    few users and view types over hundreds of candidates)."""
    if values and values.count(values[0]) == len(values):  # one user, one view type: no dict per value
        return np.full(len(values), code(values[0]), dtype=np.int64)
    table = {v: code(v) for v in set(values)}
    return np.fromiter(map(table.__getitem__, values), dtype=np.int64, count=len(values))


def _dense_matrix(
    columns: Mapping[str, Sequence[float]], names: tuple[str, ...], take: np.ndarray | slice
) -> np.ndarray:
    """Dense values `[len(take), len(names)]` (float32): each named column's values at the positions `take`."""
    out = np.empty((_rows(take), len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        out[:, j] = np.asarray(columns[name], dtype=np.float64)[take]
    return out
