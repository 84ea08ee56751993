"""Built-in simulator: a synthetic multi-surface ads world written as canonical Parquet.

The world has real, learnable structure so that every part of the model has something to find:

* users with a latent interest over `NUM_TOPICS` topics (a few dominant), ads with a topic, a
  format and a latent quality; the same user-interest x ad-topic affinity and ad-quality terms
  drive engagement on every surface (with surface-specific weights), so the small `related`
  surface can borrow from the big ones;
* surface-specific drivers: home_feed follows long-term interest, search follows the query
  topic, related follows the item being viewed;
* a per-request short-term intent topic that shows up only in the newest events of the action
  sequence and boosts candidates of that topic (signal no static feature carries);
* a position effect, view types with different engagement levels per surface (so per-view-type
  calibration matters), and correlated click / save / long_click tasks with their true
  probabilities.

Everything is vectorised numpy drawn from one seeded generator, and the Parquet writer options are
fixed, so the same seed gives byte-identical files. See docs/data.md for the layout.

The package: `world` (constants, surfaces, users, ads), `traffic` (requests and their action
sequences), `impressions` (candidates, true probabilities, labels; the world drawn from a seed); this
module checks the config, lays the world out in canonical columns and writes it through
`unictr.data.canonical`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from unictr.config import Config, DataSpec, SequenceSpec
from unictr.data.canonical import ParquetOptions, write_meta, write_split
from unictr.data.simulate.impressions import Drift, World, draw_world
from unictr.data.simulate.world import NUM_ACTIONS, NUM_ADS, NUM_TOPICS, SURFACES, VIEW_TYPES

GENERATOR = "unictr.data.simulate"
VERSION = 1

PART_ROWS = 500_000  # most rows per Parquet part
PARQUET = ParquetOptions(compression="zstd", compression_level=3, row_group_size=32_768)  # shards to ranks by row group
TASKS = ("click", "save", "long_click")

# Columns the simulator writes for the config's features: name -> (kind, side).
FEATURES = {
    "user_id": ("categorical", "user"),
    "user_segment": ("categorical", "user"),
    "user_interest2": ("categorical", "user"),
    "user_country": ("categorical", "user"),
    "user_device": ("categorical", "user"),
    "user_activity": ("dense", "user"),
    "ad_id": ("categorical", "candidate"),
    "advertiser_id": ("categorical", "candidate"),
    "ad_topic": ("categorical", "candidate"),
    "ad_format": ("categorical", "candidate"),
    "position": ("categorical", "candidate"),
    "hour": ("categorical", "candidate"),
    "query_topic": ("categorical", "candidate"),
    "context_topic": ("categorical", "candidate"),
    "ad_age_days": ("dense", "candidate"),
    "query_ad_match": ("categorical", "candidate"),
    "context_item_id": ("categorical", "candidate"),
}
SEQUENCE_ITEM_FEATURE = "ad_id"
SEQUENCE_TOPIC_COLUMN = "seq_topic"  # each event item's ad_topic: a sequence side feature


def _columns(config: Config | None) -> tuple[DataSpec, SequenceSpec]:
    """Key and sequence column names, after checking the config describes data this world can write."""
    if config is None:
        return DataSpec(), SequenceSpec(item_feature=SEQUENCE_ITEM_FEATURE)
    problems = []
    for f in config.features:
        if f.name not in FEATURES:
            problems.append(f"feature {f.name!r} is not simulated (known: {sorted(FEATURES)})")
        elif FEATURES[f.name] != (f.kind, f.side):
            problems.append(f"feature {f.name!r} is simulated as {FEATURES[f.name]}, config says {(f.kind, f.side)}")
    views = {s.name: set(s.view_types) for s in config.surfaces}
    for s in SURFACES:
        if not set(VIEW_TYPES) <= views.get(s.name, set()):
            problems.append(f"surface {s.name!r} with view types {list(VIEW_TYPES)} must be in the config")
    problems += [f"task label {t.label!r} is not simulated (known: {list(TASKS)})"
                 for t in config.tasks if t.label not in TASKS]
    seq = config.sequence
    if seq is not None and (seq.item_feature != SEQUENCE_ITEM_FEATURE or seq.num_actions < NUM_ACTIONS):
        problems.append(f"sequence must use item_feature {SEQUENCE_ITEM_FEATURE!r} and num_actions >= {NUM_ACTIONS}")
    if problems:
        raise ValueError("config does not match the simulator:\n  " + "\n  ".join(problems))
    return config.data, seq or SequenceSpec(item_feature=SEQUENCE_ITEM_FEATURE)


def _table(world: World, first: int, last: int, keys: DataSpec, seq_spec: SequenceSpec) -> pa.Table:
    """Rows [first, last) (request-aligned) as an Arrow table in the canonical layout."""
    req, users, seq = world.requests, world.users, world.sequences
    owner = np.repeat(np.arange(len(req.user)), req.num_candidates)[first:last]
    user = req.user[owner]
    names = [s.name for s in SURFACES]

    def strings(index: np.ndarray, values: list[str]) -> pa.Array:
        return pa.DictionaryArray.from_arrays(pa.array(index, pa.int32()), pa.array(values)).cast(pa.string())

    length = (seq.start[1:] - seq.start[:-1])[owner]
    offsets = np.concatenate([[0], np.cumsum(length)]).astype(np.int32)
    gather = np.repeat(seq.start[owner] - offsets[:-1], length) + np.arange(offsets[-1])

    def lists(values: np.ndarray) -> pa.Array:
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[gather], pa.int64()))

    user_side = {
        "user_id": users.ids[user],
        "user_segment": users.segment[user],
        "user_interest2": users.second[user],
        "user_country": users.country[user],
        "user_device": users.device[user],
        "user_activity": users.activity_feature[user],
    }
    row_side = {k: v[first:last] for k, v in world.rows.items()}
    columns = {
        keys.request_id: pa.array(owner + 1, pa.int64()),  # ids increase with time
        keys.user_id: pa.array(user_side.pop("user_id"), pa.int64()),
        keys.timestamp: pa.array(req.timestamp[owner], pa.int64()),
        keys.surface: strings(req.surface[owner], names),
        keys.view_type: strings(req.view[owner], list(VIEW_TYPES)),
        **{k: pa.array(v) for k, v in user_side.items()},
        **{k: pa.array(v) for k, v in row_side.items()},
        seq_spec.item_column: lists(seq.item),
        seq_spec.action_column: lists(seq.action),
        seq_spec.time_column: lists(seq.ts),
        SEQUENCE_TOPIC_COLUMN: lists(seq.topic),
    }
    return pa.table(columns)


def _part_bounds(row_start: np.ndarray, first: int, last: int) -> list[tuple[int, int]]:
    """Split rows [first, last) into request-aligned parts of at most PART_ROWS rows."""
    bounds = [first]
    while bounds[-1] < last:
        target = bounds[-1] + PART_ROWS
        bounds.append(last if target >= last else int(row_start[np.searchsorted(row_start, target, "right") - 1]))
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _auc(label: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC by the rank-sum formula (scores are continuous, so ties are negligible)."""
    positives = int(label.sum())
    negatives = len(label) - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = np.empty(len(score))
    ranks[np.argsort(score, kind="stable")] = np.arange(1, len(score) + 1)
    return float((ranks[label == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _surface_stats(world: World) -> dict[str, dict]:
    """Per-surface (and per-view-type) volume, label rates and the oracle click AUC."""
    req = world.requests
    owner = np.repeat(np.arange(len(req.user)), req.num_candidates)
    surface, view = req.surface[owner], req.view[owner]

    def rates(mask: np.ndarray) -> dict:
        return {"rows": int(mask.sum()), **{f"{t}_rate": round(float(world.rows[t][mask].mean()), 6) for t in TASKS}}

    stats = {}
    for i, s in enumerate(SURFACES):
        on = surface == i
        auc = _auc(world.rows["click"][on], world.rows["p_true_click"][on]) if on.any() else None
        stats[s.name] = {
            **rates(on),
            "requests": int((req.surface == i).sum()),
            "oracle_click_auc": None if auc is None else round(auc, 6),
            "view_types": {v: rates(on & (view == j)) for j, v in enumerate(VIEW_TYPES) if (on & (view == j)).any()},
        }
    return stats


def _is_simulation(out: Path) -> bool:
    """Whether `out/meta.json` was written by this simulator (so `out` may be replaced)."""
    try:
        return json.loads((out / "meta.json").read_text()).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def simulate(
    rows: int,
    seed: int,
    out: Path,
    eval_fraction: float = 0.2,
    config: Config | None = None,
    calib_fraction: float = 0.0,
    drift: Drift | None = None,
) -> dict:
    """Simulate `rows` impressions and write them under `out` (train/, [calib/,] eval/, meta.json).

    The eval split is the last `eval_fraction` of requests in time order; with `calib_fraction` > 0 the
    `calib_fraction` of requests just before it form the calib split (fitting post-hoc calibration on
    rows after training and before evaluation). `config`, when given, is
    checked against the simulated columns and names the key and sequence columns. `drift` makes one
    surface's click rate drift day by day (`Drift`; recorded in the meta). An existing `out`
    is replaced only if it is empty or holds a previous simulation. Returns the meta dict.
    """
    if rows < 100:
        raise ValueError(f"rows must be at least 100 to split train/eval, got {rows}")
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if not 0.0 <= calib_fraction < 1.0 - eval_fraction:
        raise ValueError(f"calib_fraction must be in [0, 1 - eval_fraction), got {calib_fraction}")
    out = Path(out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or _is_simulation(out))):
        raise FileExistsError(f"{out}: exists and is not a previous simulation; refusing to replace it")
    keys, seq_spec = _columns(config)

    world = draw_world(rows, seed, drift)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; `out` is ordinary data
    try:
        meta_splits = {
            split: _write_split(tmp, split, world, bounds, keys, seq_spec)
            for split, bounds in _splits(world, rows, eval_fraction, calib_fraction).items()
        }
        meta = {
            "generator": GENERATOR,
            "version": VERSION,
            "seed": seed,
            "rows": rows,
            "requests": len(world.requests.user),
            "eval_fraction": eval_fraction,
            "calib_fraction": calib_fraction,
            "users": len(world.users.ids),
            "ads": NUM_ADS,
            "topics": NUM_TOPICS,
            "splits": meta_splits,
            "surfaces": _surface_stats(world),
            **({"drift": {"surface": drift.surface, "click_logit_per_day": drift.per_day}} if drift else {}),
        }
        write_meta(tmp, meta)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _splits(
    world: World, rows: int, eval_fraction: float, calib_fraction: float
) -> dict[str, tuple[int, int, int]]:
    """(first row, end row, requests) per split, in time order: eval is the last `eval_fraction` of
    requests, calib (when `calib_fraction` > 0) the `calib_fraction` before it, train the rest."""
    req = world.requests
    n_requests = len(req.user)
    n_eval = min(max(round(n_requests * eval_fraction), 1), n_requests - 1)
    n_calib = min(max(round(n_requests * calib_fraction), 1), n_requests - n_eval - 1) if calib_fraction else 0
    counts = {"train": n_requests - n_eval - n_calib, "calib": n_calib, "eval": n_eval}
    bounds, first = {}, 0
    for split, n in counts.items():
        end = first + n
        if n:
            bounds[split] = (int(req.row_start[first]), int(req.row_start[end]) if end < n_requests else rows, n)
        first = end
    return bounds


def _write_split(
    out: Path, split: str, world: World, bounds: tuple[int, int, int], keys: DataSpec, seq_spec: SequenceSpec
) -> dict:
    """Write rows [first, end) of `bounds` as the split's parts; return the split's `meta.json` entry."""
    first, last, n_req = bounds
    parts = _part_bounds(world.requests.row_start, first, last)
    files = write_split(out, split, (_table(world, a, b, keys, seq_spec) for a, b in parts), PARQUET)
    return {"rows": last - first, "requests": n_req, "files": files}


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished `tmp` to `out`, replacing a previous `out` only once `tmp` is complete."""
    if out.exists():
        old = out.with_name(tmp.name + ".old")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
