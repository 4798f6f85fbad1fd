"""JSON-lines files of a run directory (metrics.jsonl, diagnostics.jsonl), written whole lines
at a time and read back with damage reported, never silently skipped.

`append` writes a batch of records with one write() on a file opened for appending; if the
write fails or comes up short (a full disk), the file is cut back to its length before the
call, so it never ends in half a line. A line cut short by something else (a crash mid-write,
a copy) is found by `read`: a damaged *last* line is returned as a note (the caller drops it
and says so), a damaged line anywhere else is an error naming the file and the line.
"""

from __future__ import annotations

import errno
import json
import os

from fnn.train.checkpoint import atomic_write
from fnn.train.lock import RunDirError


def append(path: str, records: list[dict]) -> None:
    """Append `records` to `path`, one JSON object a line, all or nothing."""
    if not records:
        return
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"{path}: short write, {written} of {len(data)} "
                                            "bytes (is the disk full?)")
        except OSError:
            os.ftruncate(fd, size)  # no half line left behind
            raise
    finally:
        os.close(fd)


def write(path: str, records: list[dict]) -> None:
    """Replace `path` by `records`, atomically."""
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def read(path: str) -> tuple[list[dict], str | None]:
    """(records, note): the JSON objects of `path`, one a line ([] if there is no file), and
    a note when its last line is damaged (dropped from the records), else None. A damaged
    line before the last raises RunDirError naming the file and the line."""
    if not os.path.isfile(path):
        return [], None
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the file ends with a newline, as it should
    records, note = [], None
    for i, line in enumerate(lines):
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError as e:
            record, error = None, e
        else:
            error = None if record is None or isinstance(record, dict) else \
                f"a JSON {type(record).__name__}, not an object"
        if record is None and not line.strip():
            continue  # blank line
        if error is None:
            records.append(record)
            continue
        if i == len(lines) - 1:
            note = (f"{path}: its last line (line {i + 1}, {len(line)} bytes) is damaged "
                    f"({error}; cut short by a crash or a full disk?); it was dropped")
        else:
            raise RunDirError(f"{path}: line {i + 1} of {len(lines)} is not a JSON record "
                              f"({error}): {line[:60]!r}; fix or delete that line")
    return records, note
