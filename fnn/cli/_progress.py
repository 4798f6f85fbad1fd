"""What the long commands share: a progress bar on a terminal and a plain line per step
elsewhere, rows printed the moment they are measured, and a Ctrl-C that stops within a second.

    with Progress(len(gates), "gradcheck", unit="gate") as progress:
        for name, gate in gates.items():
            report = progress.run(name, lambda: check_gate(name, gate))   # Stopped on Ctrl-C
            progress.write(row_text(report))                             # stdout, now

`Progress.run` runs each step in a worker thread while this thread waits for a Ctrl-C (or a
SIGTERM): fnn.train.interrupt's StopRequest and `interruptible`, what train uses while XLA
compiles. A step is Python waiting on XLA much of the time, and a KeyboardInterrupt is only
raised between Python bytecodes: run in this thread, a Ctrl-C would wait for the step's end
(seconds). On a stop, `run` raises Stopped at once; the step is left to finish on its own, and
the process's entry point (fnn.cli.entry) ends the process once the command has printed what
it had (fnn.train.interrupt.abandoned).

On a terminal (stderr is a TTY) the bar is tqdm's, on stderr, and rows are written above it
(tqdm.write); elsewhere there is no bar and no carriage return: `lines=True` prints one plain
line per step on stderr ("gradcheck 3/149 relu 0.4 s"), for commands whose rows are not on
stdout already. Colour (`paint`) only where stdout is a terminal and NO_COLOR is not set
(https://no-color.org).
"""

from __future__ import annotations

import os
import signal
import sys
import time

from fnn.train.interrupt import StopRequest, interruptible


class Stopped(Exception):
    """Ctrl-C (or SIGTERM: `signum`) stopped the steps; what ran before it is kept."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def color_wanted(stream=None) -> bool:
    """Whether `stream` (default stdout) may get ANSI colour: a terminal, NO_COLOR unset or
    empty, TERM not 'dumb'."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return (
        bool(isatty and isatty())
        and not os.environ.get("NO_COLOR")
        and os.environ.get("TERM") != "dumb"
    )


_CODES = {"red": "31", "green": "32", "yellow": "33", "bold": "1"}


def paint(text: str, color: str, stream=None) -> str:
    """`text` in `color` (red, green, yellow, bold) where color_wanted(stream), else as it is."""
    return f"\x1b[{_CODES[color]}m{text}\x1b[0m" if color_wanted(stream) else text


class Progress:
    """Steps run one at a time with a progress bar (see the module docstring)."""

    def __init__(self, total: int, desc: str, *, unit: str = "step", lines: bool = False):
        self.total, self.desc, self.unit, self.lines = total, desc, unit, lines
        self.done, self.bar, self.stop = 0, None, StopRequest()

    def __enter__(self) -> "Progress":
        self.stop.__enter__()
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=self.total,
                desc=self.desc,
                unit=self.unit,
                leave=False,
                dynamic_ncols=True,
                file=sys.stderr,
            )
        return self

    def __exit__(self, *exc) -> bool:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.stop.__exit__(*exc)
        return False

    def run(self, label: str, fn, steps: int = 1):
        """fn() in a worker thread, this thread waiting; Stopped as soon as a Ctrl-C (or
        SIGTERM) comes, before or while it runs. When it returns, `steps` of the total are
        done."""
        if self.stop.requested:
            raise Stopped(self.stop.signum)
        if self.bar is not None:
            self.bar.set_postfix_str(label, refresh=True)
        t0 = time.perf_counter()
        try:
            ready, value = interruptible(fn, self.stop, tick=self._tick)
        except KeyboardInterrupt:  # no handler of ours (not the main thread): Python's own
            raise Stopped(signal.SIGINT) from None
        if not ready:
            raise Stopped(self.stop.signum)
        self.done += steps
        if self.bar is not None:
            self.bar.update(steps)
        elif self.lines:
            print(
                f"{self.desc} {self.done}/{self.total} {label} {time.perf_counter() - t0:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        return value

    def _tick(self, seconds: float) -> None:
        if self.bar is not None and seconds >= 0.5:  # the elapsed time moves on a long step
            self.bar.refresh()

    def write(self, text: str, file=None) -> None:
        """Print `text` now (default to stdout), above the bar on a terminal."""
        file = sys.stdout if file is None else file
        if self.bar is not None:
            self.bar.write(text, file=file)
            file.flush()
        else:
            print(text, file=file, flush=True)
