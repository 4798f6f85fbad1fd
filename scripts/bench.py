"""Benchmark fnn's hand-written gradients against jax.grad (and PyTorch when installed).

    python scripts/bench.py                        # every case: tables on stdout
    python scripts/bench.py --quick                # tiny sizes: a smoke run
    python scripts/bench.py --only mlp,cnn --reps 100 --json out.json --markdown out.md

The same as `python -m fnn bench`; the cases, the protocol and the JSON are described in
the fnn.bench package.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":
    if "--no-tune" in sys.argv[1:]:
        os.environ["FNN_NO_TUNE"] = "1"  # `import fnn` below then keeps JAX's defaults
    from fnn.cli import main

    raise SystemExit(main(["bench", *sys.argv[1:]], tune=True))
