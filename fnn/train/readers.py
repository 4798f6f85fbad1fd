"""Readers for the raw files of MNIST, Fashion-MNIST (IDX, .gz or plain) and CIFAR-10 (binary).

A missing or malformed file raises DataError naming the file that was expected and where to get
it. Readers return uint8 arrays as stored: images (N, H, W) or (N, H, W, C), labels (N,).

IDX (http://yann.lecun.com/exdb/mnist/): bytes 0-1 zero, byte 2 the element type (0x08 uint8,
0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), byte 3 the number of dims, then
each dim as a big-endian uint32, then the elements, big-endian, row-major.
CIFAR-10 binary (https://www.cs.toronto.edu/~kriz/cifar.html): records of 1 label byte and
3072 pixel bytes (1024 red, 1024 green, 1024 blue, each a 32x32 row-major plane).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib

import numpy as np

from fnn.errors import FnnError


class DataError(FnnError, ValueError):
    """A dataset file is missing or malformed; the message says which and where to get it."""


IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SOURCES = {
    "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/ (the four *-ubyte.gz files "
    "of http://yann.lecun.com/exdb/mnist/)",
    "fashion-mnist": "https://github.com/zalandoresearch/fashion-mnist (data/fashion/*.gz)",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz (the 'binary version'; "
    "extract it: tar xzf cifar-10-binary.tar.gz)",
}
CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = "test_batch.bin"
CIFAR_RECORD = 1 + 32 * 32 * 3


GZIP_MAGIC = b"\x1f\x8b"
MAX_GZIP_RATIO = 1032  # deflate's largest expansion: no gzip file holds more than this x its size


def _open_error(path: str, e: OSError, hint: str) -> DataError:
    return DataError(f"cannot read {path}: {e.strerror}. {hint}")


def _read_exactly(stream, n: int, path: str, hint: str) -> bytearray:
    """n bytes of `stream` (fewer if it ends first), into memory sized by n, read in pieces so
    that a gzip stream is decompressed no further than needed."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    try:
        while got < n:
            k = stream.readinto(view[got:])
            if not k:
                break
            got += k
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is a damaged gzip file ({e}). {hint}") from None
    del view
    return buf if got == n else buf[:got]


def read_idx(path: str, hint: str = "") -> np.ndarray:
    """The array stored in IDX file `path` (gzip-compressed or plain), in native byte order.

    Reads are bounded by what the header declares: the header is read first (streamed out of a
    gzip file), the declared size is checked against the file's size (for gzip, against the
    most a file of that size can decompress to), and exactly the declared bytes are read, plus
    one to tell that nothing follows; a gzip file is not decompressed any further.

    Args:
        path: the file.
        hint: added to the error messages (where to get the file).

    Returns:
        The array.

    Raises:
        DataError: the file is missing, not an IDX file, or its size does not match its header.
    """
    try:
        f = open(path, "rb")
    except OSError as e:
        raise _open_error(path, e, hint) from None
    with f:
        size = os.fstat(f.fileno()).st_size
        gz = f.read(2) == GZIP_MAGIC
        f.seek(0)
        stream = gzip.GzipFile(fileobj=f, mode="rb") if gz else f
        dims, dtype, start = _read_header(stream, path, hint)
        need = math.prod(dims) * dtype.itemsize
        if not gz and size - start != need:
            raise DataError(
                f"{path}: IDX header says shape {dims} ({need} bytes of data) but "
                f"the file holds {size - start} bytes after the header: truncated "
                f"or corrupt. {hint}"
            )
        if gz and need > size * MAX_GZIP_RATIO:
            raise DataError(
                f"{path}: IDX header says shape {dims} ({need} bytes of data) but "
                f"a {size}-byte gzip file decompresses to at most "
                f"{size * MAX_GZIP_RATIO} bytes: corrupt. {hint}"
            )
        data = _read_exactly(stream, need, path, hint)
        extra = len(_read_exactly(stream, 1, path, hint)) if len(data) == need else 0
    if len(data) != need or extra:
        got = f"{len(data)}" if not extra else f"more than {need}"
        raise DataError(
            f"{path}: IDX header says shape {dims} ({need} bytes of data) but the "
            f"file holds {got} bytes after the header: "
            f"{'truncated or corrupt' if not extra else 'corrupt or not IDX'}. {hint}"
        )
    array = np.frombuffer(data, dtype).reshape(dims)
    return array if dtype.itemsize == 1 else array.astype(dtype.newbyteorder("="))


def _read_header(stream, path: str, hint: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(dims, element dtype, header length in bytes) of the IDX file open as `stream` (at its
    start); DataError when it is not an IDX header or ends inside it."""
    head = bytes(_read_exactly(stream, 4, path, hint))
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in IDX_DTYPES:
        raise DataError(
            f"{path} is not an IDX file: it should start with bytes 00 00, a type "
            f"code (08 for uint8) and the number of dims, found "
            f"{head.hex(' ')!r}. {hint}"
        )
    ndim = head[3]
    raw_dims = bytes(_read_exactly(stream, 4 * ndim, path, hint))
    start = 4 + len(raw_dims)
    if len(raw_dims) < 4 * ndim:
        raise DataError(
            f"{path}: IDX header announces {ndim} dims but the file ends at byte {start}. {hint}"
        )
    dims = struct.unpack(f">{ndim}I", raw_dims)
    dtype = np.dtype(IDX_DTYPES[head[2]])
    return dims, dtype, start


def find_file(data_dir: str, name: str, dataset: str, gz: bool = True) -> str:
    """Path of `name` (or `name`.gz) in data_dir; DataError saying where to get it otherwise."""
    for candidate in [name, name + ".gz"] if gz else [name]:
        path = os.path.join(data_dir, candidate)
        if os.path.isfile(path):
            return path
    alternatives = f" (or {name}.gz)" if gz else ""
    if os.path.isdir(data_dir):
        where = f"not found in {data_dir!r}"
    elif os.path.exists(data_dir):
        where = f"but {data_dir!r} is a file, not a directory"
    else:
        where = f"directory {data_dir!r} does not exist"
    raise DataError(
        f"{dataset}: expected file {name}{alternatives}, {where}. "
        f"Get it from {SOURCES[dataset]} and pass its directory as --data-dir."
    )


def read_mnist(data_dir: str, dataset: str = "mnist") -> dict[str, np.ndarray]:
    """MNIST or Fashion-MNIST (same file names and format): uint8 images (N, H, W), labels (N,).

    Args:
        data_dir: the directory holding the IDX files.
        dataset: "mnist" or "fashion-mnist" (for the messages).

    Returns:
        {"x_train", "y_train", "x_test", "y_test"}.

    Raises:
        DataError: a file is missing or damaged, or images and labels do not match.
    """
    hint = f"Get the {dataset} files from {SOURCES[dataset]}."
    out = {}
    for split in ("train", "test"):
        images_path = find_file(data_dir, MNIST_FILES[f"{split}_images"], dataset)
        labels_path = find_file(data_dir, MNIST_FILES[f"{split}_labels"], dataset)
        images, labels = read_idx(images_path, hint), read_idx(labels_path, hint)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(
                f"{images_path}: expected uint8 images of shape (N, rows, cols), got "
                f"{images.dtype} {images.shape}. {hint}"
            )
        if labels.ndim != 1 or labels.dtype != np.uint8:
            raise DataError(
                f"{labels_path}: expected uint8 labels of shape (N,), got "
                f"{labels.dtype} {labels.shape}. {hint}"
            )
        if len(images) != len(labels):
            raise DataError(
                f"{images_path} holds {len(images)} images but {labels_path} holds "
                f"{len(labels)} labels. {hint}"
            )
        if labels.size and labels.max() > 9:
            raise DataError(f"{labels_path}: labels must be 0..9, found {labels.max()}. {hint}")
        out[f"x_{split}"], out[f"y_{split}"] = images, labels
    return out


def read_cifar10_file(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch file: uint8 images (N, 32, 32, 3) NHWC and labels (N,).

    Its size is checked before it is read; it is read as it is (the binary version is not
    compressed: a gzip file is refused rather than decompressed without a bound).

    Args:
        path: the file.

    Returns:
        (images, labels).

    Raises:
        DataError: the file is missing, gzip-compressed, of the wrong size, or holds labels
            outside 0..9.
    """
    hint = f"Get CIFAR-10 from {SOURCES['cifar10']}."
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if f.read(2) == GZIP_MAGIC:
                raise DataError(
                    f"{path} is gzip-compressed; CIFAR-10's binary files are read "
                    "as extracted from cifar-10-binary.tar.gz (tar xzf "
                    f"cifar-10-binary.tar.gz), each a plain file. {hint}"
                )
            if not size or size % CIFAR_RECORD:
                raise DataError(
                    f"{path}: a CIFAR-10 binary file holds records of "
                    f"{CIFAR_RECORD} bytes (1 label + 3072 pixels), but its size "
                    f"{size} is not a positive multiple of that: truncated or not "
                    f"the binary version. {hint}"
                )
            f.seek(0)
            raw = _read_exactly(f, size, path, hint)
    except OSError as e:
        raise _open_error(path, e, hint) from None
    if len(raw) != size:
        raise DataError(f"{path}: shrank from {size} to {len(raw)} bytes while being read. {hint}")
    records = np.frombuffer(raw, np.uint8).reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].copy()
    if labels.max() > 9:
        raise DataError(
            f"{path}: labels must be 0..9, found {labels.max()}: not a CIFAR-10 binary file. {hint}"
        )
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def read_cifar10(data_dir: str) -> dict[str, np.ndarray]:
    """CIFAR-10 from data_dir or data_dir/cifar-10-batches-bin: 50000 train, 10000 test.

    Args:
        data_dir: the directory holding the binary batch files (or their folder).

    Returns:
        {"x_train", "y_train", "x_test", "y_test"}: uint8 images (N, 32, 32, 3), labels (N,).

    Raises:
        DataError: a file is missing or damaged.
    """
    sub = os.path.join(data_dir, "cifar-10-batches-bin")
    if not os.path.isfile(os.path.join(data_dir, CIFAR_TEST)) and os.path.isdir(sub):
        data_dir = sub
    train = [read_cifar10_file(find_file(data_dir, n, "cifar10", gz=False)) for n in CIFAR_TRAIN]
    x_test, y_test = read_cifar10_file(find_file(data_dir, CIFAR_TEST, "cifar10", gz=False))
    return {
        "x_train": np.concatenate([x for x, _ in train]),
        "y_train": np.concatenate([y for _, y in train]),
        "x_test": x_test,
        "y_test": y_test,
    }
