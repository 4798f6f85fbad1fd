"""Helpers for declaring primitive gates: finding primitives, and test cases from real calls.

`case(fn, *args)` traces `fn(*args)` to a jaxpr and returns the `Case` of its first equation
of the gate's primitive: that equation's inputs and parameters, exactly as JAX produces them
(so the cases follow the JAX version in use, and every parameter is one JAX really emits).
`find(name, fn, *args)` returns the primitive called `name` that `fn(*args)` binds (at any
depth of its nested jaxprs), for primitives jax.extend does not export.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.extend import core as jcore

from fnn.autodiff.case_values import SPECIAL
from fnn.autodiff.gate import Case


def find(name: str, fn, *args):
    """The primitive named `name` among the equations of make_jaxpr(fn)(*args), or of the
    jaxprs nested in them (a jit's, a shard_map's body)."""
    found = _named(jax.make_jaxpr(fn)(*args).jaxpr, name)
    if found is None:
        raise LookupError(f"{fn} binds no primitive named {name!r}")
    return found


def _named(jaxpr, name: str):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == name:
            return eqn.primitive
        for sub in jcore.jaxprs_in_params(eqn.params):
            found = _named(sub, name)
            if found is not None:
                return found
    return None


def _find(jaxpr, consts, args, primitive):
    """(equation, its concrete input values) of `primitive`'s first equation, evaluating the
    equations before it (and descending into nested jit/custom calls) with JAX."""
    env = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    read = lambda v: (
        np.asarray(v.val, dtype=v.aval.dtype) if isinstance(v, jcore.Literal) else env[v]
    )
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        if eqn.primitive is primitive:
            return eqn, invals
        for key in ("jaxpr", "call_jaxpr"):
            sub = eqn.params.get(key)
            if isinstance(sub, jcore.ClosedJaxpr) and len(sub.jaxpr.invars) == len(invals):
                found = _find(sub.jaxpr, sub.consts, invals, primitive)
                if found is not None:
                    return found
        outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
        outs = outs if eqn.primitive.multiple_results else [outs]
        env.update(zip(eqn.outvars, outs))
    return None


def case(
    primitive,
    fn,
    *args,
    label: str = "",
    numeric: bool = True,
    reference: bool = True,
    params: str = "bind",
    fixed: tuple = (),
    second_order: bool = True,
) -> Case:
    """The Case of `primitive`'s first equation in make_jaxpr(fn)(*args): its input values
    (computed by running fn's equations before it) and its parameters (as they are bound;
    params="eqn": as the equation holds them, for a rule the interpreter passes those).
    fixed, second_order: as Case's (positions among the equation's inputs)."""
    closed = jax.make_jaxpr(fn)(*args)
    found = _find(closed.jaxpr, closed.consts, jax.tree_util.tree_leaves(args), primitive)
    if found is None:
        raise LookupError(f"case(): {fn} binds no {primitive.name}")
    eqn, inputs = found
    params = dict(primitive.get_bind_params(eqn.params) if params == "bind" else eqn.params)
    inputs = [x if isinstance(x, np.ndarray) or _is_key(x) else np.asarray(x) for x in inputs]
    return Case(
        tuple(inputs),
        params,
        label=label or _label(inputs),
        numeric=numeric,
        reference=reference,
        fixed=tuple(fixed),
        second_order=second_order,
    )


def _is_key(x) -> bool:
    """Whether x is an array of PRNG keys (kept as it is: NumPy has no such dtype)."""
    return jax.dtypes.issubdtype(getattr(x, "dtype", np.float64), jax.dtypes.prng_key)


def bare(primitive):
    """The primitive bound as it is, for `gate.reference`: what the checkers differentiate with
    JAX where a gate's forward computes more than the primitive (what JAX's rule computes under
    differentiation: eigh of the symmetric part, the SVD with its vectors), so that the gate is
    compared with JAX's rule for the primitive itself."""

    def reference(*args, **params):
        out = primitive.bind(*args, **params)
        return tuple(out) if primitive.multiple_results else out

    reference.__name__ = f"{primitive.name}_bound"
    return reference


def _label(inputs) -> str:
    return " ".join(
        ("key" if _is_key(x) else np.dtype(getattr(x, "dtype", np.float64)).name[0])
        + str(list(np.shape(x)))
        for x in inputs
    )


# ---- kink cases: the special points of an elementwise rule -----------------------------------


def special_unary(primitive, fn, points=SPECIAL):
    """Kink cases (Gate.defkinks) of a one-input elementwise primitive: fn at each special
    point (0 of both signs, +-1, infinities, NaN, ...)."""
    return lambda dtype: [case(primitive, fn, np.asarray(points, dtype), label="special points")]


def special_binary(primitive, fn, points=SPECIAL):
    """Kink cases of a two-input elementwise primitive: fn at every pair of special points
    (ties among them), and with a scalar second operand as jnp writes literals."""

    def kinks(dtype):
        x, y = np.meshgrid(np.asarray(points, dtype), np.asarray(points, dtype))
        return [
            case(primitive, fn, x.reshape(-1), y.reshape(-1), label="pairs of special points"),
            case(
                primitive,
                lambda x: fn(x, np.asarray(0.0, dtype)),
                np.asarray(points, dtype),
                label="against a literal 0",
            ),
        ]

    return kinks
