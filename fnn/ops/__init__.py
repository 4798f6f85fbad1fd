"""The gates, one family a file, each with its forward, hand-written VJP and test cases.

`registry` maps every built-in gate's name to the gate; it is built once, here.
"""

from types import MappingProxyType

from fnn.autodiff.gate import collect_gates
from fnn.ops import (activations, conv, elementwise, linalg, losses, normalization, recurrent,
                     reductions, rulebook, sequence)
from fnn.ops.activations import (elu, gelu, leaky_relu, maxout, relu, relu6, sigmoid, silu,
                                 softplus, tanh)
from fnn.ops.conv import avg_pool2d, conv2d, max_pool2d
from fnn.ops.elementwise import (abs, add, astype, divide, exp, log, maximum, minimum, multiply,
                                 negative, power, sqrt, subtract, where)
from fnn.ops.linalg import (affine, broadcast_to, concatenate, index, matmul, reshape,
                            stop_gradient, take, transpose)
from fnn.ops.losses import (binary_cross_entropy_with_logits, l2_penalty, mse,
                             softmax_cross_entropy, svm_loss)
from fnn.ops.normalization import batch_norm, dropout, layer_norm
from fnn.ops.reductions import log_softmax, logsumexp, max, mean, softmax, sum
from fnn.ops.recurrent import gru_sequence, lstm_sequence, rnn_sequence
from fnn.ops.rulebook import quantize, sign, spike
from fnn.ops.sequence import attention, embedding, gru_cell, lstm_cell, rnn_cell
from fnn.ops.rulebook import round_ as round

FAMILIES = {
    "elementwise": elementwise,
    "activations": activations,
    "linalg": linalg,
    "reductions": reductions,
    "losses": losses,
    "conv": conv,
    "normalization": normalization,
    "rulebook": rulebook,
    "sequence": sequence,
    "recurrent": recurrent,
}
"""The gate families, one module each: family name -> module (fnn.ops.elementwise, ...)."""

registry = MappingProxyType(collect_gates(*FAMILIES.values()))
"""Every built-in gate by its name (read-only): `registry["relu"] is fnn.ops.relu`; what
`python -m fnn gradcheck` and the tests check."""

__all__ = sorted(registry) + ["FAMILIES", "registry"]
