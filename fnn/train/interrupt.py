"""Ctrl-C during training: a request to stop at the next whole state, not an exception
thrown wherever the signal lands.

fit runs each epoch as compiled chunks of a few steps (fnn.train.epoch.make_epoch_runner). For
fit's duration, `StopRequest` replaces Python's SIGINT handler (main thread only, and only
when that handler is Python's default; a handler of yours is left alone): the first Ctrl-C
sets `requested`, fit finishes the chunk that is running (about one step, or
fit(chunk_seconds=...) of small steps), lets its hooks save the state (the run directory
writes a mid-epoch checkpoint) and raises TrainingInterrupted, a KeyboardInterrupt that
carries the state. A second Ctrl-C raises KeyboardInterrupt at once, as usual (the state of
the running chunk is then lost; the last checkpoint stays). The previous handler is restored
on exit, also on an exception.
"""

from __future__ import annotations

import signal
import threading
import time


class TrainingInterrupted(KeyboardInterrupt):
    """fit stopped on Ctrl-C. `state`: the TrainState it stopped at (its epoch and position
    inside the next epoch, what a checkpoint of it resumes from); `waited_s`: seconds from the
    Ctrl-C to the stop."""

    def __init__(self, message: str, state, waited_s: float | None = None):
        super().__init__(message)
        self.state, self.waited_s = state, waited_s


class StopRequest:
    """The first Ctrl-C as a request to stop (see the module docstring)."""

    def __init__(self):
        self.requested, self.at, self.previous = False, None, None

    def __enter__(self) -> "StopRequest":
        self.requested, self.at, self.previous = False, None, None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc) -> bool:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None
        return False

    def _on_sigint(self, signum, frame):
        if self.requested:  # the second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested, self.at = True, time.perf_counter()

    def request(self) -> None:
        """Ask for a stop as a Ctrl-C does (for code that decides to stop a run)."""
        if not self.requested:
            self.requested, self.at = True, time.perf_counter()

    def waited(self) -> float | None:
        """Seconds since the request (None: none)."""
        return None if self.at is None else time.perf_counter() - self.at
