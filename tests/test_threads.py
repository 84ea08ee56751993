"""`train.threads: auto`: the cores a process may use, less those other processes keep busy, at least 1."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from unictr.config import Config, ConfigError, with_changes
from unictr.threads import auto_threads, available_cores, busy_cores, resolve_threads


def test_auto_is_the_default_and_validated(sim_config: Config) -> None:
    cfg = sim_config
    assert type(cfg.train).model_fields["threads"].default == "auto"
    assert with_changes(cfg, "train", threads="auto").train.threads == "auto"
    for bad in (0, "many"):
        with pytest.raises(ConfigError, match="train.threads"):
            with_changes(cfg, "train", threads=bad)


def test_resolved_counts() -> None:
    assert resolve_threads(3) == 3
    assert 1 <= resolve_threads("auto") <= available_cores()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat (Linux only)")
def test_a_busy_neighbour_takes_a_core() -> None:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it start spinning
        assert busy_cores() >= 0.7  # one whole core, less what the machine's accounting misses
        if available_cores() == 2:
            assert auto_threads() == 1
    finally:
        spinner.kill()
        spinner.wait()
