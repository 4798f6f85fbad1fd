"""Check one gate at one test point: hand-written VJP vs jax.vjp of its forward vs numerics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fnn.autodiff import is_float
from fnn.transforms import vjp as fnn_vjp
from fnn.check.numeric import numerical_vjp, rel_error

# max relative error of a hand-written VJP against jax.vjp, by dtype
TOLERANCE = {"float64": 1e-10, "float32": 2e-5, "float16": 5e-3, "bfloat16": 2e-2}
NUMERIC_TOLERANCE = 1e-6  # float64 central differences vs the hand-written VJP
# custom vs built-in on whole models (or one gate inside a model): looser than TOLERANCE
MODEL_RTOL = {"float64": 1e-9, "float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}


def cast_case(case, dtype):
    """The case's positional args with float arrays cast to `dtype` (others untouched)."""
    return tuple(jnp.asarray(a, dtype=dtype) if is_float(a) else a for a in case.args)


def _pull(out_and_pullback, ct):
    out, pullback = out_and_pullback
    return out, pullback(ct)


def random_cotangent(out, rng: np.random.Generator):
    """A standard-normal cotangent for `out` (arrays or ShapeDtypeStructs); float0 for ints."""
    def one(o):
        if not jnp.issubdtype(o.dtype, jnp.inexact):
            return np.zeros(np.shape(o), jax.dtypes.float0)
        return jnp.asarray(rng.standard_normal(np.shape(o)), dtype=o.dtype)
    return tuple(one(o) for o in out) if isinstance(out, tuple) else one(out)


def gate_functions(gate, args, kwargs):
    """(diff positions, forward-only f, fnn-recorded f), each a function of the float args."""
    diff = [i for i, a in enumerate(args) if is_float(a)]

    def merge(dargs):
        full = list(args)
        for i, d in zip(diff, dargs):
            full[i] = d
        return full

    def forward(*dargs):
        return gate.forward(*merge(dargs), **kwargs)[0]

    def recorded(*dargs):
        return gate(*merge(dargs), **kwargs)

    return diff, forward, recorded


def check_gate_case(gate, case, dtype, rng: np.random.Generator, numeric: bool = True) -> dict:
    """Errors of gate's VJP at `case` in `dtype`: {'vs_jax': .., 'vs_numeric': .. or None}."""
    args = cast_case(case, dtype)
    diff, forward, recorded = gate_functions(gate, args, case.kwargs)
    dargs = [args[i] for i in diff]
    out = jax.eval_shape(forward, *dargs)
    ct = random_cotangent(out, rng)
    # one compiled program each (op-by-op dispatch would compile every primitive separately)
    out, ref = jax.jit(lambda c, *d: _pull(jax.vjp(forward, *d), c))(ct, *dargs)
    out_fnn, mine = jax.jit(lambda c, *d: _pull(fnn_vjp(recorded, *d), c))(ct, *dargs)
    result = {"out": max(_tree_rel(out_fnn, out)),
              "vs_jax": max(_tree_rel(mine, ref), default=0.0), "vs_numeric": None}
    if numeric and case.numeric and dtype == "float64":
        jf = jax.jit(forward)
        num = numerical_vjp(lambda *d: _np_tree(jf(*d)), [np.asarray(a) for a in dargs], _np_tree(ct))
        result["vs_numeric"] = max((rel_error(n, m) for n, m in zip(num, mine)), default=0.0)
    return result


def _np_tree(t):
    if isinstance(t, tuple):
        return tuple(None if (hasattr(x, "dtype") and x.dtype == jax.dtypes.float0) else np.asarray(x)
                     for x in t)
    return np.asarray(t)


def _tree_rel(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    if len(la) != len(lb):
        raise AssertionError(f"different numbers of leaves: {len(la)} vs {len(lb)}")
    return [rel_error(x, y) for x, y in zip(la, lb)
            if not (hasattr(y, "dtype") and y.dtype == jax.dtypes.float0)]
