"""`python -m fnn ...`: the command line (fnn/cli.py)."""

from fnn.cli import entry

raise SystemExit(entry())
