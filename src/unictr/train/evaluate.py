"""Scoring a split and slicing metrics by surface, view type and task."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unictr.data.batch import Batch, Schema
from unictr.data.reader import iter_batches
from unictr.data.stream import user_chunks
from unictr.metrics import metric_block
from unictr.model import UnifiedCTR


@torch.inference_mode()
def predict_logits(model: UnifiedCTR, b: Batch, rows: int = 32768, device: torch.device | None = None) -> Tensor:
    """Calibrated logits `[N, T]` (float32, CPU) for every row of `b`, in `b`'s row order, in eval mode."""
    device = device or next(model.parameters()).device
    model.eval()
    outs = [model(chunk.to(device)).float().cpu() for chunk in user_chunks(b, rows)]
    return torch.cat(outs) if outs else torch.zeros((0, len(model.schema.tasks)))


def predict(model: UnifiedCTR, b: Batch, rows: int = 32768, device: torch.device | None = None) -> np.ndarray:
    """Probabilities `[N, T]` for every row of `b`, in `b`'s row order."""
    return torch.sigmoid(predict_logits(model, b, rows, device)).numpy()


@dataclass(frozen=True)
class Scored:
    """What the metrics and plots read of a scored split, per row: all that evaluation keeps of a
    streamed split (a few numbers a row, not its features)."""

    probs: np.ndarray  # [N, T] predicted probabilities
    labels: np.ndarray  # [N, T] 0/1
    label_mask: np.ndarray  # [N, T] bool: the task applies to the row's surface
    surface: np.ndarray  # [N] surface index
    view_key: np.ndarray  # [N] (surface, view type) index
    p_true: np.ndarray | None = None  # [N, T] the simulator's true probabilities

    @classmethod
    def of(cls, b: Batch, probs: np.ndarray) -> Scored:
        """`b`'s rows scored with `probs`."""
        p_true = None if b.p_true is None else b.p_true.numpy()
        return cls(probs, b.labels.numpy(), b.label_mask.numpy(), b.surface.numpy(), b.view_key.numpy(), p_true)

    @classmethod
    def concat(cls, parts: list[Scored]) -> Scored:
        """The rows of `parts`, in order."""
        def joined(name: str) -> np.ndarray | None:
            vals = [getattr(p, name) for p in parts]
            return None if any(v is None for v in vals) else np.concatenate(vals)

        return cls(**{f.name: joined(f.name) for f in fields(cls)})


def sliced_metrics(schema: Schema, scored: Scored) -> dict[str, Any]:
    """The metrics.json contract: per surface × task (with per view type), and overall per task."""
    labels, applies, probs, p_true = scored.labels, scored.label_mask, scored.probs, scored.p_true
    surface, view_key = scored.surface, scored.view_key

    def block(rows: np.ndarray, t: int) -> dict[str, Any]:
        rows = rows & applies[:, t]
        return metric_block(labels[rows, t], probs[rows, t], None if p_true is None else p_true[rows, t])

    out: dict[str, Any] = {"surfaces": {}, "overall": {}}
    for si, sname in enumerate(schema.surfaces):
        on_surface = surface == si
        surf: dict[str, Any] = {}
        for ti, tname in enumerate(schema.tasks):
            if not schema.task_mask[si][ti]:
                continue
            surf[tname] = block(on_surface, ti)
        views: dict[str, Any] = {}
        for ki, (ks, vname) in enumerate(schema.view_keys):
            if ks == sname:
                views[vname] = {
                    tname: block(view_key == ki, ti)
                    for ti, tname in enumerate(schema.tasks)
                    if schema.task_mask[si][ti]
                }
        surf["view_types"] = views
        out["surfaces"][sname] = surf
    everywhere = np.ones(len(labels), dtype=bool)
    for ti, tname in enumerate(schema.tasks):
        out["overall"][tname] = block(everywhere, ti)
    return out


def evaluate(
    model: UnifiedCTR, b: Batch, device: torch.device | None = None, plots: Path | None = None
) -> dict[str, Any]:
    """`sliced_metrics` of the model's predictions on the in-memory `b`; with `plots`, also one
    reliability diagram per surface there."""
    return _report(model.schema, Scored.of(b, predict(model, b, device=device)), plots)


# rows per forward pass when scoring a split: small passes stay in cache (KuaiRand's 15k validation rows
# score ~2x faster in passes of 4,096 than in one; docs/performance.md)
SCORE_ROWS = 4096


def evaluate_split(
    model: UnifiedCTR, path: str | Path, device: torch.device | None = None, plots: Path | None = None,
    batch_rows: int = 32768,
) -> dict[str, Any]:
    """`evaluate` of a split streamed from `path` (`score_split`)."""
    return _report(model.schema, score_split(model, path, device, batch_rows), plots)


def score_split(
    model: UnifiedCTR, path: str | Path, device: torch.device | None = None, batch_rows: int = 32768
) -> Scored:
    """The split at `path` scored, streamed in batches of about `batch_rows` rows (scored in forward passes
    of about `SCORE_ROWS`): only the scores, labels and slices of its rows are kept, never its features.
    Rows stay in the split's file order (what `unictr monitor` relies on to line up their timestamps)."""
    parts = [
        Scored.of(b, predict(model, b, SCORE_ROWS, device))
        for b in iter_batches(path, model.schema, model.cfg.data, batch_rows)
    ]
    return Scored.concat(parts)


def _report(schema: Schema, scored: Scored, plots: Path | None) -> dict[str, Any]:
    if plots is not None:
        from unictr.plots import reliability_diagrams  # matplotlib only when asked for

        reliability_diagrams(schema, scored, plots)
    return sliced_metrics(schema, scored)
