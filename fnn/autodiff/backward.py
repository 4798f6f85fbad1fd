"""The backward pass: the tape walked in reverse, each gate's hand-written VJP applied.

For each record it takes the upstream gradients of its outputs, calls the gate's VJP (upstream
times local gradient), checks the VJP's contract and adds the results into its inputs'
cotangents (a value that fans out sums them). Cotangents live in a local dict (`ct`), never on
the nodes. Everything runs at trace time, so under `jax.jit` the forward and the backward
compile into one XLA program.
"""

from __future__ import annotations

import jax

from fnn.autodiff import nans
from fnn.autodiff.tape import Record, Tape
from fnn.errors import FnnError, VJPContractError, describe


def backward(tape: Tape, seeds: dict, rule=None) -> dict:
    """Propagate cotangents `seeds` (node id -> array) back through `tape`; return node -> ct.

    The walk: gates in reverse order of recording; a gate none of whose outputs got a cotangent
    is skipped; a multi-output gate gets zeros for its outputs that got none; what a gate sends
    back is added into its parents' cotangents (a value used twice sums both).
    `rule(pos, rec, g, needs, got) -> grads`, one per input (None where not needed), is what
    each gate sends back (`got`: which output leaves had a cotangent before the zero-fill): by
    default `engine_rule`; locate_divergence and graph pass their own to compare or record on
    the same walk.
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


def engine_rule(pos: int, rec: Record, g, needs, got=None):
    """`Record.pullback` as the engine runs it: a crash names the gate and its call site, and
    NaNs are watched under fnn.debug_nans."""
    try:
        grads = rec.pullback(g, needs, got)
    except (TypeError, ValueError) as e:
        if isinstance(e, FnnError):
            raise
        ups = ", ".join(describe(x) for x in jax.tree_util.tree_leaves(g))
        raise VJPContractError(
            f"VJP of gate '{rec.gate.name}' failed (called at {rec.site}) with upstream "
            f"gradient {ups} and inputs ({', '.join(describe(x) for x in rec.inputs)}): {e}"
        ) from e
    if nans.active():
        nans.check(rec.gate.name, "backward (VJP)", rec.site, jax.tree_util.tree_leaves(g),
                   [dx if need else None for dx, need in zip(grads, needs)],
                   labels=("upstream gradient", "gradient for input"), scope=rec.scope)
    return grads
