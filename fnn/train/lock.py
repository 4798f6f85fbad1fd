"""One process per run directory: an exclusive advisory lock on the directory itself.

    with RunLock("runs/x") as lock:   # RunDirError at once if another process holds it
        lock.folder                   # the fnn.train.files.Folder every write goes through

The lock is `fcntl.flock(LOCK_EX | LOCK_NB)` on an open descriptor of the directory (its
identity, not its name), held for the run's life and released on exit (also on an exception),
and by the kernel when the process dies, however it dies: a killed run never leaves a lock
behind on a local file system. Renaming the folder moves the lock with it; a run whose folder
was renamed notices at its next write (fnn.train.files.Folder.check) and stops, and a new run
at the old name gets a new folder and a lock of its own, never a share of the old one.
RUN_DIR/.lock records the holder (pid, host, start time) so that a refusal can say who holds
it; it is written through fnn.train.files.write_file (never through a link) and emptied on
release. `acquire` checks that the directory it locked is still the one at the path, so that a
run that failed before writing anything can remove the folder it created
(release(remove=True)).

A lock that is held although its recorded process is gone is stale: a process that inherited
the open directory (a forked child) still runs, or the file system (some network file systems)
keeps locks of dead processes. The error says so, and how to clear it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time

from fnn.train.files import Folder, RunDirError, read_file, write_file

LOCK_FILE = ".lock"
MAX_LOCK_BYTES = 4096

__all__ = ["LOCK_FILE", "RunDirError", "RunLock"]


HOLDER_WAITS = 40  # times 50 ms: how long a refused process waits for the holder's record


def _holder(folder: Folder) -> dict:
    try:
        d = json.loads(read_file(LOCK_FILE, folder=folder, limit=MAX_LOCK_BYTES) or b"{}")
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def is_lock_file(folder: Folder) -> bool:
    """Whether RUN_DIR/.lock, if there is one, is fnn's: a regular file, empty (released) or
    the JSON record of a holder."""
    if not folder.exists(LOCK_FILE):
        return True
    if not folder.is_file(LOCK_FILE):
        return False
    try:
        text = read_file(LOCK_FILE, folder=folder, limit=MAX_LOCK_BYTES)
        d = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and set(d) <= {"pid", "host", "started"}


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

    The directory is created if needed; `folder` is its fnn.train.files.Folder while held.
    A RUN_DIR/.lock that is not fnn's (not empty, not a holder's record) is refused, not
    overwritten, unless overwrite=True.

    Args:
        run_dir: the run directory to lock.
        overwrite: replace a RUN_DIR/.lock that is not fnn's instead of refusing it.

    Raises:
        RunDirError: (on acquiring) another process holds the lock, the lock file keeps being
            replaced, or it is not fnn's lock file (and overwrite is False).
    """

    def __init__(self, run_dir: str, *, overwrite: bool = False):
        self.run_dir, self.path, self.folder = run_dir, os.path.join(run_dir, LOCK_FILE), None
        self.overwrite = overwrite

    def acquire(self) -> "RunLock":
        for _ in range(10):
            folder = Folder(self.run_dir, create=True)
            try:
                fcntl.flock(folder.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                message = (
                    self._busy_message(folder)
                    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
                    else f"cannot lock run directory {self.run_dir} ({e.strerror}); its file system "
                    "may not support file locks: use a local directory for --out"
                )
                folder.close()
                raise RunDirError(message) from None
            if folder.moved() is None:  # the folder locked must still be the one at the path
                break
            folder.close()
        else:
            raise RunDirError(
                f"cannot lock run directory {self.run_dir}: it keeps being removed and recreated"
            )
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        try:
            folder.refuse_non_file(LOCK_FILE)
            if not self.overwrite and not is_lock_file(folder):
                raise RunDirError(
                    f"{self.path} is not fnn's lock file (it holds something else "
                    f"than the record of a run's process): fnn would overwrite "
                    f"it. Remove it, choose another folder, or pass --overwrite"
                )
            write_file(LOCK_FILE, (json.dumps(me) + "\n").encode(), folder=folder)
        except BaseException:
            folder.close()
            raise
        self.folder = folder
        return self

    def _busy_message(self, folder: Folder) -> str:
        holder = _holder(folder)
        for _ in range(HOLDER_WAITS):  # the holder writes its record just after it locks
            if holder.get("pid"):
                break
            time.sleep(0.05)
            holder = _holder(folder)
        pid, host = holder.get("pid"), holder.get("host")
        who = (
            f"process {pid} on {host}, started {holder.get('started', '?')}"
            if pid
            else "another process"
        )
        here = host == socket.gethostname()
        alive = _alive(pid) if here else None
        if alive is False:
            return (
                f"run directory {self.run_dir} is locked, but its recorded owner ({who}) "
                f"is no longer running: the lock is stale (a process it started still has "
                f"{self.run_dir} open, or the file system keeps locks of dead processes). "
                f"`fuser -v {self.run_dir}` lists the processes that hold it: stop them and "
                f"try again; on a file system that keeps the locks of dead processes, copy "
                f"the folder (cp -r {self.run_dir} NEW) and use the copy"
            )
        return (
            f"run directory {self.run_dir} is in use by {who}: one run directory takes "
            f"one process at a time. Wait for it to finish (or stop it), or choose another "
            f"--out"
        )

    def release(self, *, remove: bool = False) -> None:
        """Release the lock; remove=True also deletes the lock file (while still holding the
        lock: the caller then removes the folder, and a process that opened it meanwhile sees
        it gone and starts over, see acquire)."""
        if self.folder is not None:
            folder, self.folder = self.folder, None
            try:
                if folder.moved() is None:
                    if remove:
                        folder.remove(LOCK_FILE)
                    else:
                        write_file(LOCK_FILE, b"", folder=folder)  # no owner once released
            except (OSError, RunDirError):  # (a link put there meanwhile) nothing to record
                pass
            folder.close()  # closing the directory releases the lock

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
