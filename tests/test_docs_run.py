"""Every example in README.md and docs/*.md runs as written (issue 20): a doc that drifts from the code is a
failing test, not an error for the reader who pastes it.

The examples run in order, in one temporary directory (`configs/` linked in), after the README's first
command built its world there: `unictr quickstart --out quickstart` at the tiny sizes of
`tests.docs_blocks.shrink` (20,000 rows, one short epoch, one thread). So `quickstart/data`,
`quickstart/run` and `quickstart/registry` are what a reader has after the README. The `unictr` of a block
is `python -m tests.docs_blocks` (the checkout's code, never an installed copy); `unictr serve` is not run:
one live server on a loopback port serves `quickstart/registry`, and a block's `curl` to 127.0.0.1:8000 is
sent to it. A `json` block right after a request block is that request's response: the live answer must
have its shape (keys, list lengths, value types, strings except the model version).

Blocks that cannot run here are in SKIP with the reason; every `unictr` command in them (and every
expansion of a synopsis) is still parsed against the real CLI, and skipped Python still compiles, so a
renamed flag or subcommand fails in every block.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.docs_blocks import Block, blocks, inline_commands, parse_error, shell_commands, synopsis_commands
from unictr.serving.process import server_process

KUAIRAND = "needs the KuaiRand-Pure files and minutes of training (docs/results.md's numbers)"
ROLLOUT = ("a runbook step on the user's own runs and registry ($RUN2, $REG, $DATA): tests/test_rollout.py runs "
           "the same steps against a real registry and server")
SKIP: dict[str, str] = {
    'README.md: pip install -c constraints.txt -e ".[onnx]" && unictr quickstart --out': "installs packages; "
    "its `unictr quickstart --out quickstart` is what this test's world is built with (at tiny sizes)",
    'README.md: pip install -c constraints.txt -e ".[dev]" && ruff check src tests': "installs packages and "
    "runs the whole suite (this file included)",
    "docs/calibration.md: unictr data simulate --rows 12000000 --seed 0 --out sim12m": "12M simulated rows and "
    "minutes of training and calibration (the numbers in that page)",
    "docs/calibration.md: K=../shared/data/kuairand": KUAIRAND,
    "docs/distributed.md: torchrun --nproc-per-node 2 -m unictr train --config configs/sim.yaml": "two "
    "processes under torchrun; tests/test_torchrun.py runs these commands",
    "docs/distributed.md: torchrun --nnodes 2 --node-rank 0 --nproc-per-node 1 --rdzv-backend c10d": "two "
    "torchrun agents; tests/test_torchrun.py runs these commands",
    "docs/distributed.md: torchrun --nproc-per-node 2 --max-restarts 2 -m unictr train --config": "two "
    "processes under torchrun, a worker killed on purpose: tests/test_torchrun.py",
    "docs/distributed.md: unictr bench --suite scale --threads 2 --out scale.json": "minutes: a fresh "
    "training process per rank count and thread count",
    "docs/model.md: unictr data simulate --rows 1000000 --seed 0 --out sim1m": "five arms trained on 1M rows: "
    "minutes (tests/test_experiment.py runs the experiment at a small size)",
    "docs/results.md: D=../shared/data/kuairand": KUAIRAND,
    "docs/results.md: D=../shared/data/kuairand (2)": KUAIRAND,
    "docs/results.md: unictr data simulate --rows 100000 --seed 0 --out /tmp/stage/sim-data": "the staging "
    "experiment of docs/model.md's warm-start block (which runs here) on a larger world: its numbers are the page's",
    "docs/results.md: unictr data simulate --rows 1000000 --seed 0 --out /tmp/stage/sim1m": "the same at 1M rows "
    "with --stage2-replay (minutes; tests/test_stage.py runs the replay at a tiny size)",
    'docs/serving.md: result = scorer.score({"users": [user], "candidate_columns": {': "a fragment (its "
    "arrays stand for the caller's); tests/test_serving.py scores numpy candidate_columns",
    "docs/calibration.md: K=../shared/data/kuairand (2)": KUAIRAND,
    "docs/calibration.md: unictr monitor --run RUN --data DIR --split calib --by day --out mon/": "the runbook "
    "on a user's own run and registry (RUN, DIR, REG): tests/test_monitor.py and tests/test_calib_recalibration.py "
    "run these commands",
    "docs/model.md: unictr bench --suite dcn --threads 1 --out dcn.json": "15 minutes of KuaiRand training "
    "(tests/test_dcn_projection.py renders the suite's tables)",
    "docs/model.md: D=../shared/data/kuairand; KR=kr-data": KUAIRAND,
    "docs/report.md: unictr report ablation --out ablation/report.html": "needs the ablation directory of "
    "docs/model.md's 1M-row experiment (skipped above: minutes)",
    "docs/results.md: D=../shared/data/kuairand (3)": KUAIRAND,
    "docs/results.md: D=../shared/data/kuairand (4)": KUAIRAND,
    "docs/rollout.md: for S in $OLD $NEW; do": ROLLOUT,
    "docs/rollout.md: unictr registry promote --registry $REG --surface search --version v0002": ROLLOUT,
    "docs/rollout.md: unictr registry promote --registry $REG --surface home_feed --version": ROLLOUT,
    "docs/rollout.md: unictr registry promote --registry $REG --surface $NEW --eval-data $DATA": ROLLOUT,
    "docs/rollout.md: unictr registry rollback --registry $REG --surface search": ROLLOUT,
}
BLOCKS = blocks(ROOT)
EXAMPLES = [b for b in BLOCKS if b.kind != "text"]
RUNNABLE = [b for b in EXAMPLES if b.kind in ("shell", "python", "json")]
DOC_PORT = "127.0.0.1:8000"  # where the docs' requests go; the test's server listens elsewhere
VARIES = {"model_version"}  # response strings that depend on the registry's history, not on the code
PRELUDE = f"""set -eo pipefail
unictr() {{ "{sys.executable}" -m tests.docs_blocks "$@"; }}
curl() {{ command curl --show-error --fail-with-body --max-time 60 "${{@//{DOC_PORT}/127.0.0.1:$DOCS_PORT}}"; }}
"""


@dataclass
class World:
    """The directory the examples run in, their environment, each block's output, and the live server."""

    root: Path
    env: dict[str, str]
    stack: ExitStack
    outputs: dict[str, str] = field(default_factory=dict)
    port: int | None = None

    def serve(self) -> int:
        """The live server's port (started on first use, serving the world's quickstart registry)."""
        if self.port is None:
            server, port = self.stack.enter_context(
                server_process(self.root / "quickstart" / "registry", self.root / "server.log", 1)
            )
            wait_ready(server, port, self.root / "server.log")
            self.port = port
            self.env["DOCS_PORT"] = str(port)
        return self.port

    def run(self, block: Block) -> str:
        """Run the block in the world; its output, or a failure naming the block with its output."""
        if block.kind == "python":
            cmd = [sys.executable, "-c", block.text]
        else:
            if "curl " in block.text:
                self.serve()
            cmd = ["bash", "-c", PRELUDE + block.text]
        done = subprocess.run(cmd, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=300)
        out = done.stdout + done.stderr
        if done.returncode != 0:
            pytest.fail(f"{block.doc}:{block.line}: the example [{block.id}] failed (exit {done.returncode}):\n"
                        f"{block.text}\n--- its output ---\n{out[-4000:]}", pytrace=False)
        return done.stdout


def wait_ready(server: subprocess.Popen, port: int, log: Path, timeout: float = 60.0) -> None:
    """Wait (bounded) until the server answers /readyz with 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the docs' server exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the docs' server was not ready in {timeout:.0f}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("docs")
    (root / "configs").symlink_to(ROOT / "configs")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DOCS_PORT": "0"}  # fmt: skip
    with ExitStack() as stack:
        w = World(root, env, stack)
        quickstart = next(argv for b in BLOCKS if b.doc == "README.md" for argv in shell_commands(b.text)
                          if argv[:1] == ["quickstart"])  # fmt: skip
        out = w.run(Block("README.md", 0, "bash", f"unictr {shlex.join(quickstart)}", "shell", "the quickstart"))
        assert "kept out by the gate" not in out, f"the tiny world's model failed the gate (see TINY_SETS):\n{out}"
        yield w


@pytest.mark.parametrize("block", EXAMPLES, ids=[b.id for b in EXAMPLES])
def test_the_example_matches_the_cli(block: Block) -> None:
    """Every `unictr` command (each synopsis expansion) parses against the real CLI; Python compiles; JSON
    parses. Nothing runs: this holds for skipped blocks too."""
    if block.kind == "python":
        compile(block.text, block.id, "exec")
        return
    if block.kind == "json":
        json.loads(block.text)
        return
    commands = synopsis_commands(block.text) if block.kind == "synopsis" else shell_commands(block.text)
    errors = [e for e in map(parse_error, commands) if e]
    assert not errors, f"{block.doc}:{block.line} [{block.id}]: " + "\n".join(errors)
    if block.kind == "synopsis":
        assert commands, f"{block.doc}:{block.line} [{block.id}]: a synopsis with no `unictr` command"


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_the_example_runs(block: Block, world: World) -> None:
    """The block runs as written in the world (a response block: the live answer has its shape)."""
    if block.id in SKIP:
        pytest.skip(SKIP[block.id])
    if block.kind == "json":
        request = _request_before(block)
        if request is None:
            return  # a JSON example on its own: it parses (the test above)
        assert request.id in world.outputs, f"{block.doc}:{block.line}: its request [{request.id}] did not run"
        differences = shape_differences(json.loads(block.text), json.loads(world.outputs[request.id]))
        assert not differences, (f"{block.doc}:{block.line}: the response of [{request.id}] differs from the "
                                 f"example:\n" + "\n".join(differences))  # fmt: skip
        return
    world.outputs[block.id] = world.run(block)


def _request_before(block: Block) -> Block | None:
    """The shell block with a `curl` right before `block` in its doc, if there is one."""
    before = [b for b in BLOCKS if b.doc == block.doc and b.line < block.line]
    return before[-1] if before and before[-1].kind == "shell" and "curl " in before[-1].text else None


def shape_differences(doc: object, got: object, path: str = "$") -> list[str]:
    """Where `got` differs from the documented `doc`: keys, list lengths, value types, and strings (but those
    whose key is in VARIES)."""
    if isinstance(doc, dict) and isinstance(got, dict):
        if doc.keys() != got.keys():
            return [f"{path}: keys {sorted(got)}, documented {sorted(doc)}"]
        return [d for k in doc for d in shape_differences(doc[k], got[k], f"{path}.{k}")]
    if isinstance(doc, list) and isinstance(got, list):
        if len(doc) != len(got):
            return [f"{path}: {len(got)} items, documented {len(doc)}"]
        pairs = enumerate(zip(doc, got, strict=True))
        return [d for i, (a, b) in pairs for d in shape_differences(a, b, f"{path}[{i}]")]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (doc, got)):
        return []
    if isinstance(doc, str) and isinstance(got, str) and (doc == got or path.rsplit(".", 1)[-1] in VARIES):
        return []
    return [] if doc == got else [f"{path}: {got!r}, documented {doc!r}"]


def test_the_commands_named_in_prose_exist() -> None:
    """`unictr ...` in the docs' text (not in a block) names commands and flags the CLI has."""
    mentions = inline_commands(ROOT)
    errors = [f"{doc}: {e}" for doc, argv in mentions if (e := parse_error(argv, mention=True))]
    assert len(mentions) > 20 and not errors, "\n".join(errors)


def test_the_skip_list_names_blocks_that_would_run() -> None:
    """A skip entry whose block is gone or changed is stale: it would silently stop skipping nothing."""
    runnable = {b.id for b in RUNNABLE}
    stale = [k for k in SKIP if k not in runnable]
    assert not stale, f"SKIP names no runnable block: {stale}; the blocks are {sorted(runnable)}"
