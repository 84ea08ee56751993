"""Fixed, data-independent feature encoding: raw ids and strings to table rows.

Hashing (not a vocabulary) means a run trained on one data directory can score any other one,
and the serving path needs nothing but the config to encode a request.
"""

from __future__ import annotations

import hashlib

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised, on an array of at least one dimension: uint64 array arithmetic
    wraps by design, silently (only numpy scalars warn on overflow)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def hash_ids(values: np.ndarray, size: int | np.ndarray) -> np.ndarray:
    """Map raw int64 ids to rows in [0, size) with a fixed mixing hash.

    `size` may be an array that broadcasts against `values` (e.g. one size per column of a matrix).
    """
    raw = np.ascontiguousarray(values, dtype=np.int64).view(np.uint64)  # at least 1-D
    return (_splitmix64(raw) % np.asarray(size, dtype=np.uint64)).view(np.int64)  # rows < size < 2**63


def table_rows(values: np.ndarray, size: int | np.ndarray, modulo: bool | np.ndarray) -> np.ndarray:
    """Raw int64 ids to table rows: `hash_ids`, or where `modulo` (a feature's `encoding`; it broadcasts like
    `size`) the id itself modulo `size`, non-negative (small integer codes keep apart; -1 is the last row)."""
    if np.ndim(modulo) == 0:
        return np.mod(np.asarray(values, dtype=np.int64), size) if modulo else hash_ids(values, size)
    return np.where(modulo, np.mod(np.asarray(values, dtype=np.int64), size), hash_ids(values, size))


def outside_modulo_table(codes: np.ndarray, size: int | np.ndarray) -> np.ndarray:
    """Where codes fall outside what an `encoding: modulo` table of `size` rows keeps apart, [-1, size) (-1, a
    missing value, takes the last row): `table_rows` folds such a code onto another code's row."""
    return (codes < -1) | (codes >= size)


def hash_strings(values: list[str] | np.ndarray) -> np.ndarray:
    """Stable int64 ids for strings (first 8 bytes of blake2b), for adapters with string columns."""
    uniq, inverse = np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)
    ids = np.fromiter(
        (int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little", signed=True) for s in uniq),
        dtype=np.int64,
        count=len(uniq),
    )
    return ids[inverse]
