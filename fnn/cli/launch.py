"""`python -m fnn launch --nproc N -- train ...`: N processes of one run on this machine, as
torchrun starts them.

Each process gets the environment fnn.train.distributed.initialize reads (the coordinator on
a free local port, the process count, its id: fnn.train.distributed.process_env), K host CPU
devices (--devices-per-process) and, where there are accelerators, K of them (JAX's
JAX_LOCAL_DEVICE_IDS: one GPU each by default). CPU collectives run over gloo. Their output
is forwarded line by line with the process's number in front ("[1] ..."), stdout to stdout
and stderr to stderr.

When one process fails (a non-zero status, a signal), the others cannot go on (their next
collective would wait for it): they get SIGTERM, and SIGKILL after --grace seconds, and the
launcher exits with the failed process's status, naming it. A Ctrl-C or SIGTERM of the
launcher is passed to every process once (they stop together at the same chunk and process 0
saves where the run stopped, as one process does; exit status 3 when Ctrl-C stopped them all
so, as train's); a second one kills them. The processes run
in sessions of their own (a terminal's Ctrl-C reaches them only through the launcher), and on
Linux they are killed if the launcher itself dies, so none is left behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

from fnn.cli._args import number
from fnn.cli._exit import SAVED
from fnn.train.distributed import free_port, process_env

HELP = "start N processes of one run on this machine (like torchrun)"
DESCRIPTION = (
    "Start N processes of one run on this machine: python -m fnn launch --nproc 2 "
    "--devices-per-process 4 -- train --epochs 5. Each process joins the run "
    "(fnn.train.distributed), its output prefixed with its number; when one fails "
    "all are stopped. After --: an fnn command (train ...) or a Python script "
    "(script.py ARGS) that calls fnn.train.distributed.initialize()."
)
GRACE = 5.0  # seconds between SIGTERM and SIGKILL when stopping the processes
PR_SET_PDEATHSIG = 1

_count = number(int, low=1, what="a positive integer")
_grace = number(float, low=0, what="a number of seconds >= 0")


def add_arguments(p) -> None:
    p.add_argument(
        "--nproc", type=_count, required=True, metavar="N", help="how many processes to start"
    )
    p.add_argument(
        "--devices-per-process",
        type=_count,
        default=1,
        metavar="K",
        help="host CPU devices each process has (XLA's "
        "--xla_force_host_platform_device_count), and accelerators when there are "
        "some: process i gets devices i*K to i*K+K-1 (default 1)",
    )
    p.add_argument(
        "--port",
        type=number(int, low=1, high=65535, what="a port from 1 to 65535"),
        help="the coordinator's port on 127.0.0.1 (default: a free one)",
    )
    p.add_argument(
        "--grace",
        type=_grace,
        default=GRACE,
        metavar="S",
        help=f"seconds a process has to stop after SIGTERM before SIGKILL (default {GRACE:g})",
    )
    p.add_argument(
        "argv",
        nargs="...",
        metavar="-- COMMAND",
        help="what each process runs: an fnn command (train ...) or script.py ...",
    )


def _argv(command: list[str], commands) -> list[str]:
    """The argv of each process: `python -m fnn COMMAND ...` (COMMAND one of `commands`, the
    command line's others) or `python SCRIPT.py ...`."""
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ValueError(
            "give the command each process runs after --, e.g. "
            "python -m fnn launch --nproc 2 -- train --epochs 5"
        )
    if command[0] in commands:
        return [sys.executable, "-m", "fnn", *command]
    if command[0].endswith(".py"):
        if not os.path.isfile(command[0]):
            raise ValueError(f"the script {command[0]!r} does not exist")
        return [sys.executable, *command]
    raise ValueError(
        f"the command after -- must be an fnn command "
        f"({', '.join(commands)}) or a Python script (.py), got {command[0]!r}"
    )


def _child_setup() -> None:
    """In the child, before exec: Ctrl-C and SIGTERM handled as by default (a launcher started
    in the background ignores SIGINT, and its children would inherit that: the signal it passes
    on would do nothing), and SIGKILL when the launcher dies (Linux's PR_SET_PDEATHSIG)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the launcher's own handlers must do
        pass


def _forward(stream, out, prefix: bytes, lock: threading.Lock) -> None:
    """Copy `stream` to `out` a line at a time (a carriage return ends a line too: progress
    bars), each line after `prefix`."""
    pending = b""
    while True:
        chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
        if not chunk:
            break
        pending += chunk
        lines = pending.splitlines(keepends=True)
        pending = lines.pop() if lines and not lines[-1].endswith((b"\n", b"\r")) else b""
        if lines:
            with lock:
                out.write(b"".join(prefix + line for line in lines))
                out.flush()
    if pending:
        with lock:
            out.write(prefix + pending + b"\n")
            out.flush()


def _status(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class Launch:
    """The N processes of a run and what happens to them (see the module docstring)."""

    def __init__(
        self, argv: list[str], nproc: int, devices_per_process: int, port: int, grace: float
    ):
        self.coordinator = f"127.0.0.1:{port}"
        self.grace, self.lock = grace, threading.Lock()
        self.procs, self.threads = [], []
        self.signals: list[int] = []
        for i in range(nproc):
            env = process_env(self.coordinator, nproc, i, devices_per_process)
            self.procs.append(
                subprocess.Popen(
                    argv,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                    preexec_fn=_child_setup,
                )
            )
        for i, p in enumerate(self.procs):
            for stream, out in ((p.stdout, sys.stdout.buffer), (p.stderr, sys.stderr.buffer)):
                t = threading.Thread(
                    target=_forward, args=(stream, out, f"[{i}] ".encode(), self.lock), daemon=True
                )
                t.start()
                self.threads.append(t)

    def say(self, line: str) -> None:
        with self.lock:
            sys.stderr.buffer.write(f"fnn launch: {line}\n".encode())
            sys.stderr.buffer.flush()

    def send(self, signum: int) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signum)  # its session: the process and anything it started
                except ProcessLookupError:
                    pass

    def on_signal(self, signum, frame) -> None:
        self.signals.append(signum)

    def wait(self) -> int:
        """Watch the processes until all have ended; the launcher's exit status."""
        failed, stop_at, killed, told = None, None, False, 0
        while any(p.poll() is None for p in self.procs):
            if len(self.signals) > told:  # the launcher was interrupted
                told = len(self.signals)
                if told == 1:
                    self.say(
                        f"{signal.Signals(self.signals[0]).name}: passed to the "
                        f"{len(self.procs)} processes, which stop at the same point "
                        "(process 0 saves it); a second one kills them"
                    )
                    self.send(self.signals[0])
                else:
                    stop_at = time.monotonic()
            # a status other than 0 (or, interrupted, the signal's 128 + n, or SAVED: train
            # stopped by Ctrl-C where it was and saved it) is a failure
            ok = {0, *(128 + s for s in self.signals[:1])}
            if self.signals[:1] == [signal.SIGINT]:
                ok.add(SAVED)
            if failed is None:
                failed = next(
                    (
                        i
                        for i, p in enumerate(self.procs)
                        if p.poll() is not None and p.returncode not in ok
                    ),
                    None,
                )
                if failed is not None:
                    self.say(
                        f"process {failed} (pid {self.procs[failed].pid}) "
                        f"{_status(self.procs[failed].returncode)}; stopping the others "
                        f"(SIGTERM, then SIGKILL after {self.grace:g} s)"
                    )
                    self.send(signal.SIGTERM)
                    stop_at = time.monotonic() + self.grace
            if stop_at is not None and time.monotonic() >= stop_at and not killed:
                self.send(signal.SIGKILL)
                killed = True
            time.sleep(0.05)
        for t in self.threads:
            t.join(timeout=5)
        codes = [p.returncode for p in self.procs]
        statuses = ", ".join(f"process {i} {_status(c)}" for i, c in enumerate(codes))
        if failed is not None:
            self.say(f"failed: process {failed} {_status(codes[failed])} ({statuses})")
            return codes[failed] if codes[failed] > 0 else 128 - codes[failed]
        if self.signals:
            self.say(f"stopped by {signal.Signals(self.signals[0]).name}: {statuses}")
            if self.signals[0] == signal.SIGINT and all(c == SAVED for c in codes):
                return SAVED  # as train's own: stopped and saved where it was
            return 128 + self.signals[0]
        return 0


def run(args) -> int:
    argv = _argv(list(args.argv), args.commands)
    port = args.port or free_port()
    launch = Launch(argv, args.nproc, args.devices_per_process, port, args.grace)
    previous = {s: signal.signal(s, launch.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        launch.say(
            f"{args.nproc} processes x {args.devices_per_process} device(s), "
            f"coordinator {launch.coordinator}: "
            + ", ".join(f"process {i} pid {p.pid}" for i, p in enumerate(launch.procs))
        )
        return launch.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        launch.send(signal.SIGKILL)  # none outlives the launcher (an error in it included)
