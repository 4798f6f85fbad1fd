"""The gate of JAX's dot_general: every matrix product (`@`, jnp.dot, einsum, tensordot).

dot_general contracts some axes of x with some axes of y, keeps batch axes paired, and puts the
result's axes in the order (batch, x's free axes, y's free axes). The lecture's vector rule
generalizes: dx is g contracted with y over y's free axes (then x's axes put back in order), dy
the same with the roles swapped; no Jacobian is formed.
"""

import numpy as np
from jax import lax
from jax.extend.core import primitives as P

from fnn.autodiff.case_values import cnormal, normal
from fnn.autodiff.gate import primitive_gate
from fnn.autodiff.primitive_cases import case


def _free(ndim, *taken):
    used = {int(i) for t in taken for i in t}
    return [i for i in range(ndim) if i not in used]


def _dx(g, x_shape, x_dtype, y, dimension_numbers, precision, preferred_element_type, swap):
    """The gradient of x in dot_general(x, y) (of y when swap: g's free axes then come y's
    first), after JAX's transpose rule: contract g with y over y's free axes."""
    (x_contract, y_contract), (x_batch, y_batch) = dimension_numbers
    x_ndim = len(x_shape)
    x_kept = _free(x_ndim, x_contract, x_batch)
    y_kept = _free(np.ndim(y), y_contract, y_batch)
    nb = len(x_batch)
    if swap:  # g's axes: batch, y's free, x's free
        ans_y = list(range(nb, nb + len(y_kept)))
    else:  # batch, x's free, y's free
        ans_y = list(range(nb + len(x_kept), nb + len(x_kept) + len(y_kept)))
    ans_batch = list(range(nb))
    dims = ((ans_y, y_kept), (ans_batch, list(y_batch)))
    x_contract_by_y = list(np.take(x_contract, np.argsort(y_contract)))
    unsorted = list(x_batch) + x_kept + x_contract_by_y
    out = lax.dot_general(
        g, y, dims, precision=precision, preferred_element_type=preferred_element_type
    )
    dx = lax.transpose(out, tuple(int(i) for i in np.argsort(unsorted)))
    return dx.astype(x_dtype)


@primitive_gate(
    P.dot_general_p,
    lecture="matmul",
    params=("dimension_numbers", "precision", "preferred_element_type"),
    only={"out_sharding": (None,)},
    complex=True,
)
def dot_general(
    g, inputs, *, dimension_numbers, precision=None, preferred_element_type=None, needs, **params
):
    """sum over contracted axes of x * y, batch axes paired.  Local gradients (2-D x @ y):
    dx = g @ y.T and dy = x.T @ g; in general g contracted with the other operand over its
    free axes, the result's axes put back in the operand's order."""
    x, y = inputs
    (xc, yc), (xb, yb) = dimension_numbers
    dx = dy = None
    if needs[0]:
        dx = _dx(
            g, x.shape, x.dtype, y, dimension_numbers, precision, preferred_element_type, swap=False
        )
    if needs[1]:
        dy = _dx(
            g,
            y.shape,
            y.dtype,
            x,
            ((yc, xc), (yb, xb)),
            precision,
            preferred_element_type,
            swap=True,
        )
    return dx, dy


@dot_general.defcases
def _dot_general_cases(rng, dtype):
    n = lambda *s: normal(rng, s, dtype)
    c = lambda *s: cnormal(rng, s, dtype)
    dg = lambda dims: lambda a, b: lax.dot_general(a, b, dims)
    import jax.numpy as jnp

    return [
        case(P.dot_general_p, lambda a, b: a @ b, n(3, 4), n(4, 5), label="matmul"),
        case(P.dot_general_p, lambda a, b: a @ b, n(4), n(4, 2), label="vector @ matrix"),
        case(P.dot_general_p, lambda a, b: jnp.dot(a, b), n(5), n(5), label="inner"),
        case(
            P.dot_general_p,
            lambda a, b: jnp.einsum("bij,bjk->bik", a, b),
            n(2, 3, 4),
            n(2, 4, 2),
            label="batched",
        ),
        case(
            P.dot_general_p,
            lambda a, b: jnp.einsum("ij,kj->ik", a, b),
            n(3, 4),
            n(2, 4),
            label="a @ b.T",
        ),
        case(
            P.dot_general_p,
            dg((((0, 2), (2, 0)), ((1,), (1,)))),
            n(3, 2, 4),
            n(4, 2, 3),
            label="two contractions, batch in the middle",
        ),
        case(P.dot_general_p, lambda a, b: jnp.tensordot(a, b, axes=0), n(2), n(3), label="outer"),
        case(
            P.dot_general_p,
            lambda a, b: jnp.einsum("bij,bjk->bik", a, b),
            c(2, 3, 4),
            c(2, 4, 2),
            label="complex, batched",
        ),
    ]


dot_general.defkinks(smooth=True)
