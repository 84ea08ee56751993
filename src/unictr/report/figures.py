"""The report's images as base64 PNG (embedded as `data:` URLs, so the page needs no other file): training
and evaluation curves of one or more runs overlaid, and the project's own reliability diagrams
(`unictr.plots`) and experiment plot (`experiment.report.plot_report`), drawn into a temporary directory.

PNG rather than inline SVG: matplotlib's SVG carries namespace URLs, and the page holds no URL at all.
"""

from __future__ import annotations

import base64
import io
import tempfile
from pathlib import Path
from typing import Any

from unictr.report.gather import RunView

DPI = 90


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _encode(fig: Any) -> str:
    """`fig` as base64 PNG (no software tag), closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    _pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _file(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def training_curves(runs: list[RunView]) -> str:
    """Training loss, LR and rows/s against the step, a colour per run: a line through the `events.jsonl`
    step lines, a marker at each epoch's end (all a run shorter than the logging interval has). Loss and
    rows/s are the epoch's means so far, as the run logs them, so each epoch's line starts afresh."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.4), squeeze=False)
    panels = (("loss", "train_loss", "training loss (the epoch's running mean)"), ("lr", None, "learning rate"),
              ("rows_per_s", "rows_per_s", "rows / s (the epoch's running mean)"))
    for ax, (key, epoch_key, title) in zip(axes[0], panels, strict=True):
        for i, run in enumerate(runs):
            color = f"C{i}"
            points = [(e["step"], e[key]) for e in run.steps if e.get(key) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), "-", color=color, label=run.label)
            ends = [(e["step"], e[epoch_key]) for e in run.epochs if epoch_key and e.get(epoch_key) is not None]
            if ends:
                ax.plot(*zip(*ends, strict=True), "o", color=color, label=None if points else run.label)
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, "no step lines in events.jsonl", ha="center", va="center", transform=ax.transAxes)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return _encode(fig)


def eval_curves(runs: list[RunView], tasks: list[str]) -> str:
    """Eval AUC (overall) per task after each epoch, a line per run."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for i, run in enumerate(runs):
            points = [(e["epoch"], e["eval_overall"][task]) for e in run.epochs
                      if (e.get("eval_overall") or {}).get(task) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), "o-", color=f"C{i}", label=run.label)
        ax.set(title=f"{task}: eval AUC (overall)", xlabel="epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return _encode(fig)


def reliability(run: RunView) -> list[tuple[str, str]]:
    """(surface, base64 PNG) of the run's reliability diagrams (`unictr.plots`); none without scores."""
    if run.scored is None or run.schema is None:
        return []
    from unictr.plots import reliability_diagrams

    with tempfile.TemporaryDirectory() as tmp:
        paths = reliability_diagrams(run.schema, run.scored, tmp)
        return [(p.stem.removeprefix("reliability_"), _file(p)) for p in paths]


def experiment_plot(report: dict[str, Any]) -> str:
    """The experiment's AUC-per-surface bars (`plot_report`, the same as its auc.png)."""
    from unictr.experiment.report import plot_report

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "auc.png"
        plot_report(report, path)
        return _file(path)
