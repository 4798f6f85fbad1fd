"""Byte-level text data for language models: a corpus from files, a vocabulary, windows.

    text   the bytes of a text file, or of every file in a folder (sorted paths, files with NUL
           bytes skipped as binary), given with --data-dir; by default the Python standard
           library's own top-level modules on the running machine (sysconfig's 'stdlib' path,
           *.py, sorted by name: 168 files, 4.7 MB on CPython 3.11), so no download is needed.

The corpus is split by position: the first (1 - val_fraction) * 95% of the bytes train, the
next val_fraction * 95% validate, the last 5% test. Each split is cut into windows of `context`
bytes; x is a window, y the same window shifted by one byte (the next byte at every position).
The vocabulary is the sorted set of byte values in the corpus (ids 0..V-1); it is saved with a
run (vocab.json) so a checkpoint can be sampled later (fnn.train.sample).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import hashlib
import os
import stat
import sysconfig

import numpy as np

from fnn.train.files import RunDirError, read_file, write_file
from fnn.train.readers import DataError

TEST_FRACTION = 0.05
MAX_BYTES = 256 * 2**20  # a corpus is read whole: refuse more than this
VOCAB_FILE = "vocab.json"
MAX_VOCAB_BYTES = 1 << 16  # 256 byte values as JSON: about 1 KB


def stdlib_files() -> list[str]:
    """The default corpus: the top-level *.py modules of this Python's standard library."""
    root = sysconfig.get_paths()["stdlib"]
    files = sorted(glob.glob(os.path.join(root, "*.py")))
    if not files:
        raise DataError(
            f"the default text corpus is the standard library's *.py files, but "
            f"{root} holds none; pass a text file or folder with --data-dir"
        )
    return files


def corpus_files(path: str | None) -> list[str]:
    """The files of a corpus: `path` itself, every regular file under the folder `path`
    (sorted by path; names starting with '.' skipped), or the standard library's modules when
    path is None. The folder is walked without following links to folders (a link loop cannot
    make it read anything twice, or forever), and a file reached by two names (a link to a
    file) is listed once."""
    if path is None:
        return stdlib_files()
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise DataError(
            f"--data-dir {path!r} does not exist: give a text file or a folder of text files"
        )
    found = []
    for root, dirs, names in os.walk(path, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.join(root, n) for n in names if not n.startswith(".")]
    files, seen = [], set()
    for f in sorted(found):
        try:
            st = os.stat(f)  # a link to a file: the file
        except OSError:
            continue  # a dangling link
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        files.append(f)
    if not files:
        raise DataError(
            f"--data-dir {path!r} is a folder without files: there is no text to train on"
        )
    return files


def read_corpus(path: str | None = None, *, max_bytes: int = MAX_BYTES) -> tuple[bytes, list]:
    """(the bytes of the corpus, the files read). Each file is read once; files holding NUL
    bytes are skipped (binary); more than max_bytes in all is refused before it is read, and
    no read goes past what is left of that bound."""
    files = corpus_files(path)
    sizes = [os.path.getsize(f) for f in files]
    total = sum(sizes)
    if total > max_bytes:
        raise DataError(
            f"the text corpus {path or 'stdlib'} holds {total:,} bytes in "
            f"{len(files)} files, more than the {max_bytes:,} read into memory; "
            "name a smaller file or folder"
        )
    parts, used, left = [], [], max_bytes
    for f, _size in zip(files, sizes):
        with open(f, "rb") as fh:
            data = fh.read(left + 1)
        if len(data) > left:
            raise DataError(
                f"{f} grew while the corpus was read: the text corpus now holds "
                f"more than {max_bytes:,} bytes"
            )
        left -= len(data)
        if b"\0" in data:
            continue
        parts.append(data)
        used.append(f)
    text = b"".join(parts)
    if not text:
        raise DataError(
            f"the text corpus {path!r} is empty (or only binary files): there is "
            "no text to train on"
        )
    return text, used


@dataclasses.dataclass(frozen=True)
class Vocab:
    """Byte values <-> token ids.

    Attributes:
        symbols: the sorted byte values present in the corpus (token id i is symbols[i]).

    Raises:
        DataError: (encode) the text holds bytes the model never saw; (decode) ids out of
            range; (load) the run has no vocabulary file or it is damaged.
    """

    symbols: tuple

    @classmethod
    def of(cls, text: bytes) -> "Vocab":
        return cls(tuple(int(b) for b in np.unique(np.frombuffer(text, np.uint8))))

    def __len__(self):
        return len(self.symbols)

    def encode(self, text: bytes | str) -> np.ndarray:
        """int32 ids of `text` (a str is UTF-8 encoded); bytes outside the vocabulary raise."""
        data = text.encode() if isinstance(text, str) else bytes(text)
        table = np.full(256, -1, np.int32)
        table[list(self.symbols)] = np.arange(len(self.symbols), dtype=np.int32)
        ids = table[np.frombuffer(data, np.uint8)]
        if (ids < 0).any():
            missing = sorted({bytes([b]) for b, i in zip(data, ids) if i < 0})
            raise DataError(
                f"the text holds {len(missing)} byte(s) the model never saw in "
                f"training: {', '.join(map(repr, missing[:10]))}; its vocabulary "
                f"has {len(self)} bytes"
            )
        return ids

    def decode(self, ids) -> bytes:
        """The bytes of token ids (ids outside [0, V) raise)."""
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise DataError(
                f"token ids must lie in [0, {len(self)}), got values in [{ids.min()}, {ids.max()}]"
            )
        return bytes(np.asarray(self.symbols, np.uint8)[ids])

    def save(self, run_dir: str, *, folder=None) -> str:
        """Write RUN_DIR/vocab.json (through fnn.train.files.write_file; folder: the run
        directory's Folder)."""
        path = os.path.join(run_dir, VOCAB_FILE)
        data = json.dumps({"kind": "bytes", "symbols": list(self.symbols)}).encode()
        write_file(VOCAB_FILE if folder is not None else path, data, folder=folder)
        return path

    @classmethod
    def load(cls, run_dir: str, *, folder=None) -> "Vocab":
        """RUN_DIR/vocab.json, read with a size bound, every field checked (DataError naming
        the file and the field)."""
        path = os.path.join(run_dir, VOCAB_FILE)
        try:
            if folder is not None:
                text = read_file(
                    VOCAB_FILE, folder=folder, limit=MAX_VOCAB_BYTES, what="vocabulary"
                )
            else:
                text = read_file(path, limit=MAX_VOCAB_BYTES, what="vocabulary")
            d = json.loads(text)
        except FileNotFoundError:
            raise DataError(
                f"{run_dir} has no {VOCAB_FILE}: it is not the run of a text model"
            ) from None
        except RunDirError as e:
            raise DataError(str(e)) from None
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(
                f"{path} is damaged: it is not JSON ({e}); it should hold the run's byte vocabulary"
            ) from None
        if not isinstance(d, dict):
            raise DataError(
                f"{path} is damaged: it must be a JSON object, got a {type(d).__name__}"
            )
        if d.get("kind", "bytes") != "bytes":
            raise DataError(f"{path}: field 'kind' must be \"bytes\", got {d.get('kind')!r}")
        symbols = d.get("symbols")
        if not isinstance(symbols, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in symbols
        ):
            raise DataError(
                f"{path}: field 'symbols' must be a list of byte values (integers "
                f"0..255), got {str(symbols)[:60]}"
            )
        if (
            not symbols
            or sorted(set(symbols)) != list(symbols)
            or not all(0 <= s < 256 for s in symbols)
        ):
            raise DataError(
                f"{path}: field 'symbols' must hold distinct sorted byte values "
                f"0..255, got {len(symbols)} values"
            )
        return cls(tuple(symbols))


def windows(ids: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows: x (N, context) and y = x shifted by one position, (N, context)."""
    n = (len(ids) - 1) // context
    x = ids[: n * context].reshape(n, context)
    y = ids[1 : n * context + 1].reshape(n, context)
    return x, y


def load_text(
    data_dir: str | None = None,
    *,
    context: int = 128,
    val_fraction: float = 0.1,
    limit: int | None = None,
) -> dict:
    """x/y_train, x/y_val, x/y_test (int32 windows), the Vocab and a description of the corpus.

    Split by position (the module docstring).

    Args:
        data_dir: a text file or folder (None: the Python standard library's modules).
        context: bytes per window (an int >= 2).
        val_fraction: the fraction of the training windows kept for validation, in [0, 1).
        limit: keeps the first `limit` train and test windows.

    Returns:
        A dict of the arrays, "vocab", "unigram_loss", "sha256" and "description" (Dataset's
        fields).

    Raises:
        ValueError: `context` or `val_fraction` is not valid.
        DataError: the corpus is too small or cannot be read.
    """
    if not isinstance(context, int) or context < 2:
        raise ValueError(f"text context must be an int >= 2 (bytes per window), got {context!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    text, files = read_corpus(data_dir)
    vocab = Vocab.of(text)
    ids = vocab.encode(text)
    parts = _split(ids, val_fraction)
    out = {}
    for k, part in parts.items():
        x, y = (
            windows(part, context)
            if len(part) > context
            else (np.zeros((0, context), np.int32), np.zeros((0, context), np.int32))
        )
        if limit:
            x, y = x[:limit], y[:limit]
        out[f"x_{k}"], out[f"y_{k}"] = x, y
    if len(out["x_train"]) == 0:
        raise DataError(
            f"the text corpus has {len(ids):,} bytes: too few for one training "
            f"window of context {context} (+1); use a shorter --context or more text"
        )
    unigram = _unigram_loss(parts["train"], len(vocab))
    source = data_dir or f"the standard library at {os.path.dirname(files[0])}"
    out.update(
        vocab=vocab,
        unigram_loss=unigram,
        sha256=hashlib.sha256(text).hexdigest(),
        description=f"{source}: {len(files)} files, {len(text):,} bytes, {len(vocab)} distinct",
    )
    return out


def _split(ids: np.ndarray, val_fraction: float) -> dict[str, np.ndarray]:
    """{"train", "val", "test"}: the corpus's ids split by position (the module docstring)."""
    n_test = int(len(ids) * TEST_FRACTION)
    n_val = int(len(ids) * (1 - TEST_FRACTION) * val_fraction)
    n_train = len(ids) - n_test - n_val
    return {
        "train": ids[:n_train],
        "val": ids[n_train : n_train + n_val],
        "test": ids[n_train + n_val :],
    }


def _unigram_loss(train: np.ndarray, vocab_size: int) -> float:
    """The entropy of the training bytes in nats: the loss of predicting each byte from its
    frequency alone."""
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64)
    p = counts / counts.sum()
    return float(-np.sum(p[p > 0] * np.log(p[p > 0])))


def check_vocab(run_dir: str, vocab: Vocab, *, folder=None) -> None:
    """A resumed text run must read text with the vocabulary it was trained on."""
    saved = Vocab.load(run_dir, folder=folder)
    if saved != vocab:
        raise DataError(
            f"the text corpus now has a vocabulary of {len(vocab)} bytes, but the run "
            f"in {run_dir} was trained on {len(saved)} (its {VOCAB_FILE}): resume "
            "it on the same text (--data-dir)"
        )
