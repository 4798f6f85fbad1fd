"""Comparison of fnn's gradients against jax.grad and finite differences.

Layering: fnn.check builds on the core, the gates, fnn.transforms and fnn.nn; it never imports
fnn.train, fnn.bench or fnn.cli (train imports check: the gradient-health monitor). Checkers
return objects; the command line (fnn.cli) prints them. See ARCHITECTURE.md.

  check_grads(f, *args)          custom vs built-in vs numerical gradient, per parameter leaf
  locate_divergence(f, *args)    the gates whose hand-written VJP disagrees with jax.vjp
  check_gate, check_gates        every test case of a gate: VJP vs jax.vjp and numerics, transforms
  graph(f, *args)                the computational graph with values and gradients on its edges
  gradient_health(loss_fn, model, ...)   per layer: gradient norm, update ratio, dead ReLUs,
                                 saturation, custom vs built-in drift (`train --diagnostics`)
  numerical_vjp, rel_error       the numerical building blocks (fnn.check.numeric)
  check_custom_rules(f, *args)   each custom_jvp/custom_vjp function f calls: its rule vs the
                                 derivative of its primal function vs central differences
  check_lowering(f, *args)       f exported for CUDA, ROCm and TPU (jax.export, no device needed):
                                 lowering errors, host callbacks, CPU-only custom calls
  tolerance                      the one tolerance table (fnn.check.tolerances)

Modules: grads (check_grads), custom_rules (check_custom_rules), divergence, gates (the gate
checker), graph and graph_render, health, numeric, tolerances, lowering, lecture (the lecture's
examples), zoo (small models).
"""

from fnn.check.custom_rules import check_custom_rules
from fnn.check.divergence import locate_divergence
from fnn.check.gates import check_gate, check_gates
from fnn.check.grads import check_grads
from fnn.check.graph import graph
from fnn.check.health import gradient_health
from fnn.check.lowering import check_lowering, check_lowerings
from fnn.check.numeric import numerical_vjp, rel_error
from fnn.check.tolerances import tolerance

__all__ = [
    "check_custom_rules",
    "check_gate",
    "check_gates",
    "check_grads",
    "check_lowering",
    "check_lowerings",
    "gradient_health",
    "graph",
    "locate_divergence",
    "numerical_vjp",
    "rel_error",
    "tolerance",
]
