"""`events.jsonl` beside a run's checkpoints: a line every `EVERY_STEPS` training steps (loss, LR, rows/s)
and one per epoch (its summary and evaluation AUCs), so a run's curves can be read without its manifest.

Rank 0 writes it. A resumed run first drops the lines after its checkpoint's step (their steps are trained
again), so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unictr.checkpoint import save_text

EVENTS = "events.jsonl"
EVERY_STEPS = 100


class EventLog:
    """Appends JSON lines to `run_dir/events.jsonl` (a no-op where `enabled` is false: ranks other than 0)."""

    def __init__(self, run_dir: Path, enabled: bool, resumed_step: int | None = None) -> None:
        self.path, self.enabled = run_dir / EVENTS, enabled
        if not enabled or not self.path.is_file():
            return
        if resumed_step is None:  # a run started over (from a kill before its first checkpoint, say)
            self.path.unlink()
            return
        kept = [ln for ln in self.path.read_text().splitlines() if _step(ln) <= resumed_step]
        save_text("".join(f"{ln}\n" for ln in kept), self.path)

    def write(self, event: str, **fields: Any) -> None:
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)  # the run directory may not exist yet
            with self.path.open("a") as f:
                f.write(json.dumps({"event": event, **fields}) + "\n")


def _step(line: str) -> int:
    """The step a line was written at (a line that cannot be read counts as after any checkpoint)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62
