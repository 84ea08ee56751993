"""The `unictr` command line: `app` with every command registered (one module per group of commands).

Importing a command module registers its commands; the order below is the order `unictr --help` lists them.
"""

from unictr.cli import train  # noqa: I001, F401
from unictr.cli import monitor  # noqa: F401
from unictr.cli import serving  # noqa: F401
from unictr.cli import experiments  # noqa: F401
from unictr.cli import report  # noqa: F401
from unictr.cli.common import app

__all__ = ["app"]
