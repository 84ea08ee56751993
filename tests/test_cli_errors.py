"""The CLI's error rule (docs/architecture.md, Conventions): a command that meets input the project refuses
ends with exactly one `error:` line on stderr and exit 2; a bug ends with one line and exit 1; Ctrl-C with
exit 130; only `--debug` (or UNICTR_DEBUG=1) adds the traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

from tests.fixtures import small_config, train_small_run
from unictr.cli import app
from unictr.config import Config

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def small_run(sim_config, tmp_path_factory) -> tuple[Config, Path, Path]:
    """(config, data dir, run dir) of a tiny trained run."""
    cfg = small_config(sim_config)
    return cfg, *train_small_run(cfg, tmp_path_factory.mktemp("cli_errors"))


@pytest.fixture(scope="module")
def config_files(small_run, tmp_path_factory) -> dict[str, Path]:
    """The small run's config as YAML, and the same with a negative learning rate."""
    root = tmp_path_factory.mktemp("configs")
    raw = small_run[0].model_dump(mode="json")
    good, bad = root / "good.yaml", root / "bad.yaml"
    good.write_text(yaml.safe_dump(raw))
    raw["train"]["lr"] = -1.0
    bad.write_text(yaml.safe_dump(raw))
    return {"good": good, "bad": bad}


def _error_line(result: Result) -> str:
    """The one line a failed command wrote to stderr, after checking there is nothing else of a traceback."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output, result.output
    return lines[0]


def _cases(small_run, config_files, tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """Each refused input: the command line, and what its error line must name."""
    _, data, run = small_run
    not_parquet = tmp_path / "not_parquet"
    (not_parquet / "train").mkdir(parents=True)
    (not_parquet / "train" / "part-00000.parquet").write_text("request_id,user_id\n1,2\n")
    (tmp_path / "empty_run").mkdir()
    train = ["train", "--config", str(config_files["good"]), "--out", str(tmp_path / "run")]
    return {
        "bad config": (["train", "--config", str(config_files["bad"]), "--data", str(data), "--out",
                        str(tmp_path / "run")], "train.lr: Input should be greater than 0"),
        "missing data": ([*train, "--data", str(tmp_path / "nowhere")], "nowhere"),
        "non-Parquet data": ([*train, "--data", str(not_parquet)], "arquet"),
        "run without manifest": (["eval", "--run", str(tmp_path / "empty_run"), "--data", str(data), "--out",
                                  str(tmp_path / "m.json")], "no manifest"),
        "unknown surface": (["export", "--run", str(run), "--surface", "nope", "--out", str(tmp_path / "x")],
                            "unknown surface 'nope'"),
    }


CASES = ["bad config", "missing data", "non-Parquet data", "run without manifest", "unknown surface"]


@pytest.mark.parametrize("case", CASES)
def test_refused_input_is_one_error_line_and_exit_2(case, small_run, config_files, tmp_path) -> None:
    args, names = _cases(small_run, config_files, tmp_path)[case]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert names in _error_line(result)
    assert not (tmp_path / "run").exists() and not (tmp_path / "x").exists()  # nothing half-written


@pytest.mark.parametrize("case", ["bad config", "run without manifest"])
def test_debug_adds_the_traceback(case, small_run, config_files, tmp_path) -> None:
    """`--debug` and UNICTR_DEBUG=1 print the traceback above the same error line, with the same exit code."""
    args, names = _cases(small_run, config_files, tmp_path)[case]
    for result in (runner.invoke(app, ["--debug", *args]), runner.invoke(app, args, env={"UNICTR_DEBUG": "1"})):
        assert result.exit_code == 2, result.output
        lines = result.stderr.splitlines()
        assert lines[0] == "Traceback (most recent call last):" and len(lines) > 3, result.output
        assert lines[-1].startswith("error: ") and names in lines[-1]
    assert runner.invoke(app, args, env={"UNICTR_DEBUG": "0"}).stderr.count("\n") == 1


def test_a_bug_is_one_line_with_a_hint_and_exit_1(small_run, monkeypatch, tmp_path) -> None:
    _, data, run = small_run

    def broken(run_dir: Path) -> None:
        raise KeyError("features")

    monkeypatch.setattr("unictr.checkpoint.load_model", broken)
    args = ["eval", "--run", str(run), "--data", str(data), "--out", str(tmp_path / "m.json")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert _error_line(result) == "error: KeyError: 'features' (unexpected; rerun with --debug for the traceback)"
    result = runner.invoke(app, ["--debug", *args])
    assert result.exit_code == 1 and "in broken" in result.stderr
    assert result.stderr.splitlines()[-1] == "error: KeyError: 'features'"


def test_ctrl_c_exits_130_without_a_traceback(small_run, monkeypatch, tmp_path) -> None:
    _, data, run = small_run

    def interrupted(run_dir: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("unictr.checkpoint.load_model", interrupted)
    result = runner.invoke(app, ["eval", "--run", str(run), "--data", str(data), "--out", str(tmp_path / "m.json")])
    assert result.exit_code == 130 and "Traceback" not in result.output, result.output


def test_python_m_unictr_end_to_end(small_run, config_files, tmp_path) -> None:
    """The real process: exit status 2, one line on stderr, nothing on stdout; UNICTR_DEBUG=1 adds the traceback."""
    args, names = _cases(small_run, config_files, tmp_path)["bad config"]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("UNICTR_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "unictr", *args], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and names in done.stderr, done.stderr
    done = subprocess.run([sys.executable, "-m", "unictr", *args], capture_output=True, text=True,
                          env=env | {"UNICTR_DEBUG": "1"}, timeout=120)
    assert done.returncode == 2 and "Traceback (most recent call last)" in done.stderr, done
    assert done.stderr.splitlines()[-1].startswith("error: ")
