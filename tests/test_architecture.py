"""The layering rules of docs/architecture.md, checked on the source tree."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "unictr"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
# A longer function says why on its `def` line or the line above, with this marker.
LONG_MARKER = "# long:"


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every `unictr...` module this file imports, at any depth (lazy imports inside functions too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("unictr"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("unictr"))
    return out


def test_building_blocks_import_only_blocks_batch_and_config() -> None:
    allowed = ("unictr.modules", "unictr.data.batch", "unictr.config")
    bad = {
        str(p.relative_to(SRC)): sorted(m for m in _imports(p) if not m.startswith(allowed) and m != "unictr")
        for p in (SRC / "modules").glob("*.py")
    }
    assert not {k: v for k, v in bad.items() if v}, bad


def test_serving_does_not_import_data_loading() -> None:
    """Neither directly nor through what it imports: a server process never loads the data reader."""
    bad = {
        str(p.relative_to(SRC)): sorted(m for m in _imports(p) if m.startswith("unictr.data.reader"))
        for p in (SRC / "serving").glob("*.py")
    }
    assert not {k: v for k, v in bad.items() if v}, bad
    probe = (
        "import sys, unictr.serving.app, unictr.serving.scorer, unictr.serving.registry; "
        "print(sorted(m for m in sys.modules if m.startswith(('unictr.data.reader', 'unictr.gate'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", loaded


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_files_and_functions_stay_readable(path: Path) -> None:
    text = path.read_text()
    lines = text.splitlines()
    assert len(lines) <= MAX_FILE_LINES, f"{path.name}: {len(lines)} lines (> {MAX_FILE_LINES}); split it"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            said = any(LONG_MARKER in line for line in lines[max(first - 2, 0) : node.lineno])
            assert length <= MAX_FUNCTION_LINES or said, (
                f"{path.name}: {node.name} is {length} lines (> {MAX_FUNCTION_LINES}); split it or say why "
                f"with '{LONG_MARKER} ...' beside its def"
            )
