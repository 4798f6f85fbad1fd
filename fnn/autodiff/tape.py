"""The graph recorded in the forward pass: a tape of gate applications and the values on it.

A `Traced` boxes one value (a jax array, or a JAX tracer under jit/vmap) that depends on the
inputs being differentiated. Applying a gate to arguments holding some runs the forward on the
raw values and appends a `Record` to their `Tape`; the outputs are boxed again. The tape belongs
to one `fnn.vjp` call: nothing is global, and everything happens at trace time, so under
`jax.jit` only the forward and the hand-written backward reach XLA.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn.autodiff import nans, overrides
from fnn.errors import GateError, NestingError, VJPContractError, describe

_SKIP_DIRS = tuple(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), d) + os.sep
    for d in ("autodiff", "ops")
)

# the gate whose forward is running: a gate's forward computes on raw values and never records
_IN_FORWARD: contextvars.ContextVar = contextvars.ContextVar("fnn_gate_forward", default=None)
# set while fnn traces a function to a jaxpr: gates applied to JAX tracers then stand in the
# jaxpr as one GateCall equation each (their identity kept for the interpreter)
_GATE_CALLS: contextvars.ContextVar = contextvars.ContextVar("fnn_gate_calls", default=False)
# set while a checkpoint's backward re-records the gates its policy kept: a gate recorded then
# takes its output and saved values from `supply(gate, raw_inputs, static) -> (out, saved)`
# instead of running its forward again
_SUPPLY: contextvars.ContextVar = contextvars.ContextVar("fnn_supply", default=None)


@contextlib.contextmanager
def tracing_for_fnn(gate_calls: bool = True):
    """Within this block, gates applied to JAX tracers record themselves as GateCalls."""
    token = _GATE_CALLS.set(gate_calls)
    try:
        yield
    finally:
        _GATE_CALLS.reset(token)


@contextlib.contextmanager
def supplying(supply):
    """Within this block, gates recorded on a tape get their (output, saved) from `supply`
    rather than from their forward (a value kept by a checkpoint's policy, not recomputed)."""
    token = _SUPPLY.set(supply)
    try:
        yield
    finally:
        _SUPPLY.reset(token)


def call_site() -> str:
    """'file:line' of the innermost frame outside fnn's engine and gates."""
    f = sys._getframe(1)
    while f is not None and f.f_code.co_filename.startswith(_SKIP_DIRS):
        f = f.f_back
    return f"{f.f_code.co_filename}:{f.f_lineno}" if f is not None else "?"


def is_float(x) -> bool:
    """Whether x (an array, scalar or Traced) has a float dtype: what fnn differentiates."""
    return bool(jnp.issubdtype(jnp.result_type(x.value if isinstance(x, Traced) else x),
                               jnp.inexact))


def is_traced(x) -> bool:
    return isinstance(x, Traced)


class Traced:
    """A value being differentiated by fnn: the raw `value`, its `tape` and its node id there.

    It has the array's metadata (shape, dtype, ...) and nothing else: user code never sees it
    (fnn.grad traces the user's function to a jaxpr, whose interpreter boxes the values), so
    it needs no array operators.

    Args:
        value: the raw array.
        tape: the tape it is recorded on.
        node: its node id on that tape.
    """

    __slots__ = ("value", "tape", "node")
    __array_priority__ = 1000  # numpy defers `ndarray op Traced` to the reflected methods

    def __init__(self, value, tape: "Tape", node: int):
        self.value = value
        self.tape = tape
        self.node = node

    shape = property(lambda self: self.value.shape)
    ndim = property(lambda self: self.value.ndim)
    dtype = property(lambda self: self.value.dtype)
    size = property(lambda self: self.value.size)

    def __len__(self):
        return len(self.value)

    def __repr__(self):
        return f"Traced({describe(self.value)})"

    def __array__(self, *a, **k):
        raise TypeError(
            f"a value traced by fnn ({describe(self.value)}) was converted to a NumPy array, "
            "which would drop its gradient; keep it inside fnn's gates (fnn.ops)."
        )


@dataclasses.dataclass
class Record:
    """One gate application: what the backward pass and the debuggers need to replay it.

    Positional inputs may be pytrees: `parents[k]` holds the node id (or None, a constant) of
    each leaf of `inputs[k]`. Outputs are flattened: `out_ids[j]` and `outs[j]` per output leaf
    (node None: an integer output, which carries no gradient), `out_tree` their structure.
    """

    gate: Any
    static: dict
    inputs: tuple  # raw positional inputs (pytrees)
    parents: tuple  # per input, a tuple with a node id or None per leaf
    outs: tuple  # raw output leaves
    out_ids: tuple  # node id per output leaf (None: carries no gradient)
    out_tree: Any
    saved: Any
    site: str
    scope: str = ""  # the layer path (jax.named_scope) the gate was applied in
    rule: Any = None  # an override of the gate's backward (fnn.autodiff.overrides), or None

    @property
    def needs(self) -> tuple:
        """Per positional input: whether any of its leaves is a traced value."""
        return tuple(any(p is not None for p in ps) for ps in self.parents)

    @property
    def multi(self) -> bool:
        """Whether the output is a structure (tuple, dict) rather than one array."""
        return not jax.tree_util.treedef_is_leaf(self.out_tree)

    def upstream(self, gs) -> Any:
        """The upstream gradient in the output's structure from per-leaf cotangents `gs` (None
        where nothing reached that output: zeros of its shape)."""
        full = [g if g is not None else jnp.zeros(np.shape(o), jnp.result_type(o))
                for g, o in zip(gs, self.outs)]
        return jax.tree_util.tree_unflatten(self.out_tree, full)

    def pullback(self, g, needs=None, got=None) -> tuple:
        """The gate's hand-written VJP on upstream `g`, its result's contract checked: one
        gradient (or None) per positional input, each with its input's structure, shapes and
        dtypes. got: per output leaf, whether a cotangent reached it (None: all). Raises what
        the VJP raises."""
        needs = self.needs if needs is None else needs
        if self.rule is None:
            grads = self.gate.run_vjp(g, self.saved, needs, self.static, got)
        else:
            out = jax.tree_util.tree_unflatten(self.out_tree, list(self.outs))
            grads = overrides.call_rule(self.rule, self.gate, g, self.inputs, out, self.saved,
                                        needs, self.static)
        check_vjp_result(self, grads, needs)
        return grads

    def leaf_grads(self, k, dx) -> list:
        """Input k's gradient `dx` (its structure) as a list with one array per leaf."""
        leaves, tree = jax.tree_util.tree_flatten(self.inputs[k])
        if tree.num_leaves == 1 and jax.tree_util.treedef_is_leaf(tree):
            return [dx]
        return tree.flatten_up_to(dx)


def check_vjp_result(rec: Record, grads, needs) -> None:
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
                f"of structure {x_tree} (called at {rec.site})")
        for dl, xl in zip(dx_leaves, x_leaves):
            if np.shape(dl) != np.shape(xl) or jnp.result_type(dl) != jnp.result_type(xl):
                what = f"input {k}" + ("" if len(x_leaves) == 1 else f" (a leaf {describe(xl)})")
                raise VJPContractError(
                    f"VJP of gate '{name}' returned gradient {describe(dl)} for {what} which is "
                    f"{_describe(x)}: shape and dtype must match the input (called at "
                    f"{rec.site})")


def _describe(x) -> str:
    leaves = jax.tree_util.tree_leaves(x)
    if len(leaves) == 1 and leaves[0] is x:
        return describe(x)
    return "{" + ", ".join(describe(v) for v in leaves) + "}"


class Tape:
    """The records of one forward pass, in execution order, and a counter for node ids."""

    def __init__(self):
        self.records: list[Record] = []
        self.n_nodes = 0

    def new_node(self) -> int:
        self.n_nodes += 1
        return self.n_nodes - 1

    def input(self, value, box=None) -> Traced:
        return (box or Traced)(value, self, self.new_node())


def current_scope() -> str:
    """The layer path of jax.named_scope at this point ('' outside any)."""
    from jax._src import source_info_util  # reading JAX's name stack, as jaxprs record it

    return str(source_info_util.current_name_stack())


def _traced_leaves(args):
    return [x for x in jax.tree_util.tree_leaves(args, is_leaf=is_traced) if isinstance(x, Traced)]


def apply(gate, args, static, *, site=None, scope=None):
    """Apply `gate` to positional `args` and keyword metadata `static`: record it on the tape
    of the traced values among args (at any depth of their pytrees), or run the forward alone
    when there are none."""
    in_forward = _IN_FORWARD.get()
    traced = _traced_leaves(args)
    if in_forward is not None and any(t.tape is in_forward[1]
                                      for t in traced + _traced_leaves(static)):
        raise GateError(
            f"the forward of gate '{in_forward[0]}' applied gate '{gate.name}' to a value traced by "
            "fnn that did not come in through its positional inputs (a closure or a global). A "
            "gate's forward computes on raw values, so that value's gradient would bypass the "
            f"hand-written VJP of '{in_forward[0]}': pass it as a positional input instead.")
    if _traced_leaves(static):
        bad = [k for k, v in static.items() if _traced_leaves(v)]
        raise GateError(f"gate '{gate.name}': array input(s) {bad} were passed by keyword; "
                        "keywords are static metadata, pass arrays positionally")
    if not traced:
        if _GATE_CALLS.get() and _any_tracer(args):
            return _bind_gate_call(gate, args, static, site or call_site())
        out = _run_forward(gate, args, static)[0]
        if nans.active():
            nans.check(gate.name, "forward", site or call_site(), args,
                       jax.tree_util.tree_leaves(out))
        return out
    return _record(gate, args, static, traced, site, scope)


def _run_forward(gate, raw, static, tape=None):
    # a forward may record on tapes of its own (a loop's body), never on the tape it is on
    token = _IN_FORWARD.set((gate.name, tape))
    try:
        return gate.run_forward(raw, static)
    finally:
        _IN_FORWARD.reset(token)


def _record(gate, args, static, traced, site, scope):
    tapes = {id(a.tape): a.tape for a in traced}
    if len(tapes) > 1:
        raise NestingError(
            f"gate '{gate.name}' received values from two nested fnn.grad/fnn.vjp calls. fnn's "
            "hand-written backward cannot be differentiated by fnn again; for higher derivatives "
            "use JAX on the outside, e.g. jacfwd(fnn.grad(f)) or grad(fnn.grad(f)) from jax."
        )
    (tape,) = tapes.values()
    raw, parents = [], []
    for a in args:
        leaves, tree = jax.tree_util.tree_flatten(a, is_leaf=is_traced)
        parents.append(tuple(x.node if isinstance(x, Traced) else None for x in leaves))
        raw.append(jax.tree_util.tree_unflatten(
            tree, [x.value if isinstance(x, Traced) else x for x in leaves]))
    raw = tuple(raw)
    supply = _SUPPLY.get()
    out, saved = _run_forward(gate, raw, static, tape) if supply is None else supply(gate, raw,
                                                                                        static)
    outs, out_tree = jax.tree_util.tree_flatten(out)
    site = site or call_site()
    scope = current_scope() if scope is None else scope
    if nans.active():
        nans.check(gate.name, "forward", site, raw, outs, scope=scope)
    out_ids = tuple(tape.new_node() if is_float(o) else None for o in outs)
    tape.records.append(Record(gate, static, raw, tuple(parents), tuple(outs), out_ids, out_tree,
                               saved, site, scope, overrides.find(gate, scope)))
    box = type(traced[0])
    wrapped = [o if i is None else box(o, tape, i) for o, i in zip(outs, out_ids)]
    return jax.tree_util.tree_unflatten(out_tree, wrapped)


def _any_tracer(args) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(args))


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, jax.core.Tracer))


class GateCall:
    """One application of an fnn gate inside a function fnn traces to a jaxpr.

    It is the `policy` of the `remat` equation that stands for the gate (the gate's forward
    under `jax.checkpoint` with every value saveable, which is a plain call to anything else
    that reads the jaxpr): the gate, its static metadata, and how to rebuild its positional
    arguments from the equation's inputs (the last `n_dynamic` of them; the ones before are
    values the forward closed over).
    """

    def __init__(self, gate, static, in_tree, leaves, dynamic, site):
        self.gate, self.static, self.in_tree, self.site = gate, static, in_tree, site
        self.dynamic = tuple(dynamic)  # positions of the array leaves among the flat arguments
        self.fixed = {i: x for i, x in enumerate(leaves) if i not in set(dynamic)}
        self.in_avals = tuple((np.shape(leaves[i]), jnp.result_type(leaves[i])) for i in dynamic)
        self.n_out = None

    @property
    def n_dynamic(self) -> int:
        return len(self.dynamic)

    def __call__(self, *args, **kwargs):  # as a checkpoint policy: every value is saveable
        return True

    def fits(self, eqn) -> bool:
        """Whether `eqn` is this gate's call as made (not transformed since: a vmap or jvp
        inside the traced function changes its shapes; then its jaxpr is interpreted)."""
        if len(eqn.invars) < self.n_dynamic or len(eqn.outvars) != self.n_out:
            return False
        avals = [v.aval for v in eqn.invars[len(eqn.invars) - self.n_dynamic:]]
        return all(tuple(a.shape) == s and a.dtype == d for a, (s, d) in zip(avals, self.in_avals))

    def arguments(self, dynamic) -> tuple:
        leaves = [None] * (len(self.fixed) + self.n_dynamic)
        for i, x in self.fixed.items():
            leaves[i] = x
        for i, x in zip(self.dynamic, dynamic):
            leaves[i] = x
        return jax.tree_util.tree_unflatten(self.in_tree, leaves)

    def __repr__(self):
        return f"GateCall({self.gate.name})"


def _bind_gate_call(gate, args, static, site):
    leaves, in_tree = jax.tree_util.tree_flatten(args)
    dynamic = [i for i, x in enumerate(leaves) if _is_array(x)]
    call = GateCall(gate, static, in_tree, leaves, dynamic, site)
    out_tree = []

    def forward(*values):
        out = _run_forward(gate, call.arguments(values), static)[0]
        outs, tree = jax.tree_util.tree_flatten(out)
        out_tree.append(tree)
        return outs

    outs = jax.checkpoint(forward, prevent_cse=False, policy=call)(*[leaves[i] for i in dynamic])
    call.n_out = len(outs)
    return jax.tree_util.tree_unflatten(out_tree[0], outs)
