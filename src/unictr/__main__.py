"""`python -m unictr`: the `unictr` command."""

from unictr.cli import app

app()
