"""`python -m unictr.cli`: the `unictr` command."""

from unictr.cli import app

app()
