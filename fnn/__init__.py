"""fnn: neural networks as pure JAX functions, differentiated by hand-written gradient rules.

The table of contents:
  fnn.vjp / fnn.grad / fnn.value_and_grad   reverse mode with hand-written VJPs (JAX's semantics)
  fnn.trace                                 the recorded graph of one call (tape, nodes)
  fnn.defgate, fnn.Case, fnn.unbroadcast    declare your own gate exactly as fnn's gates are
  fnn.registry                              name -> gate, for every built-in gate
  fnn.ops                                   the gates (elementwise, activations, linalg, ...)
  fnn.nn                                    layers as (init, apply) pairs, initializers, models
  fnn.train                                 jit-compiled steps and epochs, optax, data, checkpoints
  fnn.debug_nans                            name the first gate that makes a NaN or inf
  fnn.check_grads / fnn.locate_divergence   custom vs built-in vs numerical; find the wrong gate
  fnn.graph                                 the computational graph with values and gradients
  fnn.tune_cpu                              faster XLA CPU settings; call before the first computation

The layers (autodiff < ops < transforms < nn < check < train < bench < cli) and what each may
import: ARCHITECTURE.md.
"""

from fnn.autodiff import Case, Gate, NanOriginError, Trace, Traced, debug_nans, defgate, unbroadcast
from fnn.errors import FnnError, ForeignCallError, GateError, NestingError, VJPContractError
from fnn import ops
from fnn.ops import registry
from fnn.transforms import grad, trace, value_and_grad, vjp
from fnn import nn, train  # noqa: E402  (layers and training build on the gates)
from fnn.check import check_grads, graph, locate_divergence  # noqa: E402
from fnn.runtime import tune_cpu  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Case", "FnnError", "ForeignCallError", "Gate", "GateError", "NanOriginError",
           "NestingError", "Trace", "Traced", "VJPContractError", "check_grads", "debug_nans", "defgate",
           "grad", "graph", "locate_divergence", "nn", "ops", "registry", "trace", "train", "tune_cpu",
           "unbroadcast", "value_and_grad", "vjp"]
