#!/usr/bin/env python
"""A conv-relu-pool CNN on CIFAR-10 (binary version).

    python scripts/train_cifar10_cnn.py --data-dir DIR [more `python -m fnn train` options]

DIR holds data_batch_1.bin .. data_batch_5.bin and test_batch.bin, or the
cifar-10-batches-bin folder extracted from
https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz; default: $FNN_DATA/cifar10 or
data/cifar10. Add --model resnet for the small residual network. Meant for a GPU (it uses one
when JAX sees one, and prints the device); on a CPU an epoch takes minutes.
"""

import os

from _train import run

if __name__ == "__main__":
    data_dir = os.path.join(os.environ.get("FNN_DATA", "data"), "cifar10")
    raise SystemExit(
        run(
            [
                "--model",
                "cnn",
                "--dataset",
                "cifar10",
                "--data-dir",
                data_dir,
                "--channels",
                "32,64,128",
                "--optimizer",
                "adamw",
                "--lr",
                "1e-3",
                "--weight-decay",
                "5e-4",
                "--schedule",
                "cosine",
                "--epochs",
                "30",
                "--batch-size",
                "128",
                "--dropout",
                "0.3",
            ]
        )
    )
