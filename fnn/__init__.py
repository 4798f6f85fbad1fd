"""fnn: neural networks as pure JAX functions, differentiated by hand-written gradient rules.

The table of contents:
  fnn.vjp / fnn.grad / fnn.value_and_grad   reverse mode with hand-written VJPs (JAX's semantics)
  fnn.trace                                 the recorded graph of one call (tape, nodes)
  fnn.checkpoint                            rematerialization (jax.checkpoint): recompute a part's
                                            activations in the backward, under fnn.grad or jax.grad
  fnn.defgate, fnn.Case, fnn.unbroadcast    declare your own gate exactly as fnn's gates are
  fnn.primitive_gate, fnn.rules, fnn.only   a rule for a JAX primitive; override any gate's
                                            backward for a call, a block or some layers
  fnn.rulebook, fnn.Rule                    straight-through, surrogate and feedback-alignment
                                            rules, and the gates they are for
  fnn.registry                              name -> gate, for every built-in gate: fnn's own
                                            ('relu') and JAX's primitives' ('lax.tanh')
  fnn.ops                                   the gates (activations, losses, conv, ...) and the
                                            lecture's names of JAX's functions (ops.add, ...)
  fnn.nn                                    layers as (init, apply) pairs, initializers, models
  fnn.train                                 jit-compiled steps and epochs, optax, data, checkpoints
  fnn.debug_nans                            name the first gate that makes a NaN or inf
  fnn.check_grads / fnn.locate_divergence   custom vs built-in vs numerical; find the wrong gate
  fnn.graph                                 the computational graph with values and gradients
  fnn.tune_cpu                              faster XLA CPU settings, applied by `import fnn` itself
                                            (FNN_NO_TUNE=1 keeps JAX's defaults; fnn.runtime)

The layers (autodiff < ops < transforms < nn < check < train < bench < cli) and what each may
import: ARCHITECTURE.md.
"""

from fnn.runtime import tune_on_import

tune_on_import()  # first: XLA's flags and malloc are read when JAX's backend starts (fnn.runtime)

from fnn.autodiff import (
    Case,
    Gate,
    NanOriginError,
    Trace,
    Traced,
    debug_nans,
    defgate,
    primitive_gate,
    unbroadcast,
)
from fnn.errors import (
    FnnError,
    ForeignCallError,
    GateError,
    MissingRuleError,
    NestingError,
    OverrideError,
    VJPContractError,
)
from fnn import ops
from fnn.ops import registry
from fnn.autodiff.overrides import Rule, only
from fnn.ops import rulebook
from fnn.transforms import checkpoint, grad, rules, trace, value_and_grad, vjp
from fnn import nn, train  # noqa: E402  (layers and training build on the gates)
from fnn.check import check_grads, graph, locate_divergence  # noqa: E402
from fnn.runtime import tune_cpu  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Case",
    "FnnError",
    "ForeignCallError",
    "Gate",
    "GateError",
    "MissingRuleError",
    "NanOriginError",
    "NestingError",
    "OverrideError",
    "Rule",
    "Trace",
    "Traced",
    "VJPContractError",
    "check_grads",
    "checkpoint",
    "debug_nans",
    "defgate",
    "grad",
    "graph",
    "locate_divergence",
    "nn",
    "only",
    "ops",
    "primitive_gate",
    "registry",
    "rulebook",
    "rules",
    "trace",
    "train",
    "tune_cpu",
    "unbroadcast",
    "value_and_grad",
    "vjp",
]
