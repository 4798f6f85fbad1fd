"""Shared by the training scripts: find fnn from a checkout, report the device, run `fnn train`."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(defaults: list[str]) -> int:
    """`python -m fnn train` with `defaults`, then the script's own arguments (which win)."""
    if "--no-tune" in sys.argv[1:]:
        os.environ["FNN_NO_TUNE"] = "1"  # `import fnn` below then keeps JAX's defaults
    from fnn.cli import main  # importing fnn applies its CPU settings (fnn.runtime)
    import jax

    devices = jax.devices()
    kind = devices[0].platform
    print(f"JAX {jax.__version__} on {kind}: {', '.join(str(d) for d in devices)}")
    if kind == "cpu":
        print(
            '(no GPU visible to JAX; on a CUDA machine: pip install -e ".[cuda]", '
            'see the README, "On a GPU")'
        )
    return main(["train", *defaults, *sys.argv[1:]])
