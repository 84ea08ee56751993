"""Scoring a split and slicing metrics by surface, view type and task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unictr.data.batch import Batch, Schema
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


def sliced_metrics(schema: Schema, b: Batch, probs: np.ndarray) -> dict[str, Any]:
    """The metrics.json contract: per surface × task (with per view type), and overall per task."""
    labels = b.labels.numpy()
    applies = b.label_mask.numpy()
    surface = b.surface.numpy()
    view_key = b.view_key.numpy()
    p_true = None if b.p_true is None else b.p_true.numpy()

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
    """`sliced_metrics` of the model's predictions; with `plots`, also one reliability diagram per surface there."""
    probs = predict(model, b, device=device)
    if plots is not None:
        from unictr.plots import reliability_diagrams  # matplotlib only when asked for

        reliability_diagrams(model.schema, b, probs, plots)
    return sliced_metrics(model.schema, b, probs)
