"""fnn's public reverse mode: `vjp`, `grad`, `value_and_grad` and `trace`, bound once to the table
of primitive rules (fnn.ops.RULES), over the core's `make_transforms`, which is also the
core's default table (a rule run outside an interpreter uses it); and
`checkpoint` (rematerialization), which both fnn.grad and jax.grad differentiate."""

from __future__ import annotations

import operator
from typing import Callable

import jax

from fnn.autodiff.api import make_transforms, rules
from fnn.autodiff.interpret import use_default_rules
from fnn.ops import CUSTOM_RULES, RULES, registry

# the lecture's names ('multiply') an override may use are the rules' own (Gate.lecture)
trace, vjp, value_and_grad, grad = make_transforms(RULES, CUSTOM_RULES, gate_names=registry)
use_default_rules(RULES)  # what a loop's gate called on its own interprets its body with


def checkpoint(
    fun: Callable, *, prevent_cse: bool = True, static_argnums=(), policy: Callable | None = None
) -> Callable:
    """`fun` whose intermediate values are recomputed in the backward instead of kept.

    jax.checkpoint (jax.remat) itself, with the same arguments, checked.

    Under jax.grad it is JAX's rematerialization. Under fnn.grad the checkpoint is one gate
    (fnn.autodiff.structural.remat.remat), and every policy is honoured as JAX honours it: any of
    jax.checkpoint_policies (checkpoint_dots, dots_with_no_batch_dims_saveable,
    save_only_these_names with jax.ad_checkpoint.checkpoint_name, save_any_names_but_these,
    save_from_both_policies, the offloading ones, ...) or a function
    `policy(primitive, *avals, **params) -> bool` (or Saveable / Recompute / Offloadable), asked
    about each equation of the body. Its forward runs the body, keeping its inputs and the
    values the policy saves (None / nothing_saveable: none; offloaded ones in host memory); its
    backward runs the body's forward again under fnn's interpreter (so fnn's hand-written rules,
    and any rule overrides in effect, apply there too), taking the kept values instead of
    recomputing them, then the body's backward: on a body of JAX primitives it recomputes the
    equations JAX's own backward recomputes. A scan, cond, nested checkpoint or fnn gate inside
    the body is kept or recomputed whole (kept when the policy saves anything inside it).

    The cost: about one more forward of the checkpointed part per step; the saving: its
    intermediate values (activations) between the forward and backward.

    Args:
        fun: the function to checkpoint.
        prevent_cse: keep XLA from merging the recomputation back into the forward (default
            True). XLA's CPU backend drops that barrier unless the program is compiled with
            fnn.runtime.remat_compiler_options() (`jax.jit(f, compiler_options=...)`);
            make_train_step (remat=True) and fit do so.
        static_argnums: the position(s) of `fun`'s arguments that are static (an int or a tuple
            of ints), as for jax.checkpoint.
        policy: which values to keep rather than recompute (None: none), as above.

    Returns:
        The checkpointed function, `jax.checkpoint(fun, ...)`.

    Raises:
        TypeError: `fun` or a non-None `policy` is not callable; `prevent_cse` is not a bool;
            `static_argnums` is not an int or a tuple of ints.
    """
    if not callable(fun):
        raise TypeError(f"fnn.checkpoint: fun must be a function, got {type(fun).__name__} {fun!r}")
    if not isinstance(prevent_cse, bool):
        raise TypeError(f"fnn.checkpoint: prevent_cse must be True or False, got {prevent_cse!r}")
    nums = (static_argnums,) if not isinstance(static_argnums, (tuple, list)) else static_argnums
    try:
        nums = tuple(operator.index(i) for i in nums)
    except TypeError:
        raise TypeError(
            f"fnn.checkpoint: static_argnums must be an int or a tuple of ints, got "
            f"{static_argnums!r}"
        ) from None
    if policy is not None and not callable(policy):
        raise TypeError(
            f"fnn.checkpoint: policy must be None or a checkpoint policy (a function "
            f"of jax.checkpoint_policies), got {policy!r}"
        )
    return jax.checkpoint(fun, prevent_cse=prevent_cse, static_argnums=nums, policy=policy)


__all__ = ["checkpoint", "grad", "rules", "trace", "value_and_grad", "vjp"]
