"""Datasets as arrays: bundled digits, MNIST, Fashion-MNIST, CIFAR-10; splits; standardization.

Images are float32 NHWC, labels int32. Splits are fixed (split_seed, not the training seed), so
runs with different seeds are compared on the same validation and test examples.

    digits          scikit-learn's 8x8 handwritten digits, 1797 images, no download;
                    20% held out as test set
    mnist           28x28x1, 60000 train + 10000 test, IDX files in data_dir
    fashion-mnist   same format and file names as MNIST
    cifar10         32x32x3, 50000 train + 10000 test, binary version in data_dir
    text            byte-level windows of a text file or folder (data_dir), by default the
                    Python standard library's modules (fnn.train.text): x (N, T) token ids,
                    y (N, T) the next token at every position
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from fnn.train.readers import DataError, read_cifar10, read_mnist

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "text")
"""The datasets load_dataset (and `--dataset`) reads, by name."""
IMAGE_DATASETS = DATASETS[:4]


@dataclasses.dataclass
class Dataset:
    """Train / validation / test arrays of one dataset, standardized with the train statistics.

    x_*: float32 (N, H, W, C); y_*: int32 (N,). `mean`, `std` (C,) are the per-channel
    statistics that were subtracted and divided (apply them to new inputs too).
    Text (fnn.train.text): x_* and y_* int32 (N, T) token ids; `vocab` maps ids to bytes,
    `unigram_loss` is the entropy of the training bytes in nats (the loss of a model that
    ignores the context), `description` names the corpus. `sha256`: a fingerprint of the data
    read (the text's bytes; the images and labels as read from their files, before --limit,
    the splits and standardization), which a resumed run compares with its checkpoint's.

    Attributes:
        name: the dataset's name (fnn.train.DATASETS).
        x_train: the training inputs.
        y_train: the training labels.
        x_val: the validation inputs (split off the training set).
        y_val: the validation labels.
        x_test: the test inputs.
        y_test: the test labels.
        num_classes: the number of classes (for text: of tokens).
        mean: the per-channel mean subtracted (None: not standardized).
        std: the per-channel std divided by (None: not standardized).
        vocab: text only: the fnn.train.Vocab mapping token ids to bytes.
        unigram_loss: text only: the entropy of the training bytes in nats.
        description: text only: what the corpus is.
        sha256: a fingerprint of the data read (see above), or None.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int = 10
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    vocab: object = None
    unigram_loss: float | None = None
    description: str = ""
    sha256: str | None = None  # of the data read (files' bytes, as decoded); None: not known

    @property
    def input_shape(self) -> tuple:
        """Shape of one example, e.g. (8, 8, 1)."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self):
        what = (
            f"{self.num_classes} tokens, {self.description}"
            if self.vocab is not None
            else f"{self.num_classes} classes"
        )
        return (
            f"Dataset({self.name!r}: train {len(self.x_train)}, val {len(self.x_val)}, "
            f"test {len(self.x_test)}, input {self.input_shape}, {what})"
        )


def standardize(x_train, *others, eps: float = 1e-6):
    """Subtract the per-channel mean and divide by the per-channel std of x_train (N, ..., C).

    Args:
        x_train: the arrays the statistics come from.
        *others: further arrays standardized alike.
        eps: the least std (a channel of smaller std is divided by eps).

    Returns:
        (x_train, *others, mean, std), all float32.
    """
    axes = tuple(range(x_train.ndim - 1))
    mean = x_train.mean(axis=axes, dtype=np.float64)
    std = np.maximum(x_train.std(axis=axes, dtype=np.float64), eps)
    out = [((x - mean) / std).astype(np.float32) for x in (x_train, *others)]
    return (*out, mean.astype(np.float32), std.astype(np.float32))


def split(x, y, fraction: float, seed: int = 0):
    """Shuffle (x, y) with `seed`, split off `fraction`.

    Args:
        x: the inputs.
        y: the labels.
        fraction: the fraction split off, in [0, 1).
        seed: the shuffle's seed.

    Returns:
        (x_rest, y_rest, x_part, y_part).

    Raises:
        ValueError: `fraction` is not in [0, 1).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"split fraction must be in [0, 1), got {fraction!r}")
    order = np.random.default_rng(seed).permutation(len(x))
    k = int(round(len(x) * fraction))
    part, rest = order[:k], order[k:]
    return x[rest], y[rest], x[part], y[part]


def fingerprint(arrays: dict) -> str:
    """sha256 (hex) of x/y_train and x/y_test: their dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for k in ("x_train", "y_train", "x_test", "y_test"):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(memoryview(a.reshape(-1).view(np.uint8)))
    return h.hexdigest()


def load_raw(name: str, data_dir: str | None = None, *, split_seed: int = 0) -> dict:
    """Unscaled float32 images (N, H, W, C) in [0, 1] and int32 labels: x/y_train, x/y_test."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = (d.images[..., None] / 16.0).astype(np.float32)
        x_train, y_train, x_test, y_test = split(x, d.target, 0.2, split_seed)
        raw = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
        raw["sha256"] = fingerprint(raw)
    elif name in ("mnist", "fashion-mnist", "cifar10"):
        if not data_dir:
            raise DataError(
                f"dataset {name!r} is read from local files: pass their directory "
                "with --data-dir (data_dir=...)"
            )
        raw = read_cifar10(data_dir) if name == "cifar10" else read_mnist(data_dir, name)
        raw["sha256"] = fingerprint(raw)
        for k in ("x_train", "x_test"):
            x = raw[k].astype(np.float32) / 255.0
            raw[k] = x if x.ndim == 4 else x[..., None]
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    raw["y_train"] = raw["y_train"].astype(np.int32)
    raw["y_test"] = raw["y_test"].astype(np.int32)
    return raw


def load_dataset(
    name: str = "digits",
    data_dir: str | None = None,
    *,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    standardize_inputs: bool = True,
    limit: int | None = None,
    context: int = 128,
) -> Dataset:
    """A Dataset with a validation split taken from the training set (val_fraction of it).

    Args:
        name: the dataset (fnn.train.DATASETS).
        data_dir: the directory holding its files (text: a text file or folder; None: the
            dataset's default).
        val_fraction: the fraction of the training set split off for validation.
        split_seed: the seed of that split.
        standardize_inputs: standardize the inputs with the train statistics.
        limit: keeps only the first `limit` training and test examples (quick experiments).
        context: "text": windows of `context` bytes, split by position
            (fnn.train.text.load_text).

    Returns:
        The Dataset.

    Raises:
        ValueError: the name or an option is not valid.
        DataError: the files are missing or damaged.
    """
    if name == "text":
        return _text_dataset(data_dir, context=context, val_fraction=val_fraction, limit=limit)
    return _image_dataset(name, data_dir, val_fraction, split_seed, standardize_inputs, limit)


def _text_dataset(data_dir, *, context: int, val_fraction: float, limit) -> Dataset:
    """load_dataset of "text": fnn.train.text.load_text's windows, vocabulary and statistics."""
    from fnn.train.text import load_text

    t = load_text(data_dir, context=context, val_fraction=val_fraction, limit=limit)
    return Dataset(
        "text",
        t["x_train"],
        t["y_train"],
        t["x_val"],
        t["y_val"],
        t["x_test"],
        t["y_test"],
        len(t["vocab"]),
        vocab=t["vocab"],
        unigram_loss=t["unigram_loss"],
        description=t["description"],
        sha256=t["sha256"],
    )


def _image_dataset(
    name: str, data_dir, val_fraction: float, split_seed: int, standardize_inputs: bool, limit
) -> Dataset:
    """load_dataset of an image dataset: load_raw's arrays cut to `limit`, the validation set
    split off the training set (seed split_seed + 1), all standardized with the training set's
    statistics when `standardize_inputs`."""
    raw = load_raw(name, data_dir, split_seed=split_seed)
    x_train, y_train = raw["x_train"], raw["y_train"]
    x_test, y_test = raw["x_test"], raw["y_test"]
    if limit:
        x_train, y_train, x_test, y_test = (
            x_train[:limit],
            y_train[:limit],
            x_test[:limit],
            y_test[:limit],
        )
    x_train, y_train, x_val, y_val = split(x_train, y_train, val_fraction, split_seed + 1)
    mean = std = None
    if standardize_inputs:
        x_train, x_val, x_test, mean, std = standardize(x_train, x_val, x_test)
    return Dataset(
        name, x_train, y_train, x_val, y_val, x_test, y_test, 10, mean, std, sha256=raw["sha256"]
    )
