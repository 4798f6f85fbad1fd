"""Every file fnn writes, written one way (`write_file`), and every file of a run it reads,
read one way (`read_file`): in a folder held by its identity, never through a symbolic link,
with a size bound.

    folder = Folder("runs/x", create=True)        # an open descriptor of the directory
    write_file("config.json", data, folder=folder)  # atomic: a temporary file, then a rename
    write_file("metrics.jsonl", line, folder=folder, append=True)
    data = read_file("config.json", folder=folder, limit=1 << 20)
    write_file("report.md", text)                  # any path: its folder opened for the write

A `Folder` is a descriptor of the directory (O_DIRECTORY) and its identity (device, inode).
Every write goes through that descriptor (openat, renameat), so it lands in the folder the run
locked, and first checks that the path still names that folder: a run whose folder was
renamed, moved or replaced stops with a RunDirError instead of writing somewhere else
(`Folder.check`). The run's lock is an flock on the same descriptor (fnn.train.lock).

`write_file` opens with O_NOFOLLOW | O_EXCL a temporary file `.NAME.<random>.tmp` in the same
folder, writes the data (bytes, or an iterable of byte chunks: a checkpoint is streamed, never
assembled in memory), fsyncs it and renames it over NAME, so readers see the old file or the
new one, never a part; a symbolic link (or anything but a regular file) at NAME is refused,
not followed and not replaced. `append=True` adds the data at the end of NAME (opened with
O_APPEND | O_NOFOLLOW) in one write, cut back to its old length if the write fails or comes up
short (a full disk), so a JSON-lines file never ends in half a line.
`read_file` opens with O_NOFOLLOW and reads at most `limit` bytes, refusing a larger file
with its size and the bound, before reading it.

`tests/test_safe_io.py` greps fnn/ for every other way of writing a file (open(..., "w"),
write_text, savefig, safetensors' save_file, os.replace, O_CREAT, ...): this module is the only
one allowed to.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat

from fnn.errors import FnnError

CHUNK = 1 << 24  # bytes per write() of a large buffer


class RunDirError(FnnError, ValueError):
    """A run directory is in use, cannot be locked, or is not in a state the request needs."""


def _tmp_pattern(name: str) -> re.Pattern:
    return re.compile(r"\." + re.escape(name) + r"\.[0-9a-f]{16}\.tmp")


class Folder:
    """An open directory and its identity (see the module docstring). create=True makes it
    (and its parents) first. Close it with close() or use it as a context manager."""

    def __init__(self, path: str, *, create: bool = False):
        path = path or "."
        if create:
            os.makedirs(path, exist_ok=True)
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except NotADirectoryError:
            raise RunDirError(f"{path} is not a directory") from None
        st = os.fstat(self.fd)
        self.identity = (st.st_dev, st.st_ino)

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def __enter__(self) -> "Folder":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def moved(self) -> str | None:
        """None while `path` still names this folder; else what it names now."""
        try:
            st = os.stat(self.path)
        except OSError:
            return "nothing (the folder was renamed, moved or deleted)"
        if (st.st_dev, st.st_ino) != self.identity:
            return "another folder (the folder was renamed or moved, and another made there)"
        return None

    def check(self) -> None:
        """RunDirError unless the path still names the folder this process opened."""
        now = self.moved()
        if now is not None:
            raise RunDirError(
                f"the run directory {self.path} was renamed, moved or replaced while this "
                f"process was using it: {self.path} now names {now}. The run stopped instead "
                f"of writing into a folder it does not hold; move the folder back (or resume "
                f"it where it is now with --resume)"
            )

    def join(self, name: str) -> str:
        return os.path.join(self.path, name)

    def lstat(self, name: str) -> os.stat_result | None:
        """The entry `name` itself (a link is not followed); None when there is none."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def exists(self, name: str) -> bool:
        """Whether there is an entry `name` (a dangling link counts)."""
        return self.lstat(name) is not None

    def is_file(self, name: str) -> bool:
        """Whether `name` is a regular file (not a link)."""
        st = self.lstat(name)
        return st is not None and stat.S_ISREG(st.st_mode)

    def remove(self, name: str) -> None:
        self.check()
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def remove_stale_temporaries(self, names) -> list[str]:
        """Delete the `.NAME.<random>.tmp` files that a write killed halfway left beside any of
        `names` (call it while holding the folder's lock: nobody else writes them)."""
        patterns = [_tmp_pattern(n) for n in names]
        gone = []
        for entry in os.listdir(self.fd):
            if any(p.fullmatch(entry) for p in patterns) and self.is_file(entry):
                self.remove(entry)
                gone.append(entry)
        return gone

    def refuse_non_file(self, name: str) -> None:
        """RunDirError when `name` exists but is not a regular file (a symbolic link, a
        folder, a device...): fnn neither writes through it nor replaces it."""
        st = self.lstat(name)
        if st is None or stat.S_ISREG(st.st_mode):
            return
        path = self.join(name)
        if stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(name, dir_fd=self.fd)
            except OSError:
                target = "?"
            what = f"a symbolic link (to {target})"
        elif stat.S_ISDIR(st.st_mode):
            what = "a folder"
        else:
            what = "not a regular file"
        raise RunDirError(
            f"{path} is {what}: fnn reads and writes only regular files of its "
            f"own in a run directory and does not follow links; remove it (or "
            f"choose another folder)"
        )


def _chunks(data):
    if isinstance(data, (bytes, bytearray, memoryview)):
        yield data
    else:
        yield from data


def _write_all(fd: int, data, path: str) -> int:
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        n = os.write(fd, view[done : done + CHUNK])
        if n <= 0:
            raise OSError(errno.ENOSPC, f"{path}: short write (is the disk full?)")
        done += n
    return done


def write_file(
    path: str, data, *, folder: Folder | None = None, append: bool = False, check=None
) -> None:
    """Write `data` (bytes, or an iterable of bytes-like chunks) to `path`: a name in `folder`
    (checked to be still at its path first), or any path (its folder opened for the write).
    Atomic (a temporary file renamed over it) or, append=True, one all-or-nothing append. A
    symbolic link or non-regular file at `path` is refused (RunDirError). check(name, folder):
    called on the temporary file once written and fsynced, before the rename; what it raises
    aborts the write, the file at `path` unchanged (a checkpoint read back and verified)."""
    own = folder is None
    if own:
        folder = Folder(os.path.dirname(path) or ".")
    name = os.path.basename(path)
    shown = folder.join(name)
    try:
        folder.check()
        folder.refuse_non_file(name)
        if append:
            _append(folder, name, data, shown)
            return
        tmp = f".{name}.{secrets.token_hex(8)}.tmp"
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o666,
            dir_fd=folder.fd,
        )  # the umask applies, as for any new file
        try:
            try:
                for chunk in _chunks(data):
                    _write_all(fd, chunk, shown)
                os.fsync(fd)
            finally:
                os.close(fd)
            if check is not None:
                check(tmp, folder)
            folder.check()
            os.replace(tmp, name, src_dir_fd=folder.fd, dst_dir_fd=folder.fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=folder.fd)
            except OSError:
                pass
            raise
        try:  # make the rename itself durable
            os.fsync(folder.fd)
        except OSError:
            pass
    finally:
        if own:
            folder.close()


def _append(folder: Folder, name: str, data, shown: str) -> None:
    blob = b"".join(bytes(c) for c in _chunks(data))
    if not blob:
        return
    fd = os.open(
        name,
        os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o666,
        dir_fd=folder.fd,
    )
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, blob)
            if written != len(blob):
                raise OSError(
                    errno.ENOSPC,
                    f"{shown}: short write, {written} of {len(blob)} bytes (is the disk full?)",
                )
        except OSError:
            os.ftruncate(fd, size)  # no half line left behind
            raise
    finally:
        os.close(fd)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def open_file(path: str, *, folder: Folder | None = None) -> int:
    """A read-only descriptor of regular file `path` (a name in `folder`, or any path), opened
    without following a link (RunDirError for a link, FileNotFoundError when missing)."""
    name = os.path.basename(path) if folder is not None else path
    shown = folder.join(name) if folder is not None else path
    try:
        fd = os.open(
            name,
            os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
            dir_fd=folder.fd if folder is not None else None,
        )
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RunDirError(
                f"{shown} is a symbolic link: fnn does not read a run's files "
                "through links; replace it by the file itself"
            ) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunDirError(f"{shown} is not a regular file")
    return fd


def read_file(path: str, *, limit: int, folder: Folder | None = None, what: str = "file") -> bytes:
    """The bytes of regular file `path` (a name in `folder`, or any path), at most `limit`:
    a larger file is refused (RunDirError naming it, its size and the bound) before it is
    read; a link is refused, not followed."""
    shown = folder.join(os.path.basename(path)) if folder is not None else path
    fd = open_file(path, folder=folder)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise RunDirError(
                f"{shown} holds {_size(size)}, more than the {_size(limit)} a "
                f"{what} can hold: it is not one fnn wrote (or it was damaged); "
                "restore or remove it"
            )
        parts, got = [], 0
        while got <= limit:
            chunk = os.read(fd, min(CHUNK, limit + 1 - got))
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        if got > limit:
            raise RunDirError(
                f"{shown} grew past the {_size(limit)} a {what} can hold while it was read"
            )
        return b"".join(parts)
    finally:
        os.close(fd)
