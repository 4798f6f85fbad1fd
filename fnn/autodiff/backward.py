"""The backward pass: the tape walked in reverse, and the one function that applies a rule.

For each record the walk takes the upstream gradients of its outputs, applies the record's
backward rule with `pullback` and adds the results into its inputs' cotangents (a value that
fans out sums them). Cotangents live in a local dict (`ct`), never on the nodes. Everything
runs at trace time, so under `jax.jit` the forward and the backward compile into one XLA
program.

`pullback(rec, g)` is the one way a backward rule is applied, by the engine and by the
debuggers (locate_divergence, graph) alike: the rule is the override recorded with the gate
(`Record.rule`, looked up in `fnn.autodiff.overrides` when the gate was recorded) or else the
gate's own VJP; `call_vjp` calls either with what it declares it takes (the three signatures
users write: a gate's `vjp(g, saved, **static)`, also a primitive rule's, whose `saved` its
`save=` mode chose; an override's `rule(g, *inputs, out, **static)`; each may declare `needs`,
a gate's VJP `got`, an override `original`); then the VJP contract is checked, the NaN watch
looks at the result, and an error of the rule's own is wrapped with the gate's name and site.
"""

from __future__ import annotations

import inspect
import jax
import jax.numpy as jnp
import numpy as np

from fnn.autodiff import nans
from fnn.autodiff.overrides import Rule
from fnn.errors import FnnError, GateError, VJPContractError, describe


def backward(tape, seeds: dict, rule=None) -> dict:
    """Propagate cotangents `seeds` (node id -> array) back through `tape` (a
    fnn.autodiff.tape.Tape); return node -> ct.

    The walk: gates in reverse order of recording; a gate none of whose outputs got a cotangent
    is skipped; a multi-output gate gets zeros for its outputs that got none; what a gate sends
    back is added into its parents' cotangents (a value used twice sums both).
    `rule(pos, rec, g, needs, got) -> grads`, one per input (None where not needed), is what
    each gate sends back (`got`: which output leaves had a cotangent before the zero-fill): by
    default `engine_rule` (`pullback`); locate_divergence and graph pass their own to compare
    or record on the same walk.
    """
    rule = engine_rule if rule is None else rule
    ct = dict(seeds)
    for pos in reversed(range(len(tape.records))):
        rec = tape.records[pos]
        gs = [None if i is None else ct.pop(i, None) for i in rec.out_ids]
        if all(g is None for g in gs):
            continue  # no output of this gate reaches the result
        needs = rec.needs
        grads = rule(pos, rec, rec.upstream(gs), needs, tuple(g is not None for g in gs))
        for k, (ps, dx) in enumerate(zip(rec.parents, grads or ())):
            if dx is None or not needs[k]:
                continue
            for p, d in zip(ps, rec.leaf_grads(k, dx)):
                if p is not None and d is not None:
                    ct[p] = ct[p] + d if p in ct else d
    return ct


def engine_rule(pos: int, rec, g, needs, got=None):
    """The engine's rule for `backward`: `pullback` of the record."""
    return pullback(rec, g, needs, got)


def pullback(rec, g, needs=None, got=None) -> tuple:
    """Apply the backward rule of one recorded gate (`rec`, a fnn.autodiff.tape.Record) to
    upstream `g`: the override recorded with it (`rec.rule`) or the gate's own VJP, called by
    `call_vjp`; its result's contract checked (one gradient, or None, per positional input,
    each with its input's structure, shapes and dtypes); under fnn.debug_nans its gradients
    watched; a TypeError or ValueError of the rule's own raised as a VJPContractError naming
    the gate, its call site, the upstream gradient and the inputs. needs: per input, whether
    it needs a gradient (default: the record's); got: per output leaf, whether a cotangent
    reached it (None: all)."""
    needs = rec.needs if needs is None else needs
    try:
        grads = call_vjp(
            rec.gate,
            g,
            rec.saved,
            needs,
            rec.static,
            got,
            rule=rec.rule,
            inputs=rec.inputs,
            out=None if rec.rule is None else rec.output,
        )
        check_vjp_result(rec, grads, needs)
    except (TypeError, ValueError) as e:
        if isinstance(e, FnnError):
            raise
        ups = ", ".join(describe(x) for x in jax.tree_util.tree_leaves(g))
        raise VJPContractError(
            f"VJP of gate '{rec.gate.name}' failed (called at {rec.site}) with upstream "
            f"gradient {ups} and inputs ({', '.join(describe(x) for x in rec.inputs)}): {e}"
        ) from e
    if nans.active():
        nans.check(
            rec.gate.name,
            "backward (VJP)",
            rec.site,
            jax.tree_util.tree_leaves(g),
            [dx if need else None for dx, need in zip(grads, needs)],
            labels=("upstream gradient", "gradient for input"),
            scope=rec.scope,
        )
    return grads


def call_vjp(gate, g, saved, needs, static, got=None, *, rule=None, inputs=(), out=None):
    """Call a backward rule with what it declares it takes; unchecked (`pullback` checks it).

    rule None: the gate's own VJP, `vjp(g, saved, **static)` (a named gate's, or a primitive
    rule's, whose `saved` its `save=` mode chose), given `needs` and `got` if it names them.
    Else the override `rule(g, *inputs, out, **static)` (a `Rule` or a plain function): given
    `needs`, `original` (the gate's own VJP as a function of g) and `out` if it names them (or
    takes **kwargs), and of `static` the keywords it names (all with **kwargs)."""
    if rule is None:
        if gate.vjp is None:
            raise GateError(f"gate '{gate.name}' has no VJP: declare one with @{gate.name}.defvjp")
        names, _ = gate.vjp_takes
        extra = {"needs": needs} if "needs" in names else {}
        if "got" in names:
            extra["got"] = (
                tuple(got) if got is not None else (True,) * len(jax.tree_util.tree_leaves(g))
            )
        return gate.vjp(g, saved, **extra, **static)
    target = rule.vjp if isinstance(rule, Rule) else rule
    names, anything = takes(target)
    extra = {}
    if "needs" in names:
        extra["needs"] = needs
    if "original" in names:
        extra["original"] = lambda g_: call_vjp(gate, g_, saved, needs, static)
    if "out" in names or anything:
        extra["out"] = out
    # the gate's metadata, as far as the rule takes it (a rule for one gate may ignore it)
    meta = static if anything else {k: v for k, v in static.items() if k in names}
    return target(g, *inputs, **extra, **meta)


def takes(fn) -> tuple[frozenset, bool]:
    """(the names of `fn`'s parameters, whether it takes **kwargs); (empty, False) where Python
    cannot tell."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return frozenset(), False
    return (frozenset(p.name for p in params), any(p.kind is p.VAR_KEYWORD for p in params))


def check_vjp_result(rec, grads, needs) -> None:
    """The contract: one gradient per input with its input's structure, each leaf with its
    input leaf's shape and dtype (or None for an input that needs none)."""
    name = rec.gate.name
    if not isinstance(grads, (tuple, list)):
        raise VJPContractError(
            f"VJP of gate '{name}' returned {describe(grads)}; it must return a tuple with one "
            f"gradient (or None) per positional input, here {len(rec.inputs)}"
        )
    if len(grads) != len(rec.inputs):
        raise VJPContractError(
            f"VJP of gate '{name}' returned {len(grads)} gradients for {len(rec.inputs)} inputs "
            f"({', '.join(_describe(x) for x in rec.inputs)})"
        )
    for k, (need, dx, x) in enumerate(zip(needs, grads, rec.inputs)):
        if not need or dx is None:
            continue
        x_leaves, x_tree = jax.tree_util.tree_flatten(x)
        dx_leaves, dx_tree = jax.tree_util.tree_flatten(dx)
        if dx_tree != x_tree:
            raise VJPContractError(
                f"VJP of gate '{name}' returned a gradient of structure {dx_tree} for input {k} "
                f"of structure {x_tree} (called at {rec.site})"
            )
        for dl, xl in zip(dx_leaves, x_leaves):
            if np.shape(dl) != np.shape(xl) or jnp.result_type(dl) != jnp.result_type(xl):
                what = f"input {k}" + ("" if len(x_leaves) == 1 else f" (a leaf {describe(xl)})")
                raise VJPContractError(
                    f"VJP of gate '{name}' returned gradient {describe(dl)} for {what} which is "
                    f"{_describe(x)}: shape and dtype must match the input (called at "
                    f"{rec.site})"
                )


def _describe(x) -> str:
    leaves = jax.tree_util.tree_leaves(x)
    if len(leaves) == 1 and leaves[0] is x:
        return describe(x)
    return "{" + ", ".join(describe(v) for v in leaves) + "}"
