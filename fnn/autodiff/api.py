"""Reverse mode with JAX's semantics: vjp, grad, value_and_grad, on top of `trace` + `backward`.

`make_transforms(rules)` binds them to a table of primitive rules (primitive -> rule, see
fnn.autodiff.interpret); `fnn.transforms` does that once with fnn's table, and those are the
public `fnn.vjp`, `fnn.grad`, `fnn.value_and_grad` and `fnn.trace`.

More rules (for primitives the table lacks, declared with `primitive_gate`) are added for one
call with `rules=[...]`, or for a block with `with rules(...)`: scoped, restored on exit.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fnn.autodiff.gate import Gate
from fnn.autodiff.tape import Traced, is_float
from fnn.autodiff.trace import check_argnums, trace as trace_fn
from fnn.errors import describe

_SCOPED: contextvars.ContextVar = contextvars.ContextVar("fnn_rules", default=())


@contextlib.contextmanager
def rules(*gates):
    """Within this block, fnn.grad & co. also use these primitive gates (each a Gate made by
    `primitive_gate(p)`), over the built-in table. Nested blocks add up; each restores the
    previous rules on exit, also when an exception leaves the block."""
    _as_table(gates, "fnn.rules")
    token = _SCOPED.set(_SCOPED.get() + tuple(gates))
    try:
        yield
    finally:
        _SCOPED.reset(token)


def _as_table(gates, fname) -> dict:
    table = {}
    for g in gates:
        prim = getattr(g, "primitive", None)
        if not isinstance(g, Gate) or prim is None:
            raise TypeError(f"{fname}: a rule must be a gate declared for a JAX primitive with "
                            f"fnn.primitive_gate(primitive), got {g!r}")
        table[prim] = g
    return table


class Transforms(NamedTuple):
    trace: Callable
    vjp: Callable
    value_and_grad: Callable
    grad: Callable


def make_transforms(base: dict) -> Transforms:
    """The four public functions, bound to `base`, a table primitive -> rule."""

    def table(extra, fname):
        scoped, extra = _SCOPED.get(), tuple(extra or ())
        if not scoped and not extra:
            return base
        return {**base, **_as_table(scoped, fname), **_as_table(extra, fname)}

    def trace(f, *args, argnums=0, has_aux: bool = False, rules=None, **kwargs):
        """Record `f(*args, **kwargs)` with fnn: a `Trace` (tape, input and output nodes).

        The float leaves of the arguments named by argnums are differentiated; the rest are
        constants. `tr.backward(tr.seeds())` runs the hand-written backward seeded with ones.
        rules: more primitive gates for this call."""
        return trace_fn(f, args, argnums, kwargs=kwargs, has_aux=has_aux, fname="fnn.trace",
                        rules=table(rules, "fnn.trace"))

    def vjp(f, *primals, has_aux: bool = False, rules=None):
        """Like JAX's `vjp`: returns `(out, vjp_fn)` (and `aux` if has_aux), with fnn's gradients.

        `vjp_fn(ct)` takes a cotangent with the structure of `out` and returns one cotangent per
        primal, each with its primal's structure. Integer and bool leaves get float0 zeros, as
        in JAX.
        """
        tr = trace_fn(f, primals, tuple(range(len(primals))), has_aux=has_aux, fname="fnn.vjp",
                      rules=table(rules, "fnn.vjp"))
        pullback = _pullback(tr, "fnn.vjp")
        return (tr.out, pullback, tr.aux) if has_aux else (tr.out, pullback)

    def value_and_grad(f, argnums=0, has_aux: bool = False, *, rules=None,
                       _name: str = "fnn.value_and_grad"):
        """Like JAX's `value_and_grad`, with fnn's hand-written gradients.

        Returns a function giving `(value, grad)` or, with has_aux, `((value, aux), grad)`.
        `grad` has the structure of the argument(s) named by `argnums` (a tuple of them for a
        tuple).
        """
        fname = f"{_name}({getattr(f, '__name__', 'f')})"

        def vg(*args, **kwargs):
            nums = check_argnums(argnums, len(args), fname)
            for a in nums:
                for leaf in jax.tree_util.tree_leaves(args[a]):
                    if not isinstance(leaf, Traced) and not is_float(leaf):
                        raise TypeError(
                            f"{fname}: argument {a} has a leaf of dtype "
                            f"{jnp.result_type(leaf)}; gradients are only defined for float "
                            "inputs (integer and bool inputs such as labels carry no gradient: "
                            "leave them out of argnums)")
            tr = trace_fn(f, args, nums, kwargs=kwargs, has_aux=has_aux, fname=fname,
                          rules=table(rules, fname))
            out_leaves = jax.tree_util.tree_leaves(tr.out)
            if len(out_leaves) != 1 or np.shape(out_leaves[0]) != ():
                shapes = ", ".join(describe(o) for o in out_leaves) or "nothing"
                raise TypeError(f"{fname}: gradients are only defined for functions with one "
                                f"scalar output, got {shapes}")
            if not is_float(out_leaves[0]):
                raise TypeError(f"{fname}: the output must be a float scalar, got "
                                f"{describe(out_leaves[0])}")
            grads = tr.gradients(tr.backward(tr.seeds()))
            g = grads[nums[0]] if isinstance(argnums, int) else tuple(grads[a] for a in nums)
            return ((tr.out, tr.aux), g) if has_aux else (tr.out, g)

        vg.__name__ = f"value_and_grad_{getattr(f, '__name__', 'f')}"
        vg.__doc__ = f.__doc__
        return vg

    def grad(f, argnums=0, has_aux: bool = False, *, rules=None):
        """Like JAX's `grad`: the gradient of scalar-valued `f`, by fnn's hand-written VJPs."""
        vg = value_and_grad(f, argnums=argnums, has_aux=has_aux, rules=rules, _name="fnn.grad")

        def g(*args, **kwargs):
            (_, aux), dx = vg(*args, **kwargs) if has_aux else ((None, None), vg(*args, **kwargs)[1])
            return (dx, aux) if has_aux else dx

        g.__name__ = f"grad_{getattr(f, '__name__', 'f')}"
        g.__doc__ = f.__doc__
        return g

    return Transforms(trace, vjp, value_and_grad, grad)


def _pullback(tr, fname):
    def vjp_fn(ct):
        ct_leaves, ct_tree = jax.tree_util.tree_flatten(ct)
        if ct_tree != tr.out_tree:
            raise TypeError(f"{fname}: cotangent structure {ct_tree} does not match the output "
                            f"structure {tr.out_tree}")
        for c, o in zip(ct_leaves, jax.tree_util.tree_leaves(tr.out)):
            if np.shape(c) != np.shape(o):
                raise ValueError(f"{fname}: cotangent {describe(c)} does not match output "
                                 f"{describe(o)}")
        return tr.gradients(tr.backward(tr.seeds(ct)))

    return vjp_fn
