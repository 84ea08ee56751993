"""The report page: the runs (summary, curves overlaid, the per-surface × task table with the runs side by
side, reliability diagrams), then each experiment's arms side by side with their intervals."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from unictr.report import figures
from unictr.report.gather import ExperimentView, RunView, gather
from unictr.report.html import esc, fmt, image, markdown, page, table

# (metrics key, column title, format) of the per-surface × task table; oracle columns only where known
METRICS = (
    ("auc", "AUC", ".4f"), ("oracle_auc", "oracle AUC", ".4f"), ("ne", "NE", ".4f"),
    ("calibration_ratio", "calibration ratio", ".3f"), ("ece", "ECE", ".4f"),
)  # log loss is left to NE (log loss over the base rate's entropy): two runs' columns then fit a screen


def write_report(paths: list[Path], out: Path, data: Path | None = None, threads: int | None = None) -> Path:
    """Write the report of `paths` (runs or experiment directories; the first is the subject, the others
    compared with it) to `out` as one self-contained HTML file; with `data`, runs are scored on its eval
    split for their tables and reliability diagrams."""
    views = gather(paths, data, threads)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(views), encoding="utf-8")
    return out


def render(views: list[RunView | ExperimentView]) -> str:
    """The page of `views`."""
    runs = [v for v in views if isinstance(v, RunView)]
    experiments = [v for v in views if isinstance(v, ExperimentView)]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [f'<p class="note">Written {esc(stamp)} by <code>unictr report</code> from '
            + ", ".join(f"<code>{esc(v.path)}</code>" for v in views) + ".</p>"]
    if runs:
        body += run_sections(runs)
    for exp in experiments:
        body += experiment_section(exp)
    return page("unictr report: " + " vs ".join(v.label for v in views), body)


def run_sections(runs: list[RunView]) -> list[str]:
    """Summary, curves, metrics table and reliability diagrams of the runs."""
    tasks = list(dict.fromkeys(t for r in runs for t in r.manifest.get("schema", {}).get("tasks", [])))
    out = ["<h2>Runs</h2>", _summary(runs), "<h2>Training curves</h2>",
           image(figures.training_curves(runs), "training loss, learning rate and rows per second by step")]
    if any(e.get("eval_overall") for r in runs for e in r.epochs):
        out += [image(figures.eval_curves(runs, tasks), "eval AUC per task by epoch")]
    notes = [f"{r.label}: {r.unreadable_lines} unreadable line(s) of events.jsonl skipped"
             for r in runs if r.unreadable_lines]
    out += [f'<p class="note">{esc(n)}</p>' for n in notes]
    out += ["<h2>Metrics per surface × task</h2>", *_sources(runs), metrics_table(runs), "<h2>Reliability</h2>"]
    drawn = [dict(figures.reliability(run)) for run in runs]
    for surface in dict.fromkeys(s for d in drawn for s in d):
        out += [f"<h3>{esc(surface)}</h3>", '<div class="side">']
        out += [f"<figure><figcaption>{esc(run.label)}</figcaption>{image(d[surface], f'reliability: {surface}')}"
                "</figure>" for run, d in zip(runs, drawn, strict=True) if surface in d]
        out.append("</div>")
    if not any(drawn):
        out.append('<p class="note">Reliability diagrams need the predictions: pass <code>--data DIR</code> to '
                   "score each run on DIR/eval.</p>")
    return out


def _summary(runs: list[RunView]) -> str:
    rows = []
    for r in runs:
        cfg_train = r.manifest.get("config", {}).get("train", {})
        last = r.epochs[-1] if r.epochs else {}
        rows.append([
            r.label, str(r.path), r.manifest.get("train_state", {}).get("step", "-"),
            f"{len(r.epochs)} / {cfg_train.get('epochs', '-')}",
            f"{sum(e.get('rows', 0) for e in r.epochs):,}",
            fmt(sum(e.get("train_seconds", 0.0) for e in r.epochs), ".1f"),
            fmt(last.get("train_loss")), ", ".join(r.manifest.get("schema", {}).get("surfaces", [])),
            ", ".join(r.manifest.get("schema", {}).get("tasks", [])),
        ])
    head = [[(h, 1) for h in ("run", "directory", "step", "epochs", "rows trained", "train s",
                              "last epoch loss", "surfaces", "tasks")]]
    return table(head, rows, left=2)


def _sources(runs: list[RunView]) -> list[str]:
    return [f'<p class="note">{esc(r.label)}: {esc(r.metrics_source)}.</p>' for r in runs]


def metrics_table(runs: list[RunView]) -> str:
    """Rows surface × task (then overall), a column group per metric with a column per run in it."""
    slices = list(dict.fromkeys(s for r in runs if r.metrics for s in _slices(r.metrics)))
    if not slices:
        return '<p class="note">No evaluation recorded (the run had no eval split); pass --data DIR.</p>'
    blocks = [{s: _block(r.metrics, *s) for s in slices} if r.metrics else {} for r in runs]
    shown = [m for m in METRICS if any((b.get(s) or {}).get(m[0]) is not None for b in blocks for s in slices)]
    k = len(runs)
    head = [[("surface", 1), ("task", 1), ("n", k), *((title, k) for _, title, _ in shown)]]
    if k > 1:
        head.append([("", 1), ("", 1), *((r.label, 1) for _ in range(len(shown) + 1) for r in runs)])
    rows = []
    for s in slices:
        cells: list[Any] = [*s, *(f"{b[s]['n']:,}" if b.get(s) else "-" for b in blocks)]
        for key, _, spec in shown:
            cells += [fmt((b.get(s) or {}).get(key), spec) for b in blocks]
        rows.append(cells)
    return table(head, rows, left=2, row_class=["overall" if s[0] == "overall" else "" for s in slices])


def _slices(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [(s, t) for s, tasks in metrics.get("surfaces", {}).items() for t in tasks if t != "view_types"]
    return rows + [("overall", t) for t in metrics.get("overall", {})]


def _block(metrics: dict[str, Any], surface: str, task: str) -> dict[str, Any] | None:
    where = metrics.get("overall", {}) if surface == "overall" else metrics.get("surfaces", {}).get(surface, {})
    return where.get(task)


def experiment_section(exp: ExperimentView) -> list[str]:
    """The experiment's own report under its label (`report_markdown`: arms side by side, the AUC differences with their
    bootstrap intervals, cost) with its AUC plot embedded."""
    from unictr.experiment.report import report_markdown

    text = report_markdown(exp.report).replace("# Experiment: ", f"# Experiment {exp.label}: ", 1)
    return [markdown(text, {"auc.png": figures.experiment_plot(exp.report)})]
