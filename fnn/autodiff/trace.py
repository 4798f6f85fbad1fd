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
from fnn.autodiff.interpret import Interpreter, make_jaxpr, raw
from fnn.autodiff.tape import Tape, Traced, is_float


@dataclasses.dataclass
class Trace:
    """One recorded forward pass of f, as `fnn.trace` returns it.

    `tr.backward(tr.seeds())` runs the hand-written backward seeded with ones (node -> cotangent);
    `tr.gradients(cts)` turns that into one gradient per argument; `tr.inputs()` lists the
    differentiated leaves.

    Attributes:
        tape: the records (every gate application, in order).
        args: f's positional arguments (raw values).
        argnums: the differentiated ones.
        in_nodes: per argument, a pytree like it with the node id of each boxed leaf (-1 for a
            leaf that is not differentiated), or None for an argument outside argnums.
        out: f's output (raw values; without aux).
        out_nodes: the node of each output leaf (None: it does not depend on the differentiated
            inputs).
        out_tree: the pytree structure of `out`.
        aux: f's auxiliary output (has_aux).
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
            nodes = jax.tree_util.tree_leaves_with_path(self.in_nodes[a])
            values = jax.tree_util.tree_leaves(self.args[a])
            for (path, node), value in zip(nodes, values):
                if node >= 0:
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
            if node < 0:
                return np.zeros(np.shape(value), dtype=jax.dtypes.float0)
            g = cts.get(node)
            return jnp.zeros_like(value) if g is None else g

        return tuple(
            jax.tree_util.tree_map(leaf, self.in_nodes[i], self.args[i])
            if i in self.argnums
            else None
            for i in range(len(self.args))
        )


def check_argnums(argnums, n_args: int, fname: str) -> tuple:
    """argnums (an int or a tuple of ints, negative allowed) as a tuple of positions."""
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    if not nums or not all(isinstance(a, int) for a in nums):
        raise TypeError(
            f"{fname}: argnums must be an int or a non-empty tuple of ints, got {argnums!r}"
        )
    for a in nums:
        if not -n_args <= a < n_args:
            raise ValueError(
                f"{fname}: argnums={argnums!r} but f was called with {n_args} "
                "positional argument(s)"
            )
    return tuple(a % n_args for a in nums)


def trace(
    f,
    args: tuple,
    argnums=0,
    *,
    kwargs: dict | None = None,
    has_aux: bool = False,
    fname: str = "fnn.trace",
    rules=None,
) -> Trace:
    """Record f(*args, **kwargs) on a fresh tape, the float leaves of args[argnums] boxed.

    f is traced to a jaxpr (`jax.make_jaxpr`, with the float leaves of the differentiated
    arguments as its inputs; everything else is a constant), and the jaxpr is interpreted onto
    the tape with `rules` (primitive -> rule, see fnn.autodiff.interpret). has_aux: f returns
    (output, aux); aux is returned as raw values.
    """
    args = tuple(args)
    nums = check_argnums(argnums, len(args), fname)
    args = tuple(
        jax.tree_util.tree_map(jnp.asarray, a) if i in nums else a for i, a in enumerate(args)
    )
    flat = {a: jax.tree_util.tree_flatten(args[a]) for a in nums}
    where = [(a, j) for a in nums for j, x in enumerate(flat[a][0]) if is_float(x)]
    inputs = [flat[a][0][j] for a, j in where]
    shape = {}
    rebuild = _rebuilder(args, nums, flat, where)
    closed = make_jaxpr(_flat_function(f, rebuild, kwargs, has_aux, fname, shape), inputs)
    tape = Tape()
    boxed = [tape.input(x) for x in inputs]
    outs = Interpreter(rules or {}, fname=fname).run_closed(closed, boxed)
    result, aux = _unflatten_outputs(shape, outs)
    out_nodes, out, out_tree = _output_nodes(result)
    return Trace(
        tape,
        args,
        nums,
        _input_nodes(args, nums, flat, where, boxed),
        out,
        out_nodes,
        out_tree,
        jax.tree_util.tree_map(raw, aux, is_leaf=_is_traced),
    )


def _is_traced(x) -> bool:
    return isinstance(x, Traced)


def _rebuilder(args: tuple, nums: tuple, flat: dict, where: list):
    """`rebuild(values)`: the positional arguments, the leaves at `where` ((argnum, leaf index)
    of the arguments `nums`, flattened in `flat`) replaced by `values`."""

    def rebuild(values):
        leaves = {a: list(flat[a][0]) for a in nums}
        for (a, j), v in zip(where, values):
            leaves[a][j] = v
        return tuple(
            jax.tree_util.tree_unflatten(flat[i][1], leaves[i]) if i in nums else x
            for i, x in enumerate(args)
        )

    return rebuild


def _flat_function(f, rebuild, kwargs, has_aux: bool, fname: str, shape: dict):
    """f as a function of the differentiated float leaves (`rebuild` puts them in place),
    returning the array leaves of (output, aux); `shape` is filled with the structure of that
    pair (tree, every leaf, which leaves are arrays) for _unflatten_outputs."""

    def flat_f(*values):
        result, aux = _split_aux(f(*rebuild(values), **(kwargs or {})), has_aux, fname)
        leaves, tree = jax.tree_util.tree_flatten((result, aux))
        arrays = [i for i, x in enumerate(leaves) if isinstance(x, (jax.Array, jax.core.Tracer))]
        shape.update(tree=tree, leaves=leaves, arrays=arrays)
        return [leaves[i] for i in arrays]

    return flat_f


def _split_aux(result, has_aux: bool, fname: str) -> tuple:
    """(output, aux) of what f returned (aux None without has_aux); with has_aux, a TypeError
    unless f returned a pair."""
    if not has_aux:
        return result, None
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise TypeError(
            f"{fname}(has_aux=True): f must return a pair (output, aux), "
            f"got {type(result).__name__}"
        )
    result, aux = result
    return result, aux


def _unflatten_outputs(shape: dict, outs: list) -> tuple:
    """(output, aux) of f, the interpreted outputs `outs` in place of its array leaves."""
    leaves = list(shape["leaves"])
    for i, o in zip(shape["arrays"], outs):
        leaves[i] = o
    return jax.tree_util.tree_unflatten(shape["tree"], leaves)


def _output_nodes(result) -> tuple:
    """(the node of each output leaf, None where it is not recorded; the output as raw values;
    its pytree structure)."""
    out_leaves, out_tree = jax.tree_util.tree_flatten(result, is_leaf=_is_traced)
    out_nodes = [x.node if isinstance(x, Traced) else None for x in out_leaves]
    out = jax.tree_util.tree_unflatten(out_tree, [raw(x) for x in out_leaves])
    return out_nodes, out, out_tree


def _input_nodes(args: tuple, nums: tuple, flat: dict, where: list, boxed: list) -> tuple:
    """Per argument: a pytree like it with the node of each boxed leaf (-1 for a leaf that is
    not boxed), or None for an argument outside `nums`."""
    in_nodes = [None] * len(args)
    node_of = {aj: b.node for aj, b in zip(where, boxed)}
    for a in nums:
        in_nodes[a] = jax.tree_util.tree_unflatten(
            flat[a][1], [node_of.get((a, j), -1) for j in range(len(flat[a][0]))]
        )
    return tuple(in_nodes)
