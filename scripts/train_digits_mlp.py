#!/usr/bin/env python
"""The lecture's MLP on scikit-learn's 8x8 digits (bundled, no download).

    python scripts/train_digits_mlp.py [any `python -m fnn train` option, e.g. --grad builtin]

Uses the GPU when JAX sees one, and prints the device it runs on.
"""

from _train import run

if __name__ == "__main__":
    raise SystemExit(
        run(
            [
                "--model",
                "mlp",
                "--dataset",
                "digits",
                "--hidden",
                "256",
                "--optimizer",
                "adam",
                "--lr",
                "1e-3",
                "--schedule",
                "cosine",
                "--epochs",
                "30",
                "--batch-size",
                "32",
            ]
        )
    )
