"""Benchmark fnn's hand-written gradients against jax.grad (and PyTorch when installed).

    python scripts/bench.py                        # every case: tables on stdout
    python scripts/bench.py --quick                # tiny sizes: a smoke run
    python scripts/bench.py --only mlp,cnn --reps 100 --json out.json --markdown out.md

The same as `python -m fnn bench`; the cases, the protocol and the JSON are described in
fnn/bench.py.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fnn import bench  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench.add_arguments(p)
    return bench.main(p.parse_args(argv))


if __name__ == "__main__":
    main()
