"""The score request: its JSON schema, validation into Python values and error messages, and conversions.

A request holds one or many users (features and action sequence) and many candidates, each naming
its user (see docs/serving.md):

    {"request_time_ms": 1700000000000,                      # optional; default: now
     "users": [{"id": "u1", "features": {"user_id": 7, ...},
                "sequence": {"items": [...], "actions": [...], "timestamps_ms": [...]}}],  # optional
     "candidates": [{"user": "u1", "features": {"ad_id": 42, ...}, "view_type": "grid"}]}

or, for large requests, the candidates as columns (one list per field, the same validation, less
JSON and less validation time, no per-candidate objects to build), answered with columns:

     "candidate_columns": {"user": ["u1", ...], "view_type": ["grid", ...], "features": {"ad_id": [42, ...], ...}}

In-process, the candidate columns may be 1-D numpy arrays instead of lists (all of them), each checked
whole rather than value by value.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Annotated, Any, Literal, NotRequired

import numpy as np
from pydantic import Field, PlainValidator, Strict, StrictInt, StrictStr, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from unictr.data.batch import Schema

Int64 = Annotated[int, Strict(), Field(ge=-(2**63), le=2**63 - 1)]
# Candidate ids, hundreds per request: the int64 range is checked when they become an array
# (`encoding.id_rows`), which costs nothing, instead of per value in the validator (a large share of its time).
CandidateId = StrictInt
FLOAT32_MAX = float(np.finfo(np.float32).max)
Dense = Annotated[float, Strict(), Field(allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
MAX_ERRORS_SHOWN = 5


class RequestError(ValueError):
    """A request the scorer refuses; `status` is the HTTP status (422 invalid, 413 too large)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


# User ids are strings or integers (not bools), compared as their string form (`encode` converts).
# A union checked in pydantic's core: a Python validator per candidate would cost far more (docs/performance.md).
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


class RequestParser:
    """Validates requests to one (single-surface) schema: JSON text or bytes, or a decoded mapping whose
    `candidate_columns` may hold numpy arrays (then checked whole by dtype and range)."""

    def __init__(self, schema: Schema) -> None:
        self._adapter = request_adapter(schema)
        self._array_adapter = request_adapter(schema, arrays=True)

    def parse(self, request: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
        """The validated request; raises RequestError naming the first few wrong fields."""
        try:
            if isinstance(request, bytes | str):
                return self._adapter.validate_json(request)
            adapter = self._array_adapter if _has_arrays(request) else self._adapter
            return adapter.validate_python(request)
        except ValidationError as e:
            raise RequestError(_format_errors(e)) from None


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


def candidate_field(columnar: bool, field: str, i: int | None = None) -> str:
    """How an error names candidate `i`'s `field` (every candidate's when `i` is None) in the request's layout."""
    if columnar:
        return f"candidate_columns.{field}" + ("" if i is None else f"[{i}]")
    return f"candidates[{'' if i is None else i}].{field}"

