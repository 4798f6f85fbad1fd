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
from fnn.autodiff.backward import pullback as apply_rule
from fnn.errors import GateError, NestingError, describe

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
    return bool(
        jnp.issubdtype(jnp.result_type(x.value if isinstance(x, Traced) else x), jnp.inexact)
    )


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
        full = [
            g if g is not None else jnp.zeros(np.shape(o), jnp.result_type(o))
            for g, o in zip(gs, self.outs)
        ]
        return jax.tree_util.tree_unflatten(self.out_tree, full)

    @property
    def output(self) -> Any:
        """The raw output in its structure (an array, or a tuple or dict of them)."""
        return jax.tree_util.tree_unflatten(self.out_tree, list(self.outs))

    def pullback(self, g, needs=None, got=None) -> tuple:
        """This gate's backward rule applied to upstream `g`: `fnn.autodiff.backward.pullback`
        (its override or its VJP, the contract checked, NaNs watched, errors named)."""
        return apply_rule(self, g, needs, got)

    def leaf_grads(self, k, dx) -> list:
        """Input k's gradient `dx` (its structure) as a list with one array per leaf."""
        leaves, tree = jax.tree_util.tree_flatten(self.inputs[k])
        if tree.num_leaves == 1 and jax.tree_util.treedef_is_leaf(tree):
            return [dx]
        return tree.flatten_up_to(dx)


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
    if in_forward is not None and any(
        t.tape is in_forward[1] for t in traced + _traced_leaves(static)
    ):
        raise GateError(
            f"the forward of gate '{in_forward[0]}' applied gate '{gate.name}' to a value traced by "
            "fnn that did not come in through its positional inputs (a closure or a global). A "
            "gate's forward computes on raw values, so that value's gradient would bypass the "
            f"hand-written VJP of '{in_forward[0]}': pass it as a positional input instead."
        )
    if _traced_leaves(static):
        bad = [k for k, v in static.items() if _traced_leaves(v)]
        raise GateError(
            f"gate '{gate.name}': array input(s) {bad} were passed by keyword; "
            "keywords are static metadata, pass arrays positionally"
        )
    if not traced:
        if _GATE_CALLS.get() and _any_tracer(args):
            return _bind_gate_call(gate, args, static, site or call_site())
        out = _run_forward(gate, args, static)[0]
        if nans.active():
            nans.check(
                gate.name, "forward", site or call_site(), args, jax.tree_util.tree_leaves(out)
            )
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
        raw.append(
            jax.tree_util.tree_unflatten(
                tree, [x.value if isinstance(x, Traced) else x for x in leaves]
            )
        )
    raw = tuple(raw)
    if not gate.complex:
        _refuse_complex(gate, "input", raw)
    supply = _SUPPLY.get()
    out, saved = (
        _run_forward(gate, raw, static, tape) if supply is None else supply(gate, raw, static)
    )
    outs, out_tree = jax.tree_util.tree_flatten(out)
    site = site or call_site()
    if not gate.complex:
        _refuse_complex(gate, "output", outs, site)
    scope = current_scope() if scope is None else scope
    if nans.active():
        nans.check(gate.name, "forward", site, raw, outs, scope=scope)
    out_ids = tuple(tape.new_node() if is_float(o) else None for o in outs)
    tape.records.append(
        Record(
            gate,
            static,
            raw,
            tuple(parents),
            tuple(outs),
            out_ids,
            out_tree,
            saved,
            site,
            scope,
            overrides.find(gate, scope),
        )
    )
    box = type(traced[0])
    wrapped = [o if i is None else box(o, tape, i) for o, i in zip(outs, out_ids)]
    return jax.tree_util.tree_unflatten(out_tree, wrapped)


def is_complex(x) -> bool:
    """Whether x (an array, scalar, ShapeDtypeStruct or Traced) has a complex dtype."""
    value = x.value if isinstance(x, Traced) else x
    dtype = getattr(value, "dtype", None)
    if dtype is None:  # a Python scalar
        return isinstance(value, complex)
    try:
        return dtype is not None and bool(jnp.issubdtype(dtype, jnp.complexfloating))
    except TypeError:  # an extended dtype (a PRNG key)
        return False


def _refuse_complex(gate, what: str, values, site: str | None = None) -> None:
    """A GateError naming the gate and the complex value, for a gate whose VJP is written for
    real values alone (Gate.complex False)."""
    for k, v in enumerate(values):
        bad = [x for x in jax.tree_util.tree_leaves(v) if is_complex(x)]
        if bad:
            where = f" (called at {site or call_site()})"
            raise GateError(
                f"rule '{gate.name}' does not differentiate complex values: its {what} {k} is "
                f"{describe(bad[0])}{where}. Its VJP is written for real values; rather than "
                "compute another gradient, fnn stops here. Use JAX's built-in gradient for this "
                "program, or declare a rule that follows JAX's convention for complex values "
                "(fnn.primitive_gate(..., complex=True))."
            )


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
        avals = [v.aval for v in eqn.invars[len(eqn.invars) - self.n_dynamic :]]
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
