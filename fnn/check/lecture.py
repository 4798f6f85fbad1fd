"""The worked examples of the CS231n lecture "Backpropagation and Neural Networks", in one place:
what `python -m fnn demo` prints beside jax.grad and what `python -m fnn graph lecture` draws.

    for ex in demo(): compare(ex)        # fnn.grad vs jax.grad of each example: a Comparison
    for ex in GRAPHS: graph(ex.f, *ex.args, title=ex.title).explain(ex.explain)

Nothing here computes at import (arrays are made when `demo()` is called), so the command line
can import it before the backend starts (fnn.runtime tunes it at `import fnn`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from fnn.check.numeric import rel_error
from fnn.check.tolerances import tolerance
from fnn.ops import exp, maximum, sigmoid
from fnn.ops import sum as ops_sum
from fnn.transforms import value_and_grad


def simple(x, y, z):
    """f(x, y, z) = (x + y) z."""
    return (x + y) * z


def neuron(w0, x0, w1, x1, w2):
    """The 2-D sigmoid neuron gate by gate: 1 / (1 + exp(-(w0 x0 + w1 x1 + w2)))."""
    return 1.0 / (1.0 + exp(-(w0 * x0 + w1 * x1 + w2)))


def sigmoid_neuron(w0, x0, w1, x1, w2):
    """The same neuron with one sigmoid gate (local gradient s (1 - s))."""
    return sigmoid(w0 * x0 + w1 * x1 + w2)


def neuron_wx(w, x):
    """The neuron on the vectors w = (w0, w1, w2) and x = (x0, x1)."""
    return neuron(w[0], x[0], w[1], x[1], w[2])


def copy_gate(x):
    """A value used twice: f(x) = 3x + 4x (the copy gate adds the gradients)."""
    return x * 3.0 + x * 4.0


def norm_wx(W, x):
    """f(W, x) = ||W x||^2."""
    return ops_sum((W @ x) ** 2)


W_NEURON, X_NEURON = (2.0, -3.0, -3.0), (-1.0, -2.0)  # the lecture's neuron: f = 0.73
NEURON_ARGS = (W_NEURON[0], X_NEURON[0], W_NEURON[1], X_NEURON[1], W_NEURON[2])


@dataclasses.dataclass(frozen=True)
class Example:
    """An example: its graph's file name, a title, the function, its arguments, and the gate
    `fnn graph lecture` explains (None in the demo)."""

    name: str
    title: str
    f: Callable
    args: tuple
    explain: str | None = None


def demo() -> list[Example]:
    """The examples `python -m fnn demo` prints, in the lecture's order."""
    return [
        Example("simple", "f(x, y, z) = (x + y) z", simple, (-2.0, 5.0, -4.0)),
        Example(
            "neuron",
            "2-D sigmoid neuron 1 / (1 + exp(-(w0 x0 + w1 x1 + w2)))",
            neuron_wx,
            (jnp.array(W_NEURON), jnp.array(X_NEURON)),
        ),
        Example("add", "add gate distributes: x + y", lambda x, y: x + y, (3.0, -1.0)),
        Example("multiply", "mul gate swaps: x * y", lambda x, y: x * y, (3.0, -4.0)),
        Example("maximum", "max gate routes: max(x, y)", maximum, (4.0, 5.0)),
        Example("copy_gate", "copy gate adds: 3x + 4x", copy_gate, (1.5,)),
        Example(
            "norm",
            "f(W, x) = ||W x||^2",
            norm_wx,
            (jnp.array([[0.1, 0.5], [-0.3, 0.8]]), jnp.array([0.2, 0.4])),
        ),
    ]


GRAPHS = [
    Example("simple", "f(x, y, z) = (x + y) z", simple, (-2.0, 5.0, -4.0), "multiply"),
    Example(
        "neuron", "f(w, x) = 1 / (1 + exp(-(w0 x0 + w1 x1 + w2)))", neuron, NEURON_ARGS, "divide"
    ),
    Example(
        "sigmoid_gate",
        "the same neuron with one sigmoid gate: local gradient s (1 - s)",
        sigmoid_neuron,
        NEURON_ARGS,
        "sigmoid",
    ),
    Example(
        "copy_gate",
        "a value used twice: f(x) = 3x + 4x (the gradients add)",
        copy_gate,
        (1.5,),
        "add",
    ),
]


@dataclasses.dataclass
class Comparison:
    """An example's value and, per argument, (fnn's gradient, jax.grad's, whether they agree)."""

    example: Example
    value: object
    grads: list

    @property
    def ok(self) -> bool:
        return all(same for _, _, same in self.grads)


def compare(example: Example) -> Comparison:
    """fnn.grad and jax.grad of the example wrt every argument (tolerance "gate" by dtype)."""
    nums = tuple(range(len(example.args)))
    value, mine = value_and_grad(example.f, argnums=nums)(*example.args)
    ref = jax.grad(example.f, argnums=nums)(*example.args)
    return Comparison(
        example,
        value,
        [
            (a, b, rel_error(a, b) <= tolerance("gate", jnp.result_type(b)))
            for a, b in zip(mine, ref)
        ],
    )
