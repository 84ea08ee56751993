"""Reliability diagrams: one PNG per surface, a column per task, the surface and each view type drawn.

Equal-mass bins (as `unictr.metrics.ece` uses) on top, the surface's bin counts below, so a reader can
see both where the predictions sit and how much data each point rests on. Uses matplotlib's Agg
backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from unictr.data.batch import Schema
from unictr.metrics import calibration_ratio, ece, reliability_bins

if TYPE_CHECKING:
    from unictr.train.evaluate import Scored

BINS = 15


def reliability_diagrams(schema: Schema, scored: Scored, out_dir: str | Path) -> list[Path]:
    """Write `reliability_<surface>.png` for every surface with rows into `out_dir`; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels, applies, probs = scored.labels, scored.label_mask, scored.probs
    surface, view_key = scored.surface, scored.view_key
    paths = []
    for si, sname in enumerate(schema.surfaces):
        tasks = [ti for ti, on in enumerate(schema.task_mask[si]) if on]
        if not tasks or not (surface == si).any():
            continue
        views = [(ki, v) for ki, (s, v) in enumerate(schema.view_keys) if s == sname]
        fig, axes = plt.subplots(
            2, len(tasks), figsize=(4.2 * len(tasks), 6.4), squeeze=False, gridspec_kw={"height_ratios": [3, 1]}
        )
        for col, ti in enumerate(tasks):
            top, bottom = axes[0, col], axes[1, col]
            rows = (surface == si) & applies[:, ti]
            y, p = labels[rows, ti], probs[rows, ti]
            mean_p, mean_y, count = reliability_bins(y, p, BINS)
            top.plot(mean_p, mean_y, "o-", color="black", label=f"{sname} (all)")
            for ki, vname in views:
                vrows = rows & (view_key == ki)
                if vrows.any():
                    vp, vy, _ = reliability_bins(labels[vrows, ti], probs[vrows, ti], BINS)
                    top.plot(vp, vy, ".--", alpha=0.8, label=vname)
            hi = float(max(mean_p.max(), mean_y.max())) * 1.05
            top.plot([0, hi], [0, hi], ":", color="grey", linewidth=1)
            top.set(xlim=(0, hi), ylim=(0, hi), xlabel="mean predicted", ylabel="observed rate")
            top.set_title(f"{schema.tasks[ti]}: ECE {ece(y, p, BINS):.4f}, ratio {calibration_ratio(y, p):.3f}")
            top.legend(fontsize=7, loc="upper left")
            bars = bottom.bar(np.arange(count.size), count, color="steelblue")
            bottom.bar_label(bars, labels=[f"{c:,}" for c in count], fontsize=6, rotation=90, padding=2)
            bottom.set(xlabel=f"equal-mass bin (of {BINS})", ylabel="rows", ylim=(0, count.max() * 1.6 + 1))
            bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.suptitle(f"reliability: {sname} ({int((surface == si).sum()):,} rows)")
        fig.tight_layout()
        path = out_dir / f"reliability_{sname}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
