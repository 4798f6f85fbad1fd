"""hypothesis feeds random and damaged bytes to the data readers and the checkpoint loader: each
file either loads (and then holds what its header says) or raises a clear DataError /
CheckpointError. Never another exception, a crash or a hang."""

import gzip
import os
import shutil
import struct
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fnn import nn, train
from fnn.train import CheckpointError, DataError
from fnn.train.readers import CIFAR_RECORD, IDX_DTYPES

from test_data import write_mnist

SETTINGS = dict(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def scratch():
    d = tempfile.mkdtemp(prefix="fnn-fuzz-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def write(directory, name, data: bytes) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


@st.composite
def idx_files(draw):
    """Random bytes; or an IDX header (any type code and dims) followed by random data, of the
    right length or not; optionally gzip-compressed (or with a gzip magic and garbage)."""
    kind = draw(st.sampled_from(["random", "header", "header_exact"]))
    if kind == "random":
        data = draw(st.binary(max_size=300))
    else:
        code = draw(st.sampled_from(sorted(IDX_DTYPES) + [0x00, 0x07, 0xFF]))
        dims = draw(st.lists(st.integers(0, 6), max_size=4))
        if draw(st.booleans()):  # an absurd dim: the data can never be long enough
            dims.append(draw(st.sampled_from([2**31, 2**32 - 1])))
        header = bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
        if kind == "header_exact" and code in IDX_DTYPES and max(dims, default=0) < 2**31:
            n = int(np.prod(dims)) * np.dtype(IDX_DTYPES[code]).itemsize
            body = draw(st.binary(min_size=n, max_size=n))
        else:
            body = draw(st.binary(max_size=200))
        data = header[: draw(st.integers(0, len(header)))] if draw(st.booleans()) else header
        data += body
    wrap = draw(st.sampled_from(["plain", "gzip", "bad_gzip"]))
    if wrap == "gzip":
        data = gzip.compress(data)
    elif wrap == "bad_gzip":
        data = b"\x1f\x8b" + data
    return data


@settings(max_examples=80, **SETTINGS)
@given(data=idx_files())
def test_read_idx_never_crashes(data, scratch):
    path = write(scratch, "file-idx3-ubyte", data)
    try:
        array = train.read_idx(path)
    except DataError as e:
        assert "file-idx3-ubyte" in str(e)
        return
    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    assert array.ndim == raw[3] and array.dtype == np.dtype(IDX_DTYPES[raw[2]]).newbyteorder("=")


@st.composite
def cifar_files(draw):
    if draw(st.booleans()):
        return draw(st.binary(max_size=2 * CIFAR_RECORD + 5))
    n = draw(st.integers(1, 3))
    label_max = draw(st.sampled_from([9, 255]))
    records = bytearray(draw(st.binary(min_size=n * CIFAR_RECORD, max_size=n * CIFAR_RECORD)))
    for i in range(n):
        records[i * CIFAR_RECORD] = draw(st.integers(0, label_max))
    return bytes(records)


@settings(max_examples=40, **SETTINGS)
@given(data=cifar_files())
def test_read_cifar10_file_never_crashes(data, scratch):
    path = write(scratch, "data_batch_1.bin", data)
    try:
        images, labels = train.read_cifar10_file(path)
    except DataError as e:
        assert "data_batch_1.bin" in str(e)
        return
    n = len(data) // CIFAR_RECORD
    assert images.shape == (n, 32, 32, 3) and labels.shape == (n,) and labels.max() <= 9


@pytest.fixture(scope="module")
def mnist_files(scratch):
    directory = os.path.join(scratch, "mnist-good")
    write_mnist(directory, n_train=20, n_test=10, size=4, compress=False)
    return {
        name: open(os.path.join(directory, name), "rb").read()
        for name in sorted(os.listdir(directory))
    }


@settings(max_examples=25, **SETTINGS)
@given(
    which=st.integers(0, 3),
    cut=st.integers(0, 400),
    flips=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 255)), max_size=3),
)
def test_load_dataset_with_a_damaged_mnist_file(which, cut, flips, mnist_files, scratch):
    directory = os.path.join(scratch, "mnist-damaged")
    os.makedirs(directory, exist_ok=True)
    for i, (name, raw) in enumerate(mnist_files.items()):
        if i == which:
            raw = bytearray(raw[: min(cut, len(raw))] if cut < len(raw) else raw)
            for pos, bits in flips:
                if pos < len(raw):
                    raw[pos] ^= bits
            raw = bytes(raw)
        write(directory, name, raw)
    try:
        data = train.load_dataset("mnist", directory, val_fraction=0.2)
    except DataError:
        return
    assert data.x_train.shape[1:] == (4, 4, 1) and data.y_train.max() <= 9


@pytest.fixture(scope="module")
def checkpoint_bytes(scratch):
    model = nn.mlp((4,))
    ts = train.init_train_state(model, train.make_optimizer("adam"), (3, 3, 1), seed=0)
    path = os.path.join(scratch, "good.safetensors")
    train.save_train_state(path, ts, {"note": "fuzz"})
    return open(path, "rb").read(), train.read_checkpoint(path)[0]


@settings(max_examples=60, **SETTINGS)
@given(mode=st.sampled_from(["random", "truncate", "flip", "insert"]), data=st.data())
def test_checkpoint_loader_never_crashes(mode, data, checkpoint_bytes, scratch):
    good, tensors = checkpoint_bytes
    if mode == "random":
        raw = data.draw(st.binary(max_size=300))
        if data.draw(st.booleans()):  # a plausible header size in front of the garbage
            raw = struct.pack("<Q", data.draw(st.integers(0, 400))) + raw
    elif mode == "truncate":
        raw = good[: data.draw(st.integers(0, len(good) - 1))]
    elif mode == "flip":
        raw = bytearray(good)
        for _ in range(data.draw(st.integers(1, 3))):
            raw[data.draw(st.integers(0, len(good) - 1))] ^= data.draw(st.integers(1, 255))
        raw = bytes(raw)
    else:
        pos = data.draw(st.integers(0, len(good)))
        raw = good[:pos] + data.draw(st.binary(min_size=1, max_size=8)) + good[pos:]
    path = write(scratch, "fuzz.safetensors", raw)
    try:
        loaded, _ = train.read_checkpoint(path)
    except CheckpointError as e:
        assert "fuzz.safetensors" in str(e)
        return
    # it loaded: then it holds exactly what was saved (a change that keeps the JSON header
    # equivalent, e.g. one space for another, is harmless)
    assert mode != "random" and sorted(loaded) == sorted(tensors)
    for k in tensors:
        np.testing.assert_array_equal(loaded[k], tensors[k])
