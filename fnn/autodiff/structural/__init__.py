"""The structural rules: those of the primitives that hold a program of their own (a nested
jit's, a loop's body, a branch, a checkpoint's body, a custom rule, a shard_map's body, a
solve's matvec). Each runs that program with the table of rules in use, which it is given (the
interpreter passes itself, and so `interp.rules`; a gate gets the table as its `rules`
parameter), so a user's extra rules reach inside and the core never imports the gates.

  control.py       nested jit (pjit) interpreted in place, while_loop as JAX differentiates it,
                   the primitives whose outputs carry no gradient
  custom.py        custom_jvp/custom_vjp calls by the user's own rules; `PRIMAL`: by their
                   primal functions instead (custom_rules="primal")
  loops.py         the gates of lax.scan (backpropagation through time) and lax.cond/switch,
                   and what the gates with a body share (Body, pullback, control_rule)
  remat.py         jax.checkpoint's gate, under any policy; checkpoint_name
  shard_map.py     the gate of jax.shard_map (and so of jax.pmap): its body per shard
  linear_solve.py  the gate of lax.custom_linear_solve: its matvec interpreted with the rules

The gates among them (scan, cond, checkpoint, shard_map, custom_linear_solve) have test cases
beside them and are registry gates, collected with the others by fnn.ops
(fnn.ops.primitives.FAMILIES). `STRUCTURAL` is the table of the rules the interpreter runs them
and the rest by; fnn.ops.RULES adds it to the registry's view by primitive.
"""

from types import MappingProxyType

from fnn.autodiff.structural import control, custom, linear_solve, loops, remat, shard_map

STRUCTURAL = MappingProxyType(
    {
        **control.STRUCTURAL,
        **loops.STRUCTURAL,
        **remat.STRUCTURAL,
        **custom.STRUCTURAL,
        **shard_map.STRUCTURAL,
        **linear_solve.STRUCTURAL,
    }
)
"""The structural rules, by primitive: nested jit, while loops, the primitives without
gradient, custom rules, scan, cond, checkpoints, shard_map, custom linear solves."""

PRIMAL = MappingProxyType(custom.PRIMAL)
"""custom_jvp/custom_vjp calls differentiated through their primal functions (the table
`custom_rules="primal"` adds)."""
