"""The gate of lax.custom_linear_solve (behind jnp.linalg.solve/inv/slogdet,
jax.scipy.linalg.solve, jax.scipy.sparse.linalg.cg): x = solve(matvec, b), whose matrix is a
function (matvec) interpreted with the rules in use.

A solve x = A^{-1} b is linear in b and, through the inverse, smooth in A: with z = A^{-T} xbar
(one solve with the transposed map), bbar = z and Abar = -z x^T (Giles 2008, "An extended
collection of matrix derivative results"). Here A is a function whose constants may be
differentiated values: their gradient is matvec's own backward at the solution, seeded with -z
(fnn's interpreter runs matvec's jaxpr on a tape of its own, with the table of rules the gate is
given).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax.extend.core import primitives as P

from fnn.autodiff.backward import backward
from fnn.autodiff.case_values import cnormal, normal, spd
from fnn.autodiff.gate import primitive_gate
from fnn.autodiff.primitive_cases import case
from fnn.autodiff.structural.loops import FNN_PARAMS, Body, body_interpreter, control_rule
from fnn.errors import JAX_REFUSES_TOO, GateError


def _split(args, const_lengths):
    """(matvec consts, vecmat consts, solve consts, transpose_solve consts, b)."""
    out, start = [], 0
    for n in const_lengths:
        out.append(list(args[start : start + n]))
        start += n
    return out + [list(args[start:])]


def _linear_solve_forward(*args, const_lengths, jaxprs, rules=None, scope=""):
    x = P.linear_solve_p.bind(*args, const_lengths=const_lengths, jaxprs=jaxprs)
    return tuple(x), (list(args), tuple(x))


@primitive_gate(
    P.linear_solve_p,
    forward=_linear_solve_forward,
    params=("const_lengths", "jaxprs") + FNN_PARAMS,
    complex=True,
)
def custom_linear_solve(g, saved, *, const_lengths, jaxprs, rules=None, scope="", needs):
    """x = solve(matvec, b), the solution of A x = b for the linear map A = matvec (whose
    constants may be differentiated), by the user's `solve`; its aux outputs carry no gradient.
    Local gradients (implicit differentiation of A x = b, as JAX's rule: dx = A^{-1} (db - dA x)),
    with z = A^{-T} xbar computed by `transpose_solve` applied to vecmat (matvec's transpose),
    JAX's transpose rule:

        db = z,   d(matvec's constants) = the VJP of c -> matvec_c(x) at -z

    the latter by fnn's backward over matvec's jaxpr, interpreted with the rules in use. The
    constants of vecmat, solve and transpose_solve get none (their solver is assumed exact).
    Complex values as JAX takes them (A^{-T}, no conjugation; matvec's own rules decide)."""
    args, x = saved
    consts = _split(args, const_lengths)
    mv, b = consts[0], consts[4]
    nb = len(b)
    if jaxprs.transpose_solve is None:
        raise GateError(
            "rule 'lax.custom_linear_solve': the solve has no transpose_solve, and reverse-mode "
            f"gradients need one {JAX_REFUSES_TOO}: pass transpose_solve= to "
            "lax.custom_linear_solve, or symmetric=True if matvec is symmetric."
        )
    transposed = [c for group in (consts[1], consts[0], consts[3], consts[2]) for c in group]
    z = P.linear_solve_p.bind(
        *transposed, *g[:nb], const_lengths=const_lengths.transpose(), jaxprs=jaxprs.transpose()
    )[:nb]
    grads = [None] * len(args)
    grads[len(args) - nb :] = [zi if need else None for zi, need in zip(z, needs[len(args) - nb :])]
    if any(needs[: len(mv)]):
        body = Body(body_interpreter(rules, scope), jaxprs.matvec, mv + list(x[:nb]))
        seeds = {}
        for node, zi in zip(body.out_nodes, z):
            if node is not None:
                seeds[node] = seeds[node] - zi if node in seeds else -zi
        cts = backward(body.tape, seeds)
        for k, (node, need, c) in enumerate(zip(body.in_nodes[: len(mv)], needs, mv)):
            if need:
                grads[k] = cts[node] if node in cts else jnp.zeros_like(c)
    return tuple(grads)


@custom_linear_solve.defcases
def _custom_linear_solve_cases(rng, dtype):
    import jax.scipy.sparse.linalg as jssl

    a = spd(rng, 3, dtype)
    solve, cg = jnp.linalg.solve, lambda a, b: jssl.cg(lambda v: a @ v, b, tol=1e-12)[0]
    # numeric=False: the derivative is implicit (matvec's constants alone move x, through A x =
    # b), while stepping one group of constants (matvec's A, or solve's LU factors) alone moves
    # x otherwise; whole programs are compared with central differences in
    # tests/test_linalg_programs.py
    return [
        case(
            P.linear_solve_p,
            solve,
            normal(rng, (3, 3), dtype) + 3 * np.eye(3, dtype=dtype),
            normal(rng, (3,), dtype),
            numeric=False,
            label="jnp.linalg.solve",
        ),
        case(
            P.linear_solve_p,
            cg,
            a,
            normal(rng, (3,), dtype),
            numeric=False,
            label="cg: symmetric, a while loop as the solver",
        ),
        case(
            P.linear_solve_p,
            jnp.linalg.solve,
            normal(rng, (2, 3, 3), dtype) + 3 * np.eye(3, dtype=dtype),
            normal(rng, (2, 3, 2), dtype),
            numeric=False,
            label="batched, matrix b",
        ),
        case(
            P.linear_solve_p,
            solve,
            cnormal(rng, (3, 3), dtype) + 3 * np.eye(3, dtype=dtype),
            cnormal(rng, (3,), dtype),
            numeric=False,
            label="complex",
        ),
    ]


custom_linear_solve.defkinks(smooth=True)  # one formula; a singular A is the user's solve's NaN

STRUCTURAL = {P.linear_solve_p: control_rule(custom_linear_solve)}
