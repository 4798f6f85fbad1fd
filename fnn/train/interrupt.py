"""Ctrl-C (or SIGTERM) during training: a request to stop at the next whole state, not an
exception thrown wherever the signal lands.

fit runs each epoch as compiled chunks of a few steps (fnn.train.epoch.make_chunk_runner). For
fit's duration, `StopRequest` replaces Python's SIGINT handler (main thread only, and only
when that handler is Python's default; a handler of yours is left alone): the first Ctrl-C
sets `requested`, fit finishes the chunk that is running (about one step, or
fit(chunk_seconds=...) of small steps), lets its hooks save the state (the run directory
writes a mid-epoch checkpoint) and raises TrainingInterrupted, a KeyboardInterrupt that
carries the state. A second Ctrl-C raises KeyboardInterrupt at once, as usual (the state of
the running chunk is then lost; the last checkpoint stays). SIGTERM (what `kill`, a batch
system or a container's stop sends) is handled the same way when its handler is the default
one, so a terminated run saves where it stopped too; TrainingInterrupted.signum says which
signal it was. The previous handlers are restored on exit, also on an exception.

XLA compiling the epoch's program can take seconds: fit waits for it with `interruptible`, the
compilation running in a worker thread while the main thread looks for a stop request every
50 ms, so a Ctrl-C during the first compilation stops within a second (the worker is left to
finish on its own; its result is not used, and the command line ends the process without
finalizing Python while it runs: `abandoned`).
"""

from __future__ import annotations

import contextvars
import signal
import threading
import time


class TrainingInterrupted(KeyboardInterrupt):
    """fit stopped on Ctrl-C (a KeyboardInterrupt carrying the state it stopped at).

    Args:
        message: the exception's message.
        state: the TrainState it stopped at (its epoch and position inside the next epoch, what
            a checkpoint of it resumes from).
        waited_s: seconds from the Ctrl-C to the stop.
        signum: the signal that stopped it (SIGINT for Ctrl-C, or SIGTERM).
    """

    def __init__(
        self, message: str, state, waited_s: float | None = None, signum: int = signal.SIGINT
    ):
        super().__init__(message)
        self.state, self.waited_s, self.signum = state, waited_s, signum


class StopRequest:
    """The first Ctrl-C as a request to stop (see the module docstring)."""

    def __init__(self):
        self.requested, self.at, self.previous, self.signum = False, None, {}, signal.SIGINT

    @property
    def handling(self) -> bool:
        """Whether this request replaced a signal's handler (fit then can stop early)."""
        return bool(self.previous)

    def __enter__(self) -> "StopRequest":
        self.requested, self.at, self.previous, self.signum = False, None, {}, signal.SIGINT
        if threading.current_thread() is threading.main_thread():
            for signum, default in (
                (signal.SIGINT, signal.default_int_handler),
                (signal.SIGTERM, signal.SIG_DFL),
            ):
                if signal.getsignal(signum) is default:
                    self.previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc) -> bool:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}
        return False

    def _on_signal(self, signum, frame):
        if self.requested:  # the second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested, self.at, self.signum = True, time.perf_counter(), signum

    def request(self) -> None:
        """Ask for a stop as a Ctrl-C does (for code that decides to stop a run)."""
        if not self.requested:
            self.requested, self.at = True, time.perf_counter()

    def waited(self) -> float | None:
        """Seconds since the request (None: none)."""
        return None if self.at is None else time.perf_counter() - self.at


_ABANDONED: list = []  # worker threads interruptible stopped waiting for


def abandoned() -> list:
    """The worker threads `interruptible` stopped waiting for that still run (an XLA
    compilation). A process must not finalize Python while one runs (XLA would abort it):
    the command line ends such a process with os._exit once its output is flushed."""
    _ABANDONED[:] = [t for t in _ABANDONED if t.is_alive()]
    return list(_ABANDONED)


def interruptible(fn, stop: StopRequest, poll: float = 0.05, tick=None):
    """(True, fn()) with fn run in a worker thread (in a copy of this thread's context, so
    contextvars such as fnn.rules scopes carry over) while this thread waits, or (False, None)
    as soon as `stop` is requested (fn is left to finish on its own). Without a signal handler
    of `stop` installed, fn simply runs here. tick(seconds waited), if given, is called every
    `poll` seconds while it waits (a progress display)."""
    if not stop.handling:
        return True, fn()
    result = {}
    context = contextvars.copy_context()

    def work():
        try:
            result["value"] = context.run(fn)
        except BaseException as e:  # handed to the waiting thread
            result["error"] = e

    worker = threading.Thread(target=work, name="fnn-compile", daemon=True)
    worker.start()
    t0 = time.perf_counter()
    while worker.is_alive():
        worker.join(poll)
        if tick is not None and worker.is_alive():
            tick(time.perf_counter() - t0)
        if stop.requested:
            _ABANDONED.append(worker)
            return False, None
    if "error" in result:
        raise result["error"]
    return True, result["value"]
