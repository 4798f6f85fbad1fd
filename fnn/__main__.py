"""`python -m fnn ...`: the command line (fnn/cli.py)."""

from fnn.cli import main

raise SystemExit(main())
