"""Datasets: the bundled digits, and MNIST/Fashion-MNIST/CIFAR-10 read from small files the tests
write in the exact on-disk formats (IDX plain and gzip; CIFAR-10 binary); errors for missing and
malformed files."""

import gzip
import os
import struct

import numpy as np
import pytest

from fnn.train import DataError, load_dataset, read_cifar10_file, read_idx, split, standardize
from fnn.train.readers import MNIST_FILES


def write_idx(path, array, type_code=0x08, compress=False):
    array = np.asarray(array)
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    data = header + array.astype(dtype[type_code]).tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if compress else data)


def write_mnist(directory, n_train=40, n_test=12, size=6, compress=True, seed=0):
    """MNIST-format files; image i has all pixels equal to (label_i * 20 + i) % 256."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    out = {}
    for split_name, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        values = ((labels * 20 + np.arange(n)) % 256).astype(np.uint8)
        images = np.broadcast_to(values[:, None, None], (n, size, size)).copy()
        suffix = ".gz" if compress else ""
        write_idx(
            os.path.join(directory, MNIST_FILES[f"{split_name}_images"] + suffix),
            images,
            compress=compress,
        )
        write_idx(
            os.path.join(directory, MNIST_FILES[f"{split_name}_labels"] + suffix),
            labels,
            compress=compress,
        )
        out[split_name] = (images, labels)
    return out


def write_cifar(directory, n_per_file=4, seed=0):
    """CIFAR-10 binary files: records of 1 label byte + 1024 R + 1024 G + 1024 B bytes."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, n_per_file).astype(np.uint8)
        images = rng.integers(0, 256, (n_per_file, 32, 32, 3)).astype(np.uint8)
        planes = images.transpose(0, 3, 1, 2).reshape(n_per_file, 3072)  # CHW, row-major planes
        records = np.concatenate([labels[:, None], planes], axis=1)
        with open(os.path.join(directory, name), "wb") as f:
            f.write(records.tobytes())
        written[name] = (images, labels)
    return written


# ---- IDX ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "type_code,dtype", [(0x08, np.uint8), (0x0B, np.int16), (0x0D, np.float32)]
)
def test_read_idx_round_trip(tmp_path, compress, type_code, dtype):
    a = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype) % 200
    path = str(tmp_path / "a.idx")
    write_idx(path, a, type_code, compress)
    b = read_idx(path)
    assert b.shape == a.shape and b.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_from_idx_files(tmp_path, compress):
    written = write_mnist(tmp_path, compress=compress)
    data = load_dataset("mnist", str(tmp_path), val_fraction=0.25, standardize_inputs=False)
    assert data.x_train.shape == (30, 6, 6, 1) and data.x_val.shape == (10, 6, 6, 1)
    assert data.x_test.shape == (12, 6, 6, 1) and data.x_train.dtype == np.float32
    assert data.y_test.dtype == np.int32
    images, labels = written["test"]
    np.testing.assert_array_equal(data.y_test, labels)  # test set keeps its order
    np.testing.assert_allclose(data.x_test[..., 0], images / 255.0, rtol=1e-6)
    # train + val are a permutation of the training file, image/label pairs intact
    x = np.concatenate([data.x_train, data.x_val])[:, 0, 0, 0]
    y = np.concatenate([data.y_train, data.y_val])
    tr_images, tr_labels = written["train"]
    pairs = sorted(zip(np.round(x * 255).astype(int).tolist(), y.tolist()))
    assert pairs == sorted(zip(tr_images[:, 0, 0].tolist(), tr_labels.tolist()))


def test_fashion_mnist_uses_same_format(tmp_path):
    write_mnist(tmp_path)
    data = load_dataset("fashion-mnist", str(tmp_path))
    assert data.name == "fashion-mnist" and data.input_shape == (6, 6, 1)


def test_missing_mnist_file_names_it_and_the_source(tmp_path):
    write_mnist(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte") as e:
        load_dataset("mnist", str(tmp_path))
    assert "https://" in str(e.value)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="fashion-mnist"):
        load_dataset("fashion-mnist", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("mnist", None)


@pytest.mark.parametrize("damage", ["magic", "truncated", "gzip", "ndim", "count"])
def test_malformed_idx_files(tmp_path, damage):
    write_mnist(tmp_path, compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    raw = path.read_bytes()
    if damage == "magic":
        path.write_bytes(b"\x01\x02" + raw[2:])
    elif damage == "truncated":
        path.write_bytes(raw[:-7])
    elif damage == "gzip":
        path.unlink()
        (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw)[:-20])
    elif damage == "ndim":
        write_idx(str(path), np.zeros((40, 36), np.uint8))
    elif damage == "count":
        write_idx(str(path), np.zeros((39, 6, 6), np.uint8))
    with pytest.raises(DataError, match="train-images-idx3-ubyte") as e:
        load_dataset("mnist", str(tmp_path))
    assert "Get the mnist files" in str(e.value)


# ---- CIFAR-10 ----------------------------------------------------------------------------------
def test_cifar10_binary_layout(tmp_path):
    written = write_cifar(tmp_path)
    images, labels = read_cifar10_file(str(tmp_path / "test_batch.bin"))
    np.testing.assert_array_equal(images, written["test_batch.bin"][0])  # NHWC, RGB last
    np.testing.assert_array_equal(labels, written["test_batch.bin"][1])
    data = load_dataset("cifar10", str(tmp_path), val_fraction=0.2, standardize_inputs=False)
    assert data.x_train.shape == (16, 32, 32, 3) and data.x_val.shape == (4, 32, 32, 3)
    np.testing.assert_allclose(data.x_test, written["test_batch.bin"][0] / 255.0, rtol=1e-6)


def test_cifar10_found_in_extracted_folder(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-bin")
    assert load_dataset("cifar10", str(tmp_path)).x_test.shape == (4, 32, 32, 3)


def test_cifar10_errors(tmp_path):
    write_cifar(tmp_path)
    os.remove(tmp_path / "data_batch_3.bin")
    with pytest.raises(DataError, match="data_batch_3.bin.*cifar-10-binary.tar.gz"):
        load_dataset("cifar10", str(tmp_path))
    write_cifar(tmp_path)
    with open(tmp_path / "test_batch.bin", "ab") as f:
        f.write(b"\0" * 10)
    with pytest.raises(DataError, match="test_batch.bin.*3073"):
        load_dataset("cifar10", str(tmp_path))


# ---- digits, splits, standardization -----------------------------------------------------------
def test_digits_bundled_and_split_fixed():
    a = load_dataset("digits", val_fraction=0.1)
    b = load_dataset("digits", val_fraction=0.1)
    assert len(a.x_train) + len(a.x_val) + len(a.x_test) == 1797
    assert a.input_shape == (8, 8, 1) and len(a.x_test) == 359 and len(a.x_val) == 144
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert abs(float(a.x_train.mean())) < 1e-5 and abs(float(a.x_train.std()) - 1) < 1e-4
    assert set(np.unique(a.y_train)) == set(range(10))


def test_unknown_dataset():
    with pytest.raises(ValueError, match="digits, mnist"):
        load_dataset("imagenet")


def test_split_and_standardize():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.arange(10)
    xr, yr, xp, yp = split(x, y, 0.3, seed=1)
    assert len(xp) == 3 and len(xr) == 7
    assert sorted(np.concatenate([yr, yp]).tolist()) == list(range(10))
    np.testing.assert_array_equal(xp[:, 0], 2 * yp)
    a, b, mean, std = standardize(x, x + 1)
    np.testing.assert_allclose(a.mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(b, a + 1 / std, rtol=1e-5)
    assert mean.shape == (2,) and std.shape == (2,)
    with pytest.raises(ValueError):
        split(x, y, 1.0)


# ---- every reader error names its file (issue 16) ----------------------------------------------
def _damage_mnist(directory, how):
    """Write MNIST files into `directory` and damage one; returns the damaged file's name."""
    write_mnist(directory, compress=False)
    images = os.path.join(directory, MNIST_FILES["train_images"])
    labels = os.path.join(directory, MNIST_FILES["train_labels"])
    if how == "fewer labels":
        write_idx(labels, np.zeros(39, np.uint8))
        return labels
    if how == "label 12":
        write_idx(labels, np.full(40, 12, np.uint8))
        return labels
    if how == "images of floats":
        write_idx(images, np.zeros((40, 6, 6), np.float32), type_code=0x0D)
        return images
    if how == "damaged gzip":
        raw = gzip.compress(open(images, "rb").read())
        os.remove(images)
        with open(images + ".gz", "wb") as f:
            f.write(raw[:20] + bytes(len(raw) - 20))
        return images + ".gz"
    if how == "not IDX":
        with open(images, "wb") as f:
            f.write(b"P5 6 6 255\n" + bytes(36))
        return images
    raise ValueError(how)


@pytest.mark.parametrize(
    "how", ["fewer labels", "label 12", "images of floats", "damaged gzip", "not IDX"]
)
def test_reader_errors_name_the_file(tmp_path, how):
    path = _damage_mnist(str(tmp_path / "m"), how)
    with pytest.raises(DataError) as info:
        load_dataset("mnist", str(tmp_path / "m"))
    assert path in str(info.value), str(info.value)
