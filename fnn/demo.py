"""The lecture's worked examples, with fnn's hand-written gradients beside jax.grad's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from fnn import ops


def _neuron(w, x):
    return 1.0 / (1.0 + ops.exp(-(w[0] * x[0] + w[1] * x[1] + w[2])))


EXAMPLES = [
    ("f(x, y, z) = (x + y) z", lambda x, y, z: (x + y) * z, (-2.0, 5.0, -4.0)),
    ("2-D sigmoid neuron 1 / (1 + exp(-(w0 x0 + w1 x1 + w2)))", _neuron,
     (jnp.array([2.0, -3.0, -3.0]), jnp.array([-1.0, -2.0]))),
    ("add gate distributes: x + y", lambda x, y: x + y, (3.0, -1.0)),
    ("mul gate swaps: x * y", lambda x, y: x * y, (3.0, -4.0)),
    ("max gate routes: max(x, y)", ops.maximum, (4.0, 5.0)),
    ("copy gate adds: 3x + 4x", lambda x: x * 3.0 + x * 4.0, (1.5,)),
    ("f(W, x) = ||W x||^2", lambda W, x: ops.sum((W @ x) ** 2),
     (jnp.array([[0.1, 0.5], [-0.3, 0.8]]), jnp.array([0.2, 0.4]))),
]


def _fmt(v) -> str:
    return np.array2string(np.asarray(v), precision=4, suppress_small=True).replace("\n", "")


def run(print_fn=print) -> bool:
    """Print each example's value and gradients (fnn vs jax.grad); True when all agree."""
    ok = True
    for title, f, args in EXAMPLES:
        nums = tuple(range(len(args)))
        value, mine = fnn.value_and_grad(f, argnums=nums)(*args)
        ref = jax.grad(f, argnums=nums)(*args)
        print_fn(f"{title}\n  value {_fmt(value)}")
        for i, (a, b) in enumerate(zip(mine, ref)):
            same = np.allclose(a, b, rtol=1e-6, atol=1e-7)
            ok &= bool(same)
            print_fn(f"  d/darg{i}: fnn {_fmt(a):28s} jax.grad {_fmt(b):28s} {'ok' if same else 'DIFFERENT'}")
    return ok
