"""A score request (the JSON body the service takes, docs/serving.md) made from canonical rows: the
quickstart's example request, and tests that score a split through the service."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from unictr.config import Config


def request_from_rows(
    table: pa.Table, cfg: Config, surface: str, request_time_ms: int | None = None, max_requests: int | None = None
) -> dict[str, Any]:
    """A request scoring the rows of `surface` (of its first `max_requests` canonical requests, default all):
    one request user per canonical request id. `request_time_ms` defaults to the newest row's timestamp."""
    keys = cfg.data
    table = table.filter(pc.equal(table[keys.surface], surface))
    if max_requests is not None:
        first = pc.unique(table[keys.request_id])[:max_requests]
        table = table.filter(pc.is_in(table[keys.request_id], value_set=first))
    rows = table.to_pylist()
    if not rows:
        raise ValueError(f"no rows of surface {surface!r} to make a request from")
    user_cols = cfg.feature_names("user", "categorical") + cfg.feature_names("user", "dense")
    cand_cols = cfg.feature_names("candidate", "categorical") + cfg.feature_names("candidate", "dense")
    seq = cfg.sequence
    users: dict[str, dict[str, Any]] = {}
    candidates = []
    for r in rows:
        uid = f"req-{r[keys.request_id]}"
        if uid not in users:
            users[uid] = {"id": uid, "features": {n: r[n] for n in user_cols}}
            if seq is not None:
                users[uid]["sequence"] = {
                    "items": r[seq.item_column], "actions": r[seq.action_column], "timestamps_ms": r[seq.time_column],
                    **{c: r[c] for c in seq.side_features},
                }
        candidates.append({"user": uid, "features": {n: r[n] for n in cand_cols}, "view_type": r[keys.view_type]})
    time_ms = request_time_ms if request_time_ms is not None else max(r[keys.timestamp] for r in rows)
    return {"request_time_ms": int(time_ms), "users": list(users.values()), "candidates": candidates}
