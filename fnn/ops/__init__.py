"""The gates, one family a file, each with its forward, hand-written VJP and test cases.

`registry` holds every built-in gate, fnn's own and those of JAX's primitives
(fnn.ops.primitives, with the structural gates of the core, fnn.autodiff.structural, as its
families), by name; it is built once, here, and so is `RULES`, the table of rules fnn.grad
interprets a program with. The lecture's names of JAX's own functions (`add`,
`multiply`, `matmul`, `sum`, ...) are fnn.ops.aliases: differentiated by their primitives' rules.
"""

from types import MappingProxyType

from fnn.autodiff.gate import collect_gates
from fnn.ops import (
    activations,
    aliases,
    conv,
    dense,
    losses,
    normalization,
    primitives,
    recurrent,
    reductions,
    rulebook,
    sequence,
)
from fnn.ops.activations import elu, gelu, leaky_relu, maxout, relu, relu6, silu, softplus
from fnn.ops.aliases import (
    abs,
    add,
    astype,
    broadcast_to,
    concatenate,
    divide,
    exp,
    index,
    log,
    matmul,
    max,
    maximum,
    minimum,
    multiply,
    negative,
    power,
    reshape,
    sigmoid,
    sqrt,
    stop_gradient,
    subtract,
    sum,
    take,
    tanh,
    transpose,
    where,
)
from fnn.ops.conv import avg_pool2d, conv2d, max_pool2d
from fnn.ops.dense import affine
from fnn.ops.losses import (
    binary_cross_entropy_with_logits,
    l2_penalty,
    mse,
    softmax_cross_entropy,
    svm_loss,
)
from fnn.ops.normalization import batch_norm, dropout, layer_norm
from fnn.ops.reductions import log_softmax, logsumexp, mean, softmax
from fnn.ops.recurrent import gru_sequence, lstm_sequence, rnn_sequence
from fnn.ops.rulebook import quantize, sign, spike
from fnn.ops.sequence import attention, embedding, gru_cell, lstm_cell, rnn_cell
from fnn.ops.rulebook import round_ as round

FAMILIES = {
    "activations": activations,
    "dense": dense,
    "reductions": reductions,
    "losses": losses,
    "conv": conv,
    "normalization": normalization,
    "rulebook": rulebook,
    "sequence": sequence,
    "recurrent": recurrent,
}
"""fnn's own gate families, one module each: family name -> module (fnn.ops.activations, ...);
the primitives' families are fnn.ops.primitives.FAMILIES."""

registry = collect_gates(
    *FAMILIES.values(), *primitives.FAMILIES.values(), exclude=primitives.NOT_IN_REGISTRY
)
"""Every built-in gate by its name (a read-only `fnn.autodiff.Registry`): fnn's own
(`registry["relu"] is fnn.ops.relu`; the view `registry.named`) and JAX's primitives'
(`registry["lax.tanh"]`; the view `registry.by_primitive`). What `python -m fnn gradcheck` and the
tests check."""

RULES = MappingProxyType({**registry.by_primitive, **primitives.STRUCTURAL})
"""The table fnn.grad interprets programs with: a JAX primitive -> its rule."""

CUSTOM_RULES = primitives.CUSTOM_RULES
"""The choices of `custom_rules=`: "use" (the users' own custom derivative rules), "primal"."""

__all__ = (
    sorted(registry.named) + aliases.__all__ + ["CUSTOM_RULES", "FAMILIES", "RULES", "registry"]
)
