"""`unictr serve` as a child process on a free localhost port: what integration tests and benchmarks run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server_process(
    registry: str | Path, log: str | Path, threads: int, *args: str
) -> Iterator[tuple[subprocess.Popen, int]]:
    """Start `unictr serve --registry REGISTRY` on a free port with `threads` torch/OpenMP threads and
    the extra CLI `args`, its output in `log`; yields (process, port). On exit the server is terminated
    (killed if it has not stopped after 10 s)."""
    port = free_port()
    cmd = [sys.executable, "-m", "unictr.cli", "serve", "--registry", str(registry), "--port", str(port),
           "--threads", str(threads), *args]  # fmt: skip
    with open(log, "wb") as out:
        server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    try:
        yield server, port
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
