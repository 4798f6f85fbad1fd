"""`python -m fnn ...`: the command line (fnn/cli)."""

from fnn.cli import entry

raise SystemExit(entry())
