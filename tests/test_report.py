"""`unictr report`: one self-contained HTML page (tables of every surface × task, curves and reliability
diagrams as embedded PNGs, an experiment's arms with their intervals), no URL in it, every text escaped;
and the page as headless Chromium renders it (tables in the DOM, every image decoded, no error)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.fixtures import small_config, train_small_run
from unictr.checkpoint import read_manifest
from unictr.cli import app
from unictr.config import Config
from unictr.data.batch import Schema
from unictr.data.reader import load_split
from unictr.experiment.arms import ArmRun
from unictr.experiment.report import build_report
from unictr.report import ReportError, write_report
from unictr.train.evaluate import evaluate_split

runner = CliRunner()
ODD = 'r<b>&"x'  # a run directory whose name must be escaped
COMMAND = "unictr experiment unify <script>alert(1)</script>"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)


class Page(HTMLParser):
    """The tables (rows of cell texts), image sources and tag names of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self.tags: set[str] = set()
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs)["src"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def runs(sim_config: Config, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny trained run, a copy of it under an odd name, and an experiment directory with two arms."""
    root = tmp_path_factory.mktemp("report")
    cfg = small_config(sim_config)
    data, run = train_small_run(cfg, root)
    odd = shutil.copytree(run, root / ODD)
    schema = Schema.from_config(cfg)
    eval_b = load_split(data / "eval", schema, cfg.data)
    rng = np.random.default_rng(0)
    arms = {arm: {0: ArmRun(rng.uniform(0.05, 0.95, (eval_b.num_rows, len(cfg.tasks))), 1.0, 100)}
            for arm in ("unified", "separate")}
    report = build_report(schema, eval_b, arms, n_boot=20) | {"seeds": [0], "n_boot": 20, "command": COMMAND}
    (root / "exp").mkdir()
    (root / "exp" / "report.json").write_text(json.dumps(report))
    return {"root": root, "data": data, "run": run, "odd": odd, "exp": root / "exp"}


def _no_url(text: str) -> None:
    low = text.lower()
    assert "http://" not in low and "https://" not in low and "url(" not in low and "<link" not in low
    assert "<script" not in low and " src=" not in low.replace(' src="data:image/png;base64,', "")


def _metrics_table(page: Page) -> list[list[str]]:
    return next(t for t in page.tables if t[0][:2] == ["surface", "task"] and "ECE" in t[0])


def test_a_run_compared_with_another_scored_on_the_eval_split(runs: dict[str, Path], sim_config: Config) -> None:
    out = write_report([runs["run"], runs["odd"]], runs["root"] / "both.html", data=runs["data"])
    text = out.read_text()
    page = Page(text)
    _no_url(text)
    assert "&lt;b&gt;&amp;&quot;x" in text and ODD not in text  # the odd name, escaped everywhere
    table = _metrics_table(page)
    head = table[0]
    assert [h for h in head if h] == ["surface", "task", "n", "AUC", "NE", "calibration ratio", "ECE"]
    assert table[1][2:] == ["run", ODD] * 5  # a column per run under each metric
    cfg = small_config(sim_config)
    expected = [(s, t) for si, s in enumerate(cfg.surface_names) for ti, t in enumerate(cfg.task_names)
                if Schema.from_config(cfg).task_mask[si][ti]] + [("overall", t) for t in cfg.task_names]
    assert [tuple(r[:2]) for r in table[2:]] == expected
    from unictr.checkpoint import load_model

    truth = evaluate_split(load_model(runs["run"])[0], runs["data"] / "eval")["surfaces"]["search"]["click"]
    row = next(r for r in table[2:] if r[:2] == ["search", "click"])
    assert row[2:4] == [f"{truth['n']:,}"] * 2
    assert row[4:6] == [f"{truth['auc']:.4f}"] * 2 and row[10:12] == [f"{truth['ece']:.4f}"] * 2
    # two curve images, then a reliability diagram per surface and run, every one a PNG
    assert len(page.images) == 2 + 2 * len(cfg.surface_names)
    for src in page.images:
        assert base64.b64decode(src.removeprefix("data:image/png;base64,"))[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_data_the_table_is_the_manifest_s_and_says_how_to_get_diagrams(runs: dict[str, Path]) -> None:
    text = write_report([runs["run"]], runs["root"] / "one.html").read_text()
    page = Page(text)
    recorded = read_manifest(runs["run"] / "checkpoints" / (runs["run"] / "checkpoints" / "LATEST").read_text().strip())
    row = next(r for r in _metrics_table(page)[1:] if r[:2] == ["overall", "save"])
    assert row[3] == f"{recorded['metrics']['overall']['save']['auc']:.4f}"
    assert len(page.images) == 2 and "pass <code>--data DIR</code>" in text
    assert "the run&#x27;s last evaluation (its manifest)" in text


def test_a_line_cut_short_in_events_jsonl_is_counted_not_fatal(runs: dict[str, Path], tmp_path: Path) -> None:
    run = shutil.copytree(runs["run"], tmp_path / "cut")
    with (run / "events.jsonl").open("a") as f:
        f.write('{"event": "step", "st')
    text = write_report([run], tmp_path / "cut.html").read_text()
    assert "cut: 1 unreadable line(s) of events.jsonl skipped" in text and len(Page(text).images) == 2


def test_an_experiment_shows_its_arms_side_by_side_with_intervals(runs: dict[str, Path]) -> None:
    text = write_report([runs["exp"]], runs["root"] / "exp.html").read_text()
    page = Page(text)
    _no_url(text)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # the command, escaped
    auc = next(t for t in page.tables if "unified − separate [95% CI]" in t[0])
    assert auc[0][:6] == ["surface", "task", "n", "positives", "unified", "separate"]
    report = json.loads((runs["exp"] / "report.json").read_text())
    row = next(r for r in auc[1:] if r[:2] == ["search", "click"])
    cell = report["arms"]["unified"]["surfaces"]["search"]["click"]
    assert row[2:4] == [f"{cell['n']:,}", f"{cell['positives']:,}"] and 0 < cell["positives"] < cell["n"]
    lo, hi = report["auc_diff_ci"]["search"]["click"]
    assert row[-1] == f"{report['auc_diff']['search']['click']:+.4f} [{lo:+.4f}, {hi:+.4f}]"
    assert len(page.images) == 1  # the AUC bars, embedded


def test_cli_takes_several_runs_after_compare_and_refuses_what_is_not_a_run(runs: dict[str, Path]) -> None:
    out = runs["root"] / "cli.html"
    done = runner.invoke(app, ["report", str(runs["run"]), "--compare", str(runs["odd"]), str(runs["exp"]),
                               "--out", str(out)])
    assert done.exit_code == 0, done.output
    text = out.read_text()
    assert "<h2>Experiment exp: unified vs separate</h2>" in text and _metrics_table(Page(text))[1][2:4] == ["run", ODD]
    bad = runner.invoke(app, ["report", str(runs["data"]), "--out", str(out)])
    assert bad.exit_code == 2 and f"{runs['data']}: not a unictr run" in bad.output
    (runs["root"] / "broken").mkdir()
    (runs["root"] / "broken" / "report.json").write_text("{")
    with pytest.raises(ReportError, match=r"broken/report\.json: not valid JSON"):
        write_report([runs["root"] / "broken"], out)
    with pytest.raises(ReportError, match=r"nowhere: no such directory"):
        write_report([runs["run"], runs["root"] / "nowhere"], out)


# the test's copy of the page records, once loaded, what Chromium made of it: errors, tables, decoded images
PROBE = """<script>
window.__errors = [];
addEventListener("error", e => window.__errors.push(String(e.message || (e.target && e.target.tagName))), true);
addEventListener("load", () => {
  const p = document.createElement("pre"); p.id = "probe";
  const imgs = Array.from(document.images);
  p.textContent = JSON.stringify({tables: document.querySelectorAll("table").length, images: imgs.length,
    decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length, errors: window.__errors});
  document.body.appendChild(p);
});
</script>"""


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp / 'profile'}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)")
def test_chromium_renders_the_tables_and_decodes_every_image(runs: dict[str, Path], tmp_path: Path) -> None:
    page = write_report([runs["run"], runs["odd"], runs["exp"]], tmp_path / "report.html", data=runs["data"])
    text = page.read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("<head>", "<head>\n" + PROBE, 1))
    dom = _chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()).stdout
    found = Page(dom)
    assert len(found.tables) == len(Page(text).tables) >= 4 and "ECE" in _metrics_table(found)[0]
    probe = json.loads(unescape(dom.split('<pre id="probe">', 1)[1].split("</pre>", 1)[0]))
    assert probe["errors"] == [] and probe["images"] == len(Page(text).images) == 9
    assert probe["decoded"] == probe["images"]
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, "--window-size=1280,1600", f"--screenshot={shot}", page.as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
