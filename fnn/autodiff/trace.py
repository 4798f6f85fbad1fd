"""The forward pass made public: `trace(f, args, argnums)` records f on a fresh tape.

    tr = trace(f, (params, x), argnums=(0,))
    tr.tape.records          # every gate application, in order
    tr.backward(tr.seeds())  # node -> cotangent, every output seeded with ones
    tr.gradients(cts)        # per differentiated argument, a pytree like it

What `vjp`, `locate_divergence` and `graph` share: box the float leaves of the differentiated
arguments, run f, and keep which node each input and output leaf is (after autograd's
`trace`). The arguments not in argnums, and integer leaves, are constants of the graph.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn.autodiff.backward import backward
from fnn.autodiff.tape import Tape, Traced, is_float
from fnn.errors import FnnError, ForeignCallError, NestingError, describe


@dataclasses.dataclass
class Trace:
    """One recorded forward pass of f.

    tape: the records. args: f's positional arguments (raw values). argnums: the differentiated
    ones. in_nodes: per argument, a pytree like it with the node id of each boxed leaf (None for
    a leaf that is not differentiated), or None for an argument outside argnums. out: f's output
    (raw values; without aux). out_nodes: the node of each output leaf (None: it does not
    depend on the differentiated inputs). aux: f's auxiliary output (has_aux).
    """

    tape: Tape
    args: tuple
    argnums: tuple
    in_nodes: tuple
    out: Any
    out_nodes: list
    out_tree: Any
    aux: Any = None

    def inputs(self) -> list:
        """[(argnum, path, node, value)] for each differentiated leaf, in argument order."""
        found = []
        for a in self.argnums:
            nodes = jax.tree_util.tree_leaves_with_path(self.in_nodes[a],
                                                        is_leaf=lambda x: x is None)
            values = jax.tree_util.tree_leaves(self.args[a])
            for (path, node), value in zip(nodes, values):
                if node is not None:
                    found.append((a, path, node, value))
        return found

    def seeds(self, ct=None) -> dict:
        """node -> cotangent for the output leaves that depend on the inputs: `ct` (a pytree
        like `out`) or ones. Leaves feeding the same node add up."""
        outs = jax.tree_util.tree_leaves(self.out)
        cts = [jnp.ones_like(o) for o in outs] if ct is None else jax.tree_util.tree_leaves(ct)
        seeds = {}
        for node, c, o in zip(self.out_nodes, cts, outs):
            if node is not None:
                c = jnp.asarray(c, dtype=jnp.result_type(o))
                seeds[node] = seeds[node] + c if node in seeds else c
        return seeds

    def backward(self, seeds: dict, rule=None) -> dict:
        """fnn.autodiff.backward on this trace's tape."""
        return backward(self.tape, seeds, rule)

    def gradients(self, cts: dict) -> tuple:
        """Per positional argument: its gradient (a pytree like it; zeros where nothing
        reached a leaf, float0 zeros for integer leaves), or None outside argnums."""
        def leaf(node, value):
            if node is None:
                return np.zeros(np.shape(value), dtype=jax.dtypes.float0)
            g = cts.get(node)
            return jnp.zeros_like(value) if g is None else g

        return tuple(
            jax.tree_util.tree_map(leaf, self.in_nodes[i], self.args[i],
                                   is_leaf=lambda x: x is None)
            if i in self.argnums else None
            for i in range(len(self.args)))


def check_argnums(argnums, n_args: int, fname: str) -> tuple:
    """argnums (an int or a tuple of ints, negative allowed) as a tuple of positions."""
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    if not nums or not all(isinstance(a, int) for a in nums):
        raise TypeError(f"{fname}: argnums must be an int or a non-empty tuple of ints, "
                        f"got {argnums!r}")
    for a in nums:
        if not -n_args <= a < n_args:
            raise ValueError(f"{fname}: argnums={argnums!r} but f was called with {n_args} "
                             "positional argument(s)")
    return tuple(a % n_args for a in nums)


def trace(f, args: tuple, argnums=0, *, kwargs: dict | None = None, has_aux: bool = False,
          fname: str = "fnn.trace", box=None, registry=None) -> Trace:
    """Record f(*args, **kwargs) on a fresh tape, the float leaves of args[argnums] boxed.

    has_aux: f returns (output, aux); aux is returned as raw values. box: the class of the
    boxed values (the array operators of the gates layer). registry: name -> gate, to suggest
    the gate for a JAX function that received a traced value.
    """
    args = tuple(args)
    nums = check_argnums(argnums, len(args), fname)
    _reject_nesting(tuple(args[a] for a in nums), fname)
    tape = Tape()
    args = tuple(jax.tree_util.tree_map(jnp.asarray, a) if i in nums else a
                 for i, a in enumerate(args))
    in_nodes, boxed = [], []
    for i, a in enumerate(args):
        if i not in nums:
            in_nodes.append(None)
            boxed.append(a)
            continue
        leaves, tree = jax.tree_util.tree_flatten(a)
        bx = [tape.input(x, box) if is_float(x) else x for x in leaves]
        in_nodes.append(jax.tree_util.tree_unflatten(
            tree, [b.node if isinstance(b, Traced) else None for b in bx]))
        boxed.append(jax.tree_util.tree_unflatten(tree, bx))
    result = _run(f, boxed, kwargs or {}, fname, registry)
    aux = None
    if has_aux:
        if not (isinstance(result, (tuple, list)) and len(result) == 2):
            raise TypeError(f"{fname}(has_aux=True): f must return a pair (output, aux), "
                            f"got {type(result).__name__}")
        result, aux = result
        aux = _unbox(aux, tape)
    out_leaves, out_tree = jax.tree_util.tree_flatten(result, is_leaf=lambda x: isinstance(x, Traced))
    out_nodes = [x.node if isinstance(x, Traced) and x.tape is tape else None for x in out_leaves]
    out = jax.tree_util.tree_unflatten(out_tree, [_unbox(x, tape) for x in out_leaves])
    return Trace(tape, args, nums, tuple(in_nodes), out, out_nodes, out_tree, aux)


def _reject_nesting(primals, fname):
    for leaf in jax.tree_util.tree_leaves(primals):
        if isinstance(leaf, Traced):
            raise NestingError(
                f"{fname} was called on a value already traced by an outer fnn.grad/fnn.vjp "
                f"({describe(leaf)}). fnn's hand-written backward cannot be differentiated by fnn "
                "again; for higher derivatives use JAX on the outside, e.g. "
                "jacfwd(fnn.grad(f)) or grad(fnn.grad(f)) from jax."
            )


def _unbox(tree, tape):
    """Raw values for `tape`'s Traced leaves. A Traced of an enclosing fnn call stays as it is,
    so that call still sees its dependence (an inner value_and_grad's value, say)."""
    return jax.tree_util.tree_map(
        lambda x: x.value if isinstance(x, Traced) and x.tape is tape else x, tree,
        is_leaf=lambda x: isinstance(x, Traced))


def _run(f, args, kwargs, fname, registry):
    try:
        return f(*args, **kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, FnnError) or registry is None:
            raise
        if "fnn.autodiff.tape.Traced" in str(e) or "fnn.ops.operators" in str(e):
            from fnn.autodiff.foreign import explain_foreign_call

            raise ForeignCallError(explain_foreign_call(e, fname, registry)) from e
        raise
