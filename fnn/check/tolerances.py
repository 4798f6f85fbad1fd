"""How close two gradients must be, by what is compared and the dtype: the one table.

Every checker reads its tolerance here (`tolerance(kind, dtype)`); each is a bound on the
CS231n relative error max|a - b| / (max|a| + max|b|) of fnn.check.numeric.rel_error.

    forward    fnn's recorded call of a gate vs the gate's forward alone (the same arithmetic)
    gate       one gate's hand-written VJP vs jax.vjp of its forward, at its test cases
    model      fnn.grad vs jax.grad of a whole model (check_grads, the gradient-health drift
               monitor), or of one gate inside a model (locate_divergence): rounding builds up
    numeric    an analytic gradient vs central differences taken in float64 (a gate at its test
               cases, or check_grads' sampled elements): the analytic gradient's own rounding
    transform  fnn under a JAX transform (jit, vmap, grad of vmap, vmap of grad) vs jax.vjp
               under the same transform (the gate checker runs these in float64)
    harness    fnn.vjp vs jax.vjp of one of JAX's own primitive use cases (its test-harness
               table, tests/test_jax_harnesses.py): a few primitives, JAX's arguments

A dtype not in a row (an integer dtype, say) gets the row's float32 value.
"""

from __future__ import annotations

import numpy as np

TOLERANCES = {
    "forward": {"float64": 1e-12, "float32": 1e-6, "float16": 1e-3, "bfloat16": 1e-2},
    "gate": {"float64": 1e-10, "float32": 2e-5, "float16": 5e-3, "bfloat16": 2e-2},
    "model": {"float64": 1e-9, "float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2},
    "numeric": {"float64": 1e-6, "float32": 1e-3, "float16": 3e-2, "bfloat16": 1e-1},
    "transform": {"float64": 1e-8, "float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2},
    "harness": {"float64": 1e-10, "float32": 1e-5, "float16": 5e-3, "bfloat16": 2e-2},
}


def tolerance(kind: str, dtype) -> float:
    """The tolerance of `kind` (a row of TOLERANCES) for `dtype`.

    Args:
        kind: "forward", "gate", "model", "numeric", "transform" or "harness".
        dtype: a dtype's name or a numpy dtype; one without a row entry gets float32's.

    Returns:
        The relative tolerance.

    Raises:
        ValueError: `kind` is not a row of TOLERANCES.
    """
    try:
        row = TOLERANCES[kind]
    except KeyError:
        raise ValueError(f"unknown tolerance {kind!r}; kinds: {', '.join(TOLERANCES)}") from None
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    return row.get(name, row["float32"])
