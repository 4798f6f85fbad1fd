"""fnn: neural networks as pure JAX functions, differentiated by hand-written gradient rules.

The table of contents:
  fnn.vjp / fnn.grad / fnn.value_and_grad   reverse mode with hand-written VJPs (JAX's semantics)
  fnn.defgate, fnn.Case, fnn.unbroadcast    declare your own gate exactly as fnn's gates are
  fnn.registry                              name -> gate, for every built-in gate
  fnn.ops                                   the gates (elementwise, activations, linalg, ...)
"""

from fnn import ops
from fnn.autodiff import (Case, Gate, NanOriginError, Traced, debug_nans, defgate, grad,
                          unbroadcast, value_and_grad, vjp)
from fnn.errors import FnnError, ForeignCallError, GateError, NestingError, VJPContractError
from fnn.ops import registry

__version__ = "0.1.0"

__all__ = ["Case", "FnnError", "ForeignCallError", "Gate", "GateError", "NestingError", "Traced",
           "VJPContractError", "NanOriginError", "debug_nans", "defgate", "grad", "ops", "registry", "unbroadcast",
           "value_and_grad", "vjp"]
