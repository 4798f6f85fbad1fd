"""JSON-lines files of a run directory (metrics.jsonl, diagnostics.jsonl), written whole lines
at a time and read back with damage reported, never silently skipped.

Both writes go through fnn.train.files.write_file: `append` adds a batch of records with one
write() (cut back to the old length if it fails or comes up short, e.g. a full disk), so the
file never ends in half a line; `write` replaces the file atomically. A line cut short by
something else (a crash mid-write, a copy) is found by `read`: a damaged *last* line is
returned as a note (the caller drops it and says so), a damaged line anywhere else is an error
naming the file and the line. `read` refuses a file larger than its bound (MAX_BYTES) before
reading it, and a symbolic link.
"""

from __future__ import annotations

import json
import os

from fnn.train.files import Folder, RunDirError, read_file, write_file

MAX_BYTES = 256 * 2**20  # a metrics or diagnostics file is far smaller: refuse more


def _encode(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def append(path: str, records: list[dict], *, folder: Folder | None = None) -> None:
    """Append `records` to `path` (a name in `folder`, or any path), one JSON object a line,
    all or nothing."""
    if records:
        write_file(path, _encode(records), folder=folder, append=True)


def write(path: str, records: list[dict], *, folder: Folder | None = None) -> None:
    """Replace `path` by `records`, atomically."""
    write_file(path, _encode(records), folder=folder)


def read(
    path: str, *, folder: Folder | None = None, max_bytes: int = MAX_BYTES
) -> tuple[list[dict], str | None]:
    """(records, note): the JSON objects of `path`, one a line ([] if there is no file), and
    a note when its last line is damaged (dropped from the records), else None. A damaged
    line before the last raises RunDirError naming the file and the line."""
    if folder is not None:
        if not folder.exists(os.path.basename(path)):
            return [], None
        path = folder.join(os.path.basename(path))
    elif not os.path.lexists(path):
        return [], None
    data = read_file(
        os.path.basename(path) if folder is not None else path,
        folder=folder,
        limit=max_bytes,
        what="JSON-lines file of a run",
    )
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the file ends with a newline, as it should
    records, note = [], None
    for i, line in enumerate(lines):
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError as e:
            record, error = None, e
        else:
            error = (
                None
                if record is None or isinstance(record, dict)
                else f"a JSON {type(record).__name__}, not an object"
            )
        if record is None and not line.strip():
            continue  # blank line
        if error is None:
            records.append(record)
            continue
        if i == len(lines) - 1:
            note = (
                f"{path}: its last line (line {i + 1}, {len(line)} bytes) is damaged "
                f"({error}; cut short by a crash or a full disk?); it was dropped"
            )
        else:
            raise RunDirError(
                f"{path}: line {i + 1} of {len(lines)} is not a JSON record "
                f"({error}): {line[:60]!r}; fix or delete that line"
            )
    return records, note
