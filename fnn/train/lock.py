"""One process per run directory: an exclusive advisory lock on RUN_DIR/.lock.

    with RunLock("runs/x"):        # RunDirError at once if another process holds it
        ...                        # the run: check the folder, write config, train, save

The lock is `fcntl.flock(LOCK_EX | LOCK_NB)` on RUN_DIR/.lock, held by an open file for the
run's life and released on exit (also on an exception), and by the kernel when the process
dies, however it dies: a killed run never leaves a lock behind on a local file system. The
file records the holder (pid, host, start time) so that a refusal can say who holds it.
The file stays (deleting a lock file naively lets two processes lock two different files);
`acquire` checks that the file it locked is still the one at the path, so that a run that
failed before writing anything can remove the folder it created (release(remove=True)).

A lock that is held although its recorded process is gone is stale: a process that inherited
the open file (a forked child) still runs, or the file system (some network file systems)
keeps locks of dead processes. The error says so, and how to clear it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time

from fnn.errors import FnnError

LOCK_FILE = ".lock"


class RunDirError(FnnError, ValueError):
    """A run directory is in use, cannot be locked, or is not in a state the request needs."""


def _holder(path: str) -> dict:
    try:
        with open(path) as f:
            return json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}


def _alive(pid) -> bool | None:
    """Whether process `pid` runs on this host (None: cannot tell)."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except OSError:
        return None
    return True


class RunLock:
    """The exclusive lock of a run directory (a context manager; `acquire`/`release` too).
    The directory is created if needed."""

    def __init__(self, run_dir: str):
        self.run_dir, self.path, self.fd = run_dir, os.path.join(run_dir, LOCK_FILE), None

    def acquire(self) -> "RunLock":
        os.makedirs(self.run_dir, exist_ok=True)
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunDirError(self._busy_message()) from None
                raise RunDirError(f"cannot lock run directory {self.run_dir} ({self.path}: "
                                  f"{e.strerror}); its file system may not support file locks: "
                                  "use a local directory for --out") from None
            try:  # the file locked must still be the one at the path (release(remove=True))
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise RunDirError(f"cannot lock run directory {self.run_dir}: {self.path} keeps "
                              "being removed and recreated")
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        self.fd = fd
        return self

    def _busy_message(self) -> str:
        holder = _holder(self.path)
        pid, host = holder.get("pid"), holder.get("host")
        who = (f"process {pid} on {host}, started {holder.get('started', '?')}" if pid
               else "another process")
        here = host == socket.gethostname()
        alive = _alive(pid) if here else None
        if alive is False:
            return (f"run directory {self.run_dir} is locked, but its recorded owner ({who}) "
                    f"is no longer running: the lock is stale (a process it started still holds "
                    f"{self.path} open, or the file system keeps locks of dead processes). If "
                    f"no fnn run uses {self.run_dir} (`fuser -v {self.path}` lists who holds "
                    f"it), clear it with `rm {self.path}` and try again")
        return (f"run directory {self.run_dir} is in use by {who}: one run directory takes "
                f"one process at a time. Wait for it to finish (or stop it), or choose another "
                f"--out")

    def release(self, *, remove: bool = False) -> None:
        """Release the lock; remove=True also deletes the lock file (while still holding it:
        a process that opened it meanwhile sees it gone and starts over, see acquire)."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                if remove:
                    os.unlink(self.path)
                else:
                    os.ftruncate(fd, 0)  # no owner recorded once released
            except OSError:
                pass
            os.close(fd)  # closing the file releases the lock

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
