"""A validated score request into numpy arrays in the `Batch` layout, one row per unique user.

Users are deduplicated by id and only those with candidates are encoded; rows are grouped by user.
Sequence events may come in any order (`data.columns.time_ordered` sorts them by time, as for a
file); events at or after the request time are dropped (clock skew must not fail a request) and counted; only the newest
`sequence.max_len` events are kept (truncation is counted too). The arrays come from the same
encoder of canonical columns as the reader's (`data/columns.py`), so a request and a file encode alike.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from unictr.data.batch import Batch, Schema
from unictr.data.columns import SequenceArrays, SideColumns, encode_columns, no_sequences, pad_sequences
from unictr.data.encode import outside_modulo_table
from unictr.serving.request import INT64_MAX, RequestError, candidate_field


@dataclass(frozen=True)
class EncodedRequest:
    """A request in the Batch layout, rows grouped by user: `arrays` holds one numpy array per Batch
    field (what ONNX Runtime reads; no torch tensor is made for it), `batch` the same as a `Batch`.
    `order[i]` is row i's candidate index (`slice(0, N)` when the request order already is: one user)."""

    arrays: dict[str, np.ndarray | None]
    order: np.ndarray | slice
    truncated_sequences: int
    dropped_events: int
    columnar: bool
    folded_codes: dict[str, int] = field(default_factory=dict)  # see `_ModuloCheck`

    @cached_property
    def batch(self) -> Batch:
        return Batch.from_numpy(self.arrays)

    @property
    def num_users(self) -> int:
        return len(self.arrays["user_cat"])


class RequestEncoder:
    """Encodes validated requests (`RequestParser.parse`) for one single-surface schema."""

    def __init__(self, schema: Schema, max_candidates: int) -> None:
        self.schema = schema
        self.max_candidates = max_candidates
        self._view_index = {v: k for k, (_, v) in enumerate(schema.view_keys)}
        # codes outside their modulo tables, counted per feature (`_ModuloCheck`)
        s = schema
        self._user_check = _ModuloCheck(s.user_cat, zip(s.user_cat_sizes, s.user_cat_modulo, strict=True))
        self._cand_check = _ModuloCheck(s.cand_cat, zip(s.cand_cat_sizes, s.cand_cat_modulo, strict=True))
        seq_fields = () if schema.sequence is None else ("items", *schema.sequence.side_features)
        self._seq_check = _ModuloCheck([f"sequence.{k}" for k in seq_fields], schema.seq_tables)
        # Per-row arrays that are the same in every request (the one surface, no labels, the surface's
        # tasks), made once for the largest request: a request takes views of its first rows.
        tasks = len(schema.tasks)
        self._row_constants = {
            "surface": np.zeros(max_candidates, dtype=np.int64),
            "labels": np.zeros((max_candidates, tasks), dtype=np.float32),
            "label_mask": np.tile(np.asarray(schema.task_mask[0]), (max_candidates, 1)),
        }

    def encode(self, req: Mapping[str, Any]) -> EncodedRequest:
        """A validated request in the Batch layout (broadcast: one row per unique user)."""
        users = req["users"]
        columnar = "candidate_columns" in req
        cand_users, view_types, features = self._candidate_columns(req)
        n = len(cand_users)
        if n > self.max_candidates:
            raise RequestError(f"candidates: {n} candidates, at most {self.max_candidates} per request", 413)
        used, user_index = _user_rows(users, cand_users, columnar)
        # rows grouped by user, request order within a user; one user's rows already are (no copies)
        order = np.argsort(user_index, kind="stable") if len(used) > 1 else slice(0, n)
        s = self.schema
        user_cols = {name: [users[i]["features"][name] for i in used] for name in (*s.user_cat, *s.user_dense)}
        req_ms = int(req.get("request_time_ms", time.time() * 1000))
        seq, truncated, dropped, folded = self._sequences(users, used, req_ms)
        if not isinstance(view_types, np.ndarray):  # numpy requests arrive coded (`_view_codes`)
            view_types = _codes(view_types, self._view_index.__getitem__)
        user_side = SideColumns(  # user_cols are already in `used` order: nothing to gather
            _id_rows(user_cols, s.user_cat, "users[].features"), _dense_columns(user_cols, s.user_dense),
            slice(0, len(used)),
        )
        cand_side = SideColumns(
            _id_rows(features, s.cand_cat, candidate_field(columnar, "features")),
            _dense_columns(features, s.cand_dense), order,
        )
        arrays = encode_columns(
            s, user_side, cand_side, seq, surface=self._row_constants["surface"][:n], view_key=view_types[order],
            user_index=user_index[order].astype(np.int64, copy=False), labels=self._row_constants["labels"][:n],
            label_mask=self._row_constants["label_mask"][:n],
        )
        folded |= self._user_check.count(user_side.ids) | self._cand_check.count(cand_side.ids)
        return EncodedRequest(arrays, order, truncated, dropped, columnar, folded)

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
    ) -> tuple[SequenceArrays, int, int, dict[str, int]]:
        """Padded sequence arrays of `users[used]`, how many were truncated / events dropped, and the folded
        codes of the events' items and side features (`_ModuloCheck`)."""
        spec = self.schema.sequence
        if spec is None:
            return no_sequences(len(used)), 0, 0, {}
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
        _check_ages(events[-1], owner, counts, used, req_ms)
        keep = events[-1] < req_ms
        dropped = total - int(np.count_nonzero(keep))
        if dropped:
            events, owner = events[:, keep], owner[keep]
        counts = np.bincount(owner, minlength=len(seqs))  # pad_sequences puts each user's events in time order
        hi = np.cumsum(counts)
        arrays = pad_sequences(hi - counts, hi, events, np.full(len(seqs), req_ms, dtype=np.int64), self.schema,
                               "request")
        folded = self._seq_check.count(events[: 1 + len(spec.side_features)])
        return arrays, int((counts > spec.max_len).sum()), dropped, folded


class _ModuloCheck:
    """Counts, per `encoding: modulo` feature, the codes of a request outside [-1, hash_size): they share
    another code's row. The reader refuses them in files (`data.table.check_codes`); a live request is
    scored as the model would score it, and the server counts them (`unictr_folded_codes_total`), so a
    hash_size that live traffic has outgrown shows."""

    def __init__(self, names: Sequence[str], tables: Iterable[tuple[int, bool]]) -> None:
        """`tables`: (hash_size, modulo) of each of the features `names`, in their order."""
        sizes = [(i, size) for i, (size, modulo) in enumerate(tables) if modulo]
        self.rows = np.array([i for i, _ in sizes], dtype=np.int64)
        self.names = [names[i] for i, _ in sizes]
        self.sizes = np.array([size for _, size in sizes], dtype=np.int64)[:, None]

    def count(self, ids: np.ndarray | list[np.ndarray]) -> dict[str, int]:
        """{feature: codes outside its table} of an `[F, M]` id matrix in the features' order (none: left out)."""
        if not len(self.rows) or not len(ids):
            return {}
        codes = np.asarray(ids)[self.rows]
        bad = np.count_nonzero(outside_modulo_table(codes, self.sizes), axis=1)
        return {self.names[i]: int(bad[i]) for i in np.flatnonzero(bad)}


def _check_ages(times: np.ndarray, owner: np.ndarray, counts: np.ndarray, used: np.ndarray, req_ms: int) -> None:
    """Refuse (422, naming the event) a timestamp so far before the request time that its age in ms overflows
    int64: the age would wrap around and the event pass as one from the future."""
    oldest = req_ms - INT64_MAX  # the oldest timestamp whose age fits
    if oldest <= -(2**63):  # every int64 timestamp's age fits
        return
    if (bad := times < oldest).any():
        k = int(np.flatnonzero(bad)[0])
        user = int(owner[k])
        j = k - int(counts[:user].sum())
        raise RequestError(
            f"users[{int(used[user])}].sequence.timestamps_ms[{j}]: {int(times[k])} is more than 2**63-1 ms before "
            f"the request time {req_ms}"
        )


def _user_rows(users: list[dict[str, Any]], cand_users: list[Any], columnar: bool) -> tuple[np.ndarray, np.ndarray]:
    """(the users with candidates, in request order; each candidate's position among them), refusing
    duplicate user ids and candidates of unknown users."""
    position: dict[str, int] = {}
    for i, u in enumerate(users):
        if (first := position.setdefault(str(u["id"]), i)) != i:
            raise RequestError(f"users[{i}].id: duplicate user id {u['id']!r} (also users[{first}])")
    ref = _codes(cand_users, lambda u: position.get(str(u), -1))
    if (ref < 0).any():
        i = int(np.flatnonzero(ref < 0)[0])
        where = candidate_field(columnar, "user", i)
        raise RequestError(f"{where}: unknown user {cand_users[i]!r}; not among users[].id")
    referenced = np.zeros(len(users), dtype=bool)
    referenced[ref] = True
    return np.flatnonzero(referenced), (np.cumsum(referenced) - 1)[ref]


def _id_rows(columns: Mapping[str, Sequence[int]], names: tuple[str, ...], label: str) -> np.ndarray | list[np.ndarray]:
    """The named id columns as one `[F, N]` int64 matrix (one conversion for all; hashed in one call), or
    no columns. Raises RequestError naming `label.<feature>` for an id outside the int64 range."""
    if not names:
        return []
    try:
        return np.array([columns[name] for name in names], dtype=np.int64)
    except OverflowError:
        name = next(n for n in names if not _fits_int64(columns[n]))
        raise RequestError(f"{label}.{name}: an id outside the int64 range") from None


def _fits_int64(values: Sequence[int]) -> bool:
    try:
        np.asarray(values, dtype=np.int64)
    except OverflowError:
        return False
    return True


def _dense_columns(columns: Mapping[str, Sequence[float]], names: tuple[str, ...]) -> list[np.ndarray]:
    """The named dense columns as float64 arrays (the encoder stores them as float32)."""
    return [np.asarray(columns[name], dtype=np.float64) for name in names]


def _codes(values: list[Any], code: Callable[[Any], int]) -> np.ndarray:
    """`[code(v) for v in values]` as int64, calling `code` once per distinct value (a request repeats a
    few users and view types over hundreds of candidates)."""
    if values and values.count(values[0]) == len(values):  # one user, one view type: no dict per value
        return np.full(len(values), code(values[0]), dtype=np.int64)
    table = {v: code(v) for v in set(values)}
    return np.fromiter(map(table.__getitem__, values), dtype=np.int64, count=len(values))
