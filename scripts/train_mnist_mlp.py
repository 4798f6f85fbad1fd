#!/usr/bin/env python
"""A 2-hidden-layer MLP on MNIST (about 98% test accuracy).

    python scripts/train_mnist_mlp.py --data-dir DIR [more `python -m fnn train` options]

DIR holds train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz
and t10k-labels-idx1-ubyte.gz (from https://storage.googleapis.com/cvdf-datasets/mnist/);
default: $FNN_DATA/mnist or data/mnist. Add --dataset fashion-mnist (and its directory) for
Fashion-MNIST. Uses the GPU when JAX sees one, and prints the device it runs on.
"""

import os

from _train import run

if __name__ == "__main__":
    data_dir = os.path.join(os.environ.get("FNN_DATA", "data"), "mnist")
    raise SystemExit(
        run(
            [
                "--model",
                "mlp",
                "--dataset",
                "mnist",
                "--data-dir",
                data_dir,
                "--hidden",
                "512,256",
                "--optimizer",
                "adamw",
                "--lr",
                "1e-3",
                "--weight-decay",
                "1e-4",
                "--schedule",
                "cosine",
                "--epochs",
                "20",
                "--batch-size",
                "128",
            ]
        )
    )
