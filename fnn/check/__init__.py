"""Comparison of fnn's gradients against jax.grad and finite differences.

  check_grads(f, *args)          custom vs built-in vs numerical gradient, per parameter leaf
  locate_divergence(f, *args)    the gates whose hand-written VJP disagrees with jax.vjp
  graph(f, *args)                the computational graph with values and gradients on its edges
  gradient_health(model, ...)    per layer: gradient norm, update ratio, dead ReLUs, saturation,
                                 custom vs built-in drift (what `train --diagnostics` logs)
  numerical_vjp, rel_error       the numerical building blocks
"""

from fnn.check.divergence import locate_divergence
from fnn.check.graph import graph
from fnn.check.health import gradient_health
from fnn.check.numeric import numerical_vjp, rel_error
from fnn.check.report import check_grads

__all__ = ["check_grads", "gradient_health", "graph", "locate_divergence", "numerical_vjp",
           "rel_error"]
