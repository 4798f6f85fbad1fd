"""Reverse mode: fnn.vjp, fnn.grad, fnn.value_and_grad, with JAX's semantics.

The forward pass runs the user's function on `Traced` inputs and records each gate on a tape.
The backward pass walks the tape in reverse: for each record it takes the upstream gradients of
its outputs, calls the gate's hand-written VJP (upstream times local gradient), checks the VJP's
contract and adds the results into its inputs' cotangents (a value that fans out sums them).
Cotangents live in a local dict (`ct`), never on the nodes. Everything runs at trace time, so
under `jax.jit` the forward and the backward compile into one XLA program.
"""

from __future__ import annotations

import linecache
import os
import re
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from fnn.autodiff import nans
from fnn.autodiff.traced import Tape, Traced, is_float
from fnn.errors import FnnError, ForeignCallError, NestingError, VJPContractError, describe

# --------------------------------------------------------------------------------------------
# backward pass


def backward(tape: Tape, seeds: dict, rule=None) -> dict:
    """Propagate cotangents `seeds` (node id -> array) back through `tape`; return node -> ct.

    The walk: gates in reverse order of recording; a gate none of whose outputs got a cotangent
    is skipped; a multi-output gate gets zeros for its outputs that got none; what a gate sends
    back is added into its parents' cotangents (a value used twice sums both). `rule(pos, rec,
    g, needs, got) -> grads`, one per input (None where not needed), is what each gate sends
    back (`got`: which outputs had a cotangent before the zero-fill): by default its VJP,
    checked (`apply_vjp`); locate_divergence and graph pass their own to compare or record on
    the same walk.
    """
    rule = apply_vjp if rule is None else rule
    ct = dict(seeds)
    for pos in reversed(range(len(tape.records))):
        rec = tape.records[pos]
        gs = [None if i is None else ct.pop(i, None) for i in rec.out_ids]
        if all(g is None for g in gs):
            continue  # no output of this gate reaches the result
        if rec.multi:
            g = tuple(gi if gi is not None or i is None else jnp.zeros_like(o)
                      for gi, i, o in zip(gs, rec.out_ids, rec.outs))
        else:
            g = gs[0]
        grads = rule(pos, rec, g, tuple(p is not None for p in rec.parents),
                     tuple(gi is not None for gi in gs))
        for p, dx in zip(rec.parents, grads or ()):
            if p is not None and dx is not None:
                ct[p] = ct[p] + dx if p in ct else dx
    return ct


def call_vjp(rec, g, needs):
    """The gate's hand-written VJP on upstream `g`, its result's contract checked (one entry
    per input, shapes and dtypes of the inputs): raises what the VJP raises."""
    grads = rec.gate.call_vjp(g, rec.saved, needs, rec.static)
    check_vjp_result(rec, grads, needs)
    return grads


def apply_vjp(pos, rec, g, needs, got=None):
    """`call_vjp` as the engine runs it: a crash names the gate and its call site, and NaNs
    are watched under fnn.debug_nans."""
    try:
        grads = call_vjp(rec, g, needs)
    except (TypeError, ValueError) as e:
        if isinstance(e, FnnError):
            raise
        ups = ", ".join(describe(x) for x in (g if rec.multi else (g,)))
        raise VJPContractError(
            f"VJP of gate '{rec.gate.name}' failed (called at {rec.site}) with upstream "
            f"gradient {ups} and inputs ({', '.join(describe(x) for x in rec.inputs)}): {e}"
        ) from e
    if nans.active():
        nans.check(rec.gate.name, "backward (VJP)", rec.site, g if rec.multi else (g,),
                   [dx if need else None for dx, need in zip(grads, needs)],
                   labels=("upstream gradient", "gradient for input"))
    return grads


def check_vjp_result(rec, grads, needs) -> None:
    """The contract: one gradient per input, each with its input's shape and dtype (or None)."""
    name = rec.gate.name
    if not isinstance(grads, (tuple, list)):
        raise VJPContractError(
            f"VJP of gate '{name}' returned {describe(grads)}; it must return a tuple with one "
            f"gradient (or None) per positional input, here {len(rec.inputs)}"
        )
    if len(grads) != len(rec.inputs):
        raise VJPContractError(
            f"VJP of gate '{name}' returned {len(grads)} gradients for {len(rec.inputs)} inputs "
            f"({', '.join(describe(x) for x in rec.inputs)})"
        )
    for k, (need, dx, x) in enumerate(zip(needs, grads, rec.inputs)):
        if not need or dx is None:
            continue
        x_shape, x_dtype = np.shape(x), jnp.result_type(x)
        dx_shape = np.shape(dx)
        dx_dtype = jnp.result_type(dx)
        if dx_shape != x_shape or dx_dtype != x_dtype:
            raise VJPContractError(
                f"VJP of gate '{name}' returned gradient {describe(dx)} for input {k} which is "
                f"{describe(x)}: shape and dtype must match the input (called at {rec.site})"
            )


# --------------------------------------------------------------------------------------------
# forward pass: boxing inputs, running f, explaining foreign calls


def _reject_nesting(primals, fname):
    for leaf in jax.tree_util.tree_leaves(primals):
        if isinstance(leaf, Traced):
            raise NestingError(
                f"{fname} was called on a value already traced by an outer fnn.grad/fnn.vjp "
                f"({describe(leaf)}). fnn's hand-written backward cannot be differentiated by fnn "
                "again; for higher derivatives use JAX on the outside, e.g. "
                "jacfwd(fnn.grad(f)) or grad(fnn.grad(f)) from jax."
            )

def _box(tree, tape):
    """Wrap each float leaf of `tree` in a Traced input node; other leaves stay as they are."""

    def box(leaf):
        leaf = jnp.asarray(leaf)
        return tape.input(leaf) if is_float(leaf) else leaf

    return jax.tree_util.tree_map(box, tree)


def _unbox(tree, tape):
    """Raw values for `tape`'s Traced leaves. A Traced of an enclosing fnn call stays as it is,
    so that call still sees its dependence (an inner value_and_grad's value, say)."""
    return jax.tree_util.tree_map(
        lambda x: x.value if isinstance(x, Traced) and x.tape is tape else x, tree,
        is_leaf=lambda x: isinstance(x, Traced))


def _run(f, args, fname, kwargs=None):
    try:
        return f(*args, **(kwargs or {}))
    except (TypeError, ValueError) as e:
        if isinstance(e, (NestingError, VJPContractError, ForeignCallError)):
            raise
        if "fnn.autodiff.traced.Traced" in str(e):
            raise ForeignCallError(_explain_foreign_call(e, fname)) from e
        raise


_ALIASES = {"dot": "matmul", "_reduce_sum": "sum", "_mean": "mean", "_reduce_max": "max",
            "_reduce_min": "min", "amax": "max", "asarray": None, "array": None, "clip": "minimum"}
_JAX_DIR = os.path.dirname(jax.__file__) + os.sep
_FNN_AUTODIFF = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _explain_foreign_call(e: Exception, fname: str) -> str:
    import fnn.ops

    frames = [fr for fr in traceback.extract_tb(e.__traceback__)
              if not fr.filename.startswith((_JAX_DIR, _FNN_AUTODIFF))]
    site, code, call = "?", "", ""
    if frames:
        fr = frames[-1]
        site = f"{fr.filename}:{fr.lineno}"
        raw = linecache.getline(fr.filename, fr.lineno) or fr.line or ""
        code = raw.strip()
        if getattr(fr, "colno", None) is not None and getattr(fr, "end_colno", None) is not None:
            call = raw[fr.colno:fr.end_colno]  # the call being made when it failed (3.11+)
    # the function named in JAX's own message first (it is the innermost call), then the line's
    names = re.findall(r"<function (\w+) at|^(\w+) requires ndarray|argument to (\w+) as", str(e))
    names += re.findall(r"(?:jnp|numpy|np|nn|lax|jax)\.(\w+)\s*\(", call + " " + code)
    flat = [n for item in names for n in (item if isinstance(item, tuple) else (item,)) if n]
    flat = [n for n in flat if n not in ("custom_jvp_call", "custom_vjp_call")]
    called = next((n for n in flat if not n.startswith("_")), flat[0] if flat else "a JAX function")
    gate = None
    for n in flat:
        n = _ALIASES.get(n, n)
        if n in fnn.ops.registry:
            gate = n
            break
    hint = (f"use the fnn gate fnn.ops.{gate} (registry name '{gate}') instead"
            if gate else "declare a gate for it with fnn.defgate (see the README) and use that")
    return (
        f"{fname}: {called}() received a value traced by fnn at {site}"
        + (f": `{code}`" if code else "")
        + f". JAX and NumPy functions cannot see fnn's graph, so the gradient would be lost; {hint}."
    )


# --------------------------------------------------------------------------------------------
# public API


def vjp(f, *primals, has_aux: bool = False):
    """Like JAX's `vjp`: returns `(out, vjp_fn)` (and `aux` if has_aux), with fnn's gradients.

    `vjp_fn(ct)` takes a cotangent with the structure of `out` and returns one cotangent per
    primal, each with its primal's structure. Integer and bool leaves get float0 zeros, as in JAX.
    """
    return _vjp(f, primals, tuple(range(len(primals))), has_aux, "fnn.vjp")


def _vjp(f, primals, diff_argnums, has_aux, fname, kwargs=None):
    _reject_nesting(primals, fname)
    tape = Tape()
    args = tuple(_box(p, tape) if i in diff_argnums else p for i, p in enumerate(primals))
    result = _run(f, args, fname, kwargs)
    if has_aux:
        if not (isinstance(result, (tuple, list)) and len(result) == 2):
            raise TypeError(f"{fname}(has_aux=True): f must return a pair (output, aux), "
                            f"got {type(result).__name__}")
        out, aux = result
        aux = _unbox(aux, tape)
    else:
        out, aux = result, None
    out_leaves, out_tree = jax.tree_util.tree_flatten(out, is_leaf=lambda x: isinstance(x, Traced))
    out_nodes = [x.node if isinstance(x, Traced) and x.tape is tape else None for x in out_leaves]
    out_values = jax.tree_util.tree_unflatten(out_tree, [_unbox(x, tape) for x in out_leaves])

    def vjp_fn(ct):
        ct_leaves, ct_tree = jax.tree_util.tree_flatten(ct)
        if ct_tree != out_tree:
            raise TypeError(f"{fname}: cotangent structure {ct_tree} does not match the output "
                            f"structure {out_tree}")
        seeds = {}
        for node, c, o in zip(out_nodes, ct_leaves, jax.tree_util.tree_leaves(out_values)):
            if np.shape(c) != np.shape(o):
                raise ValueError(f"{fname}: cotangent {describe(c)} does not match output "
                                 f"{describe(o)}")
            if node is not None:
                c = jnp.asarray(c, dtype=jnp.result_type(o))
                seeds[node] = seeds[node] + c if node in seeds else c
        cts = backward(tape, seeds)
        return tuple(
            jax.tree_util.tree_map(lambda x: _leaf_grad(x, cts), a) if i in diff_argnums
            else None
            for i, a in enumerate(args)
        )

    return (out_values, vjp_fn, aux) if has_aux else (out_values, vjp_fn)


def _leaf_grad(x, cts):
    if isinstance(x, Traced):
        g = cts.get(x.node)
        return jnp.zeros_like(x.value) if g is None else g
    return np.zeros(np.shape(x), dtype=jax.dtypes.float0)


def _check_argnums(argnums, n_args, fname):
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    if not nums or not all(isinstance(a, int) for a in nums):
        raise TypeError(f"{fname}: argnums must be an int or a non-empty tuple of ints, "
                        f"got {argnums!r}")
    for a in nums:
        if not -n_args <= a < n_args:
            raise ValueError(f"{fname}: argnums={argnums!r} but f was called with {n_args} "
                             "positional argument(s)")
    return tuple(a % n_args for a in nums)


def value_and_grad(f, argnums=0, has_aux: bool = False, *, _name: str = "fnn.value_and_grad"):
    """Like JAX's `value_and_grad`, with fnn's hand-written gradients.

    Returns a function giving `(value, grad)` or, with has_aux, `((value, aux), grad)`. `grad`
    has the structure of the argument(s) named by `argnums` (a tuple of them for a tuple).
    """
    fname = f"{_name}({getattr(f, '__name__', 'f')})"

    def vg(*args, **kwargs):
        nums = _check_argnums(argnums, len(args), fname)
        for a in nums:
            for leaf in jax.tree_util.tree_leaves(args[a]):
                if not isinstance(leaf, Traced) and not is_float(leaf):
                    raise TypeError(
                        f"{fname}: argument {a} has a leaf of dtype {jnp.result_type(leaf)}; "
                        "gradients are only defined for float inputs (integer and bool inputs "
                        "such as labels carry no gradient: leave them out of argnums)"
                    )
        res = _vjp(f, args, nums, has_aux, fname, kwargs)
        out, pullback = res[0], res[1]
        out_leaves = jax.tree_util.tree_leaves(out)
        if len(out_leaves) != 1 or np.shape(out_leaves[0]) != ():
            shapes = ", ".join(describe(o) for o in out_leaves) or "nothing"
            raise TypeError(f"{fname}: gradients are only defined for functions with one scalar "
                            f"output, got {shapes}")
        if not is_float(out_leaves[0]):
            raise TypeError(f"{fname}: the output must be a float scalar, got "
                            f"{describe(out_leaves[0])}")
        ct = jax.tree_util.tree_map(jnp.ones_like, out)
        grads = pullback(ct)
        g = grads[nums[0]] if isinstance(argnums, int) else tuple(grads[a] for a in nums)
        return ((out, res[2]), g) if has_aux else (out, g)

    vg.__name__ = f"value_and_grad_{getattr(f, '__name__', 'f')}"
    vg.__doc__ = f.__doc__
    return vg


def grad(f, argnums=0, has_aux: bool = False):
    """Like JAX's `grad`: the gradient of scalar-valued `f`, by fnn's hand-written VJPs."""
    vg = value_and_grad(f, argnums=argnums, has_aux=has_aux, _name="fnn.grad")

    def g(*args, **kwargs):
        (_, aux), dx = vg(*args, **kwargs) if has_aux else ((None, None), vg(*args, **kwargs)[1])
        return (dx, aux) if has_aux else dx

    g.__name__ = f"grad_{getattr(f, '__name__', 'f')}"
    g.__doc__ = f.__doc__
    return g
