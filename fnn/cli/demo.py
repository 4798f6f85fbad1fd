"""`python -m fnn demo`: the lecture's worked examples (fnn.check.lecture) with fnn's gradients
printed beside jax.grad's; exit 1 if any differ."""

from __future__ import annotations

import numpy as np

from fnn.check.lecture import compare, demo


HELP = "the lecture's worked examples: fnn's gradients beside jax.grad's"
DESCRIPTION = (
    "Print the CS231n backpropagation examples with fnn's hand-written gradients next "
    "to jax.grad's; exit 1 if any differ."
)


def add_arguments(parser) -> None:
    """No options of its own."""


def _fmt(v) -> str:
    return np.array2string(np.asarray(v), precision=4, suppress_small=True).replace("\n", "")


def run(args) -> int:
    ok = True
    for ex in demo():
        c = compare(ex)
        print(f"{ex.title}\n  value {_fmt(c.value)}")
        for i, (a, b, same) in enumerate(c.grads):
            print(
                f"  d/darg{i}: fnn {_fmt(a):28s} jax.grad {_fmt(b):28s} "
                f"{'ok' if same else 'DIFFERENT'}"
            )
        ok &= c.ok
    return 0 if ok else 1
