"""The affine gate of `fnn.nn.Dense`: x flattened to (N, D), then x @ w + b, as one gate with a
fused rule (the other products and shapes are JAX's own functions under the lecture's names,
fnn.ops.aliases, differentiated by their primitives' rules).

The lecture's vector rule: for y = x @ w, dx = g @ w.T and dw = x.T @ g; the shapes alone fix
the order of the product, and no Jacobian is ever built.
"""

import jax.numpy as jnp
import numpy as np
from jax import lax

from fnn.autodiff.case_values import normal
from fnn.autodiff.gate import Case, defgate
from fnn.errors import GateError, describe


# ---- affine -------------------------------------------------------------------------------------
@defgate
def affine(x, w, b):
    """Flatten x (N, d1..dk) to (N, D), then x @ w + b with w (D, M), b (M,) -> (N, M).

    Local gradients: dx = (g @ w.T).reshape(x.shape), dw = x.T @ g, db = sum_N g.

    Args:
        x: (N, d1..dk), flattened to (N, D).
        w: (D, M).
        b: (M,).

    Returns:
        (N, M).

    Raises:
        fnn.GateError: the shapes of x, w and b do not fit together.
    """
    if jnp.ndim(x) < 1 or jnp.ndim(w) != 2 or jnp.ndim(b) != 1:
        raise GateError(
            f"gate 'affine': expects x (N, ...), w (D, M), b (M,); got x {describe(x)}, "
            f"w {describe(w)}, b {describe(b)}"
        )
    n = x.shape[0]
    d = int(np.prod(x.shape[1:]))
    if d != w.shape[0] or w.shape[1] != b.shape[0]:
        raise GateError(
            f"gate 'affine': x {describe(x)} flattens to ({n}, {d}) which does not fit "
            f"w {describe(w)} and b {describe(b)}"
        )
    xf = jnp.reshape(x, (n, d))
    return xf @ w + b, (xf, w, x.shape, jnp.result_type(b))


@affine.defvjp
def affine_vjp(g, saved, *, needs):
    xf, w, x_shape, b_dtype = saved
    dx = jnp.reshape(g @ w.T, x_shape).astype(xf.dtype) if needs[0] else None
    dw = _xt_g(xf, g).astype(w.dtype) if needs[1] else None
    db = jnp.sum(g, axis=0) if needs[2] else None
    return dx, dw, (db.astype(b_dtype) if db is not None else None)


def _xt_g(xf, g):
    """xf.T @ g. For a g of few columns (a classifier layer's) on CPU, xf.T is first copied out:
    XLA's CPU dot runs the transposed operand 2-3x slower there (measured in
    docs/benchmarks.md); the barrier keeps XLA from folding the copy back into the dot. Wider g
    and other platforms take the transposed operand as it is (one dot_general): XLA fuses xf's
    producer into such a copy (a transformer MLP's whole exact GELU was computed again there,
    in transposed order: 1.75x the built-in step), and for wide g the copy saves little."""
    if g.shape[-1] > COPY_XT_COLUMNS:
        return xf.T @ g
    return lax.platform_dependent(
        xf, g, cpu=lambda a, b: lax.optimization_barrier(a.T) @ b, default=lambda a, b: a.T @ b
    )


COPY_XT_COLUMNS = 128  # _xt_g copies xf.T out on CPU for a g of at most this many columns


@affine.defcases
def _affine_cases(rng, dtype):
    shapes = [((4, 3), (3, 5)), ((2, 3, 2), (6, 4)), ((1, 2, 2, 2), (8, 3))]
    return [
        Case(
            (normal(rng, xs, dtype), normal(rng, ws, dtype), normal(rng, ws[1:], dtype)),
            label=f"{xs}",
        )
        for xs, ws in shapes
    ]


affine.defkinks(smooth=True)
