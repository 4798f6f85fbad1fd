"""Reverse mode with JAX's semantics: vjp, grad, value_and_grad, on top of `trace` + `backward`.

`make_transforms(rules)` binds them to a table of primitive rules (primitive -> rule, see
fnn.autodiff.interpret); `fnn.transforms` does that once with fnn's table, and those are the
public `fnn.vjp`, `fnn.grad`, `fnn.value_and_grad` and `fnn.trace`.

More rules are added for one call with `rules=`, or for a block with `with rules(...)`
(scoped, restored on exit): gates for primitives the table lacks (declared with
`primitive_gate`), and overrides of any gate's backward (fnn.autodiff.overrides).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Mapping
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fnn.autodiff import overrides
from fnn.autodiff.gate import Gate
from fnn.autodiff.tape import Traced, is_complex, is_float
from fnn.autodiff.trace import check_argnums, trace as trace_fn
from fnn.errors import describe

_SCOPED: contextvars.ContextVar = contextvars.ContextVar("fnn_rules", default=())


@contextlib.contextmanager
def rules(*items, **named):
    """Within this block, fnn.grad & co. use these rules.

        with fnn.rules(relu=straight_through, affine=fnn.only(fa, "1_dense")): ...
        with fnn.rules(my_primitive_gate): ...       # a rule for a primitive fnn lacks
        with fnn.rules({"lax.tanh": rule}): ...

    Keyword arguments and mappings override the backward of the gates they name (see
    fnn.autodiff.overrides); positional gates made by `primitive_gate(p)` add rules for
    primitives. Nested blocks add up; each restores what was in effect on exit, also when an
    exception leaves the block. A function jitted inside the block is traced with these rules.
    The block holds for the thread (or asyncio task) that entered it (a contextvars variable):
    a worker thread starts without it; run the work there in a copy of this context,
    `pool.submit(contextvars.copy_context().run, fnn.grad(f), x)`, or pass `rules=`.

    Args:
        *items: gates made by `fnn.primitive_gate` (rules for primitives), or mappings
            `{gate name: rule}` (overrides; a value may also be a primitive gate).
        **named: overrides by gate name, `relu=rule` (a `Rule`, a function or `fnn.only(...)`).

    Returns:
        A context manager; the rules hold inside its `with` block.

    Raises:
        TypeError: (on entering the block) an item is neither a primitive gate nor a mapping.
        OverrideError: (on entering the block) an override is not a rule (not callable) or its
            key is neither a name, a Gate nor a primitive; (when a function is differentiated
            inside the block) a key names no gate.
    """
    prims, table = split_rules(items + ((named,) if named else ()), "fnn.rules")
    token = _SCOPED.set(_SCOPED.get() + tuple(prims.values()))
    try:
        with overrides.overriding(table):
            yield
    finally:
        _SCOPED.reset(token)


def split_rules(items, fname) -> tuple[dict, dict]:
    """(primitive -> gate, overrides) from `rules=`: primitive gates, and mappings of overrides
    (a mapping's value may also be a primitive gate)."""
    if items is None:
        return {}, {}
    if isinstance(items, Mapping):
        items = (items,)
    prims, table = {}, {}
    for item in items:
        if isinstance(item, Mapping):
            for key, value in item.items():
                if isinstance(value, Gate) and value.primitive is not None:
                    prims[value.primitive] = value
                else:
                    table.update(overrides.as_table({key: value}, fname))
        elif isinstance(item, Gate) and item.primitive is not None:
            prims[item.primitive] = item
        else:
            raise TypeError(
                f"{fname}: rules are gates declared for JAX primitives with "
                "fnn.primitive_gate(primitive), or a mapping {gate name: rule}; "
                f"got {item!r}"
            )
    return prims, table


class Transforms(NamedTuple):
    trace: Callable
    vjp: Callable
    value_and_grad: Callable
    grad: Callable


def make_transforms(base: dict, custom_rules: Mapping | None = None, gate_names=()) -> Transforms:
    """The four public functions, bound to `base`, a table primitive -> rule.

    custom_rules: the choices of the public `custom_rules=` keyword, name -> rules that replace
    base's for that choice (the first is the default), e.g. {"use": {}, "primal": {...}}.
    gate_names: the names of the gates an override may name besides the rules' own (fnn's
    named gates); a key naming none of them, nor a gate the function applies, is an error."""
    choices = dict(custom_rules or {"use": {}})
    bound = _Bound(base, choices, next(iter(choices)), frozenset(gate_names) | _rule_names(base))
    return Transforms(
        _make_trace(bound), _make_vjp(bound), _make_value_and_grad(bound), _make_grad(bound)
    )


@dataclasses.dataclass(frozen=True)
class _Bound:
    """What make_transforms binds the four functions to: `base`, the table primitive -> rule;
    `choices`, the public `custom_rules=` choices (name -> rules that replace base's); `default`,
    the first choice; `known`, the names an override may use besides the rules of the call."""

    base: dict
    choices: dict
    default: str
    known: frozenset


def _traced(bound: _Bound, f, args, argnums, *, rules, fname, custom_rules, **kw):
    """trace_fn with the primitive rules and overrides of this call and of the block."""
    if not isinstance(custom_rules, str) or custom_rules not in bound.choices:
        raise ValueError(
            f"{fname}: custom_rules must be one of "
            f"{', '.join(repr(c) for c in bound.choices)}, got {custom_rules!r}"
        )
    prims, table = split_rules(rules, fname)
    scoped = {g.primitive: g for g in _SCOPED.get()}
    chosen = bound.choices[custom_rules]
    full = {**bound.base, **chosen, **scoped, **prims} if scoped or prims or chosen else bound.base
    with overrides.overriding(table):
        if not overrides.active():
            return trace_fn(f, args, argnums, fname=fname, rules=full, **kw)
        names = bound.known | _rule_names(scoped) | _rule_names(prims)
        with overrides.noticing(names, fname):
            return trace_fn(f, args, argnums, fname=fname, rules=full, **kw)


def _make_trace(bound: _Bound) -> Callable:
    """The public `trace`, bound."""

    def trace(
        f, *args, argnums=0, has_aux: bool = False, rules=None, custom_rules=bound.default, **kwargs
    ):
        """Record `f(*args, **kwargs)` with fnn: a `Trace` (tape, input and output nodes).

        The float leaves of the arguments named by argnums are differentiated; the rest are
        constants. `tr.backward(tr.seeds())` runs the hand-written backward seeded with ones.

        Args:
            f: the function to record.
            *args: its positional arguments.
            argnums: the position(s) of the differentiated arguments (an int or a tuple of ints).
            has_aux: `f` returns a pair `(output, aux)`; aux is kept as `tr.aux`, not
                differentiated.
            rules: more primitive gates, or overrides of gates' backward rules, for this call (as
                for `grad`).
            custom_rules: as for `grad`.
            **kwargs: its keyword arguments (constants).

        Returns:
            The `Trace` of the call.

        Raises:
            TypeError: argnums is not an int or a non-empty tuple of ints; with has_aux, `f` does
                not return a pair.
            ValueError: argnums names an argument `f` was not given; custom_rules is not one of the
                choices.
            MissingRuleError: `f` uses a JAX primitive for which fnn has no rule.
            GateError: a gate cannot take its inputs.
            OverrideError: an override in `rules` names no gate or is not a rule.
        """
        return _traced(
            bound,
            f,
            args,
            argnums,
            kwargs=kwargs,
            has_aux=has_aux,
            fname="fnn.trace",
            rules=rules,
            custom_rules=custom_rules,
        )

    return trace


def _make_vjp(bound: _Bound) -> Callable:
    """The public `vjp`, bound."""

    def vjp(f, *primals, has_aux: bool = False, rules=None, custom_rules=bound.default):
        """Like JAX's `vjp`: returns `(out, vjp_fn)` (and `aux` if has_aux), with fnn's gradients.

        `vjp_fn(ct)` takes a cotangent with the structure of `out` and returns one cotangent per
        primal, each with its primal's structure. Integer and bool leaves get float0 zeros, as
        in JAX.

        Args:
            f: the function to differentiate.
            *primals: its positional arguments, all differentiated.
            has_aux: `f` returns a pair `(output, aux)`.
            rules: more primitive gates, or overrides of gates' backward rules, for this call (as
                for `grad`).
            custom_rules: as for `grad`.

        Returns:
            `(out, vjp_fn)`, or `(out, vjp_fn, aux)` with has_aux. `vjp_fn` raises TypeError for a
            cotangent of another structure than `out`, ValueError for one of another shape (or a
            real cotangent of a complex output, a complex one of a real output, as JAX's vjp does).

        Raises:
            TypeError: with has_aux, `f` does not return a pair.
            ValueError: custom_rules is not one of the choices.
            MissingRuleError: `f` uses a JAX primitive for which fnn has no rule.
            GateError: a gate cannot take its inputs.
            OverrideError: an override in `rules` names no gate or is not a rule.
        """
        tr = _traced(
            bound,
            f,
            primals,
            tuple(range(len(primals))),
            has_aux=has_aux,
            fname="fnn.vjp",
            rules=rules,
            custom_rules=custom_rules,
        )
        pullback = _pullback(tr, "fnn.vjp")
        return (tr.out, pullback, tr.aux) if has_aux else (tr.out, pullback)

    return vjp


def _make_value_and_grad(bound: _Bound) -> Callable:
    """The public `value_and_grad`, bound."""

    def value_and_grad(
        f,
        argnums=0,
        has_aux: bool = False,
        holomorphic: bool = False,
        *,
        rules=None,
        custom_rules=bound.default,
        _name: str = "fnn.value_and_grad",
    ):
        """Like JAX's `value_and_grad`, with fnn's hand-written gradients.

        The errors below are raised when the returned function is called.

        Args:
            f: the function to differentiate; it must return one float scalar (a complex one
                with holomorphic; and aux with has_aux).
            argnums: the position(s) of the differentiated arguments (an int or a tuple of ints,
                negative allowed).
            has_aux: `f` returns a pair `(value, aux)`.
            holomorphic: as JAX's: `f` is complex in and complex out and the gradient is
                f'(z) (the output seeded with 1). Without it the output must be real, and the
                gradient of a complex input is JAX's, the conjugate of df/dx + i df/dy (see
                "Complex numbers" in the docs).
            rules: more primitive gates, or overrides of gates' backward rules, for this call (as
                for `grad`).
            custom_rules: as for `grad`.

        Returns:
            A function of `f`'s arguments giving `(value, grad)` or, with has_aux,
            `((value, aux), grad)`. `grad` has the structure of the argument(s) named by `argnums`
            (a tuple of them for a tuple).

        Raises:
            TypeError: argnums is not an int or a non-empty tuple of ints; a differentiated argument
                has an integer or bool leaf (or, with holomorphic, a real one); `f`'s output is
                not one scalar, or is complex without holomorphic (real with it), as JAX's own
                errors; with has_aux, `f` does not return a pair.
            ValueError: argnums names an argument `f` was not given; custom_rules is not one of the
                choices.
            MissingRuleError: `f` uses a JAX primitive for which fnn has no rule.
            GateError: a gate cannot take its inputs (a gate that does not declare complex=True
                meeting a complex value, for one).
            OverrideError: an override in `rules` names no gate or is not a rule.
        """
        return _value_and_grad(bound, f, argnums, has_aux, holomorphic, rules, custom_rules, _name)

    return value_and_grad


def _make_grad(bound: _Bound) -> Callable:
    """The public `grad`, bound."""

    def grad(
        f,
        argnums=0,
        has_aux: bool = False,
        holomorphic: bool = False,
        *,
        rules=None,
        custom_rules=bound.default,
    ):
        """Like JAX's `grad`: the gradient of scalar-valued `f`, by fnn's hand-written VJPs.

            dparams = fnn.grad(loss)(params, x, y)

        The errors below are raised when the returned function is called.

        Args:
            f: the function to differentiate; it must return one float scalar (and aux with
                has_aux).
            argnums: the position(s) of the differentiated arguments (an int or a tuple of ints,
                negative allowed).
            has_aux: `f` returns a pair `(value, aux)`; aux is returned, not differentiated.
            holomorphic: as JAX's (see `value_and_grad`): `f` complex in and complex out, the
                gradient f'(z).
            rules: more primitive gates, or overrides of gates' backward rules, for this call:
                a gate made by `fnn.primitive_gate`, a mapping `{gate name: rule}`, or a tuple
                of them.
            custom_rules: how functions with a custom derivative (JAX's custom-VJP and
                custom-JVP functions, e.g. jax.nn.relu, optax's and Flax's stabilised
                functions) are differentiated:
                "use" (the default) runs their own rules, as JAX's gradient does; "primal"
                differentiates their primal function with fnn's rules instead (to see what the
                custom rule changes).

        Returns:
            A function of `f`'s arguments giving the gradient (the structure of the argument(s)
            named by `argnums`, a tuple of them for a tuple), or `(gradient, aux)` with has_aux.

        Raises:
            TypeError: argnums is not an int or a non-empty tuple of ints; a differentiated argument
                has an integer or bool leaf (or, with holomorphic, a real one); `f`'s output is
                not one scalar, or is complex without holomorphic (real with it), as JAX's own
                errors; with has_aux, `f` does not return a pair.
            ValueError: argnums names an argument `f` was not given; custom_rules is not one of the
                choices.
            MissingRuleError: `f` uses a JAX primitive for which fnn has no rule.
            GateError: a gate cannot take its inputs (a gate that does not declare complex=True
                meeting a complex value, for one).
            OverrideError: an override in `rules` names no gate or is not a rule.
        """
        vg = _value_and_grad(
            bound, f, argnums, has_aux, holomorphic, rules, custom_rules, "fnn.grad"
        )
        return _grad_of(vg, f, has_aux)

    return grad


def _value_and_grad(
    bound: _Bound, f, argnums, has_aux, holomorphic, rules, custom_rules, name: str
) -> Callable:
    """The function value_and_grad(f, ...) returns; `name` starts its error messages."""
    fname = f"{name}({getattr(f, '__name__', 'f')})"

    def vg(*args, **kwargs):
        nums = check_argnums(argnums, len(args), fname)
        _check_inputs(fname, args, nums, holomorphic)
        tr = _traced(
            bound,
            f,
            args,
            nums,
            kwargs=kwargs,
            has_aux=has_aux,
            fname=fname,
            rules=rules,
            custom_rules=custom_rules,
        )
        _check_output(fname, tr.out, holomorphic)
        grads = tr.gradients(tr.backward(tr.seeds()))
        g = grads[nums[0]] if isinstance(argnums, int) else tuple(grads[a] for a in nums)
        return ((tr.out, tr.aux), g) if has_aux else (tr.out, g)

    vg.__name__ = f"value_and_grad_{getattr(f, '__name__', 'f')}"
    vg.__doc__ = f.__doc__
    return vg


def _grad_of(vg: Callable, f, has_aux: bool) -> Callable:
    """The function grad(f, ...) returns, from value_and_grad's `vg`: the gradient alone, or
    `(gradient, aux)` with has_aux."""

    def g(*args, **kwargs):
        (_, aux), dx = vg(*args, **kwargs) if has_aux else ((None, None), vg(*args, **kwargs)[1])
        return (dx, aux) if has_aux else dx

    g.__name__ = f"grad_{getattr(f, '__name__', 'f')}"
    g.__doc__ = f.__doc__
    return g


def _check_inputs(fname, args, nums, holomorphic: bool) -> None:
    """A TypeError for a differentiated argument with an integer or bool leaf (or, with
    holomorphic, a real one)."""
    for a in nums:
        for leaf in jax.tree_util.tree_leaves(args[a]):
            if not isinstance(leaf, Traced) and not is_float(leaf):
                raise TypeError(
                    f"{fname}: argument {a} has a leaf of dtype "
                    f"{jnp.result_type(leaf)}; gradients are only defined for float "
                    "inputs (integer and bool inputs such as labels carry no gradient: "
                    "leave them out of argnums)"
                )
            if holomorphic and not is_complex(leaf):
                raise TypeError(
                    f"{fname} with holomorphic=True requires inputs with "
                    f"complex dtype, but got {jnp.result_type(leaf).name} "
                    f"(argument {a})."
                )


def _check_output(fname, out, holomorphic: bool) -> None:
    """JAX's checks of a differentiated output: one scalar, of a float dtype (complex with
    holomorphic, real without), with JAX's gradient's messages."""
    out_leaves = jax.tree_util.tree_leaves(out)
    if len(out_leaves) != 1 or np.shape(out_leaves[0]) != ():
        shapes = ", ".join(describe(o) for o in out_leaves) or "nothing"
        raise TypeError(
            f"{fname}: gradients are only defined for functions with one "
            f"scalar output, got {shapes}"
        )
    out = out_leaves[0]
    dtype = jnp.result_type(out)
    if holomorphic:
        if not jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(
                f"{fname} with holomorphic=True requires outputs with complex "
                f"dtype, but got {dtype.name}."
            )
    elif jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(
            f"{fname} requires real-valued outputs (output dtype that is a sub-dtype "
            f"of np.floating), but got {dtype.name}. For holomorphic "
            "differentiation, pass holomorphic=True. For differentiation of "
            "non-holomorphic functions involving complex outputs, use fnn.vjp "
            "directly."
        )
    elif not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{fname}: the output must be a float scalar, got {describe(out)}")


def _rule_names(table) -> frozenset:
    """The names an override may use for the rules of `table`: each primitive's, each gate's."""
    names = {getattr(p, "name", None) for p in table}
    names |= {r.name for r in table.values() if isinstance(r, Gate)}
    names |= {r.lecture for r in table.values() if isinstance(r, Gate)}
    return frozenset(n for n in names if isinstance(n, str))


def _pullback(tr, fname):
    def vjp_fn(ct):
        ct_leaves, ct_tree = jax.tree_util.tree_flatten(ct)
        if ct_tree != tr.out_tree:
            raise TypeError(
                f"{fname}: cotangent structure {ct_tree} does not match the output "
                f"structure {tr.out_tree}"
            )
        for c, o in zip(ct_leaves, jax.tree_util.tree_leaves(tr.out)):
            if np.shape(c) != np.shape(o) or is_complex(c) != is_complex(o):
                raise ValueError(
                    f"{fname}: cotangent {describe(c)} does not match output "
                    f"{describe(o)}"
                    + (
                        " (a complex output takes a complex "
                        "cotangent, a real one a real cotangent, as in JAX's VJP)"
                        if is_complex(c) != is_complex(o)
                        else ""
                    )
                )
        return tr.gradients(tr.backward(tr.seeds(ct)))

    return vjp_fn
