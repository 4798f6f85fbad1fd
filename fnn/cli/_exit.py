"""The exit statuses of `python -m fnn`, one table: what main returns, what --help's epilog and
the README say (tests/test_cli_conventions.py holds them to it)."""

from __future__ import annotations

import signal

OK = 0
FAILED = 1  # a check failed (gradcheck, demo, train --check-nans), or an error while running
USAGE = 2  # the command line is wrong: argparse's errors and the commands' checks of options
SAVED = 3  # train stopped by Ctrl-C where it was, that state saved: --resume continues it
INTERRUPTED = 128 + signal.SIGINT  # 130: Ctrl-C, nothing saved then (gradcheck, bench, ...)
TERMINATED = 128 + signal.SIGTERM  # 143: SIGTERM; train saved where it stopped

EPILOG = f"""exit status:
  {OK}    ok
  {FAILED}    a check failed (gradcheck, demo, train --check-nans), or an error while running
       (unreadable data, a run folder refused: it holds a run or another process uses it)
  {USAGE}    bad usage: an unknown option, a bad value or combination of options
  {SAVED}    train stopped by Ctrl-C, where it was saved (continue with --resume)
  {INTERRUPTED}  stopped by Ctrl-C with nothing saved then: gradcheck and bench print the rows done
       so far; train stopped outside its epochs (loading, saving) or by a second Ctrl-C
       keeps its last checkpoint, if any, as it was
  {TERMINATED}  SIGTERM (train saves where it stopped, as on Ctrl-C)
set FNN_DEBUG=1 for a traceback instead of a one-line error; NO_COLOR=1 for no colour"""
