"""Layers as pure (init, apply) pairs over parameter dicts, combinators and ready models.

Conventions (fnn/nn/combinators.py): `init(key, input_shape) -> (params, state, output_shape)`
with the shape of one example (no batch axis); `apply(params, state, x, *, key=None,
train=False) -> (y, new_state)`. Every apply uses fnn's gates only, so fnn.grad and jax.grad
both differentiate it. Layering: fnn.nn builds on the gates (fnn.ops) only.

  Layer, serial, residual, named_layers                        what a layer is; combinators
                                                               (and their observe hook)
  remat                                                        a layer (or runs of a serial's
                                                               layers) recomputed in the backward
  ResidualBlock                                                the basic block of a ResNet
  Dense, Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool2D, Flatten, Dropout, BatchNorm, LayerNorm
  Conv (1-3-d, dilation, groups), Conv1D, Conv3D, DepthwiseConv2D, SeparableConv2D,
  ConvTranspose2D, Pool (max/avg with padding, dilation, ceil_mode, count_include_pad)
  Relu, Sigmoid, Tanh, LeakyRelu, Elu, Maxout, Softplus, Gelu, Silu, Activation(name)
  initializers (glorot/xavier, he/kaiming, lecun, small), get_initializer
  Embedding, RNN, LSTM, GRU, Recurrent, MultiHeadAttention,   sequence layers (fnn/nn/sequence.py)
  PositionalEncoding, TransformerBlock, sinusoids
  mlp, cnn, resnet, rnn_lm, transformer_lm, build_model(name)  ready models
  count_params, summary, layer_shapes                          sizes without running the model
"""

from fnn.nn import initializers
from fnn.nn.activations import (
    ACTIVATIONS,
    Activation,
    Elu,
    Gelu,
    LeakyRelu,
    Maxout,
    Relu,
    Sigmoid,
    Silu,
    Softplus,
    Tanh,
)
from fnn.nn.initializers import INITIALIZERS, get_initializer
from fnn.nn.combinators import (
    Layer,
    is_plain_serial,
    named_layers,
    remat,
    residual,
    serial,
    stateless,
)
from fnn.nn.layers import (
    AvgPool2D,
    Conv,
    Conv1D,
    Conv2D,
    Conv3D,
    ConvTranspose2D,
    Dense,
    DepthwiseConv2D,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    MaxPool2D,
    Pool,
    SeparableConv2D,
)
from fnn.nn.models import (
    MODELS,
    SEQUENCE_MODELS,
    ResidualBlock,
    build_model,
    cnn,
    mlp,
    resnet,
    rnn_lm,
    transformer_lm,
)
from fnn.nn.sequence import (
    GRU,
    LSTM,
    RNN,
    Embedding,
    MultiHeadAttention,
    PositionalEncoding,
    Recurrent,
    TransformerBlock,
    sinusoids,
)
from fnn.nn.normalization import BatchNorm, LayerNorm
from fnn.nn.summary import count_params, layer_shapes, summary

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "AvgPool2D",
    "BatchNorm",
    "Conv",
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "ConvTranspose2D",
    "Dense",
    "DepthwiseConv2D",
    "Dropout",
    "Pool",
    "SeparableConv2D",
    "Elu",
    "Flatten",
    "Gelu",
    "GlobalAvgPool2D",
    "INITIALIZERS",
    "Layer",
    "LayerNorm",
    "LeakyRelu",
    "MODELS",
    "MaxPool2D",
    "Maxout",
    "Relu",
    "ResidualBlock",
    "Sigmoid",
    "Silu",
    "Softplus",
    "Tanh",
    "build_model",
    "cnn",
    "count_params",
    "get_initializer",
    "initializers",
    "is_plain_serial",
    "layer_shapes",
    "mlp",
    "named_layers",
    "remat",
    "residual",
    "resnet",
    "serial",
    "stateless",
    "summary",
    "Embedding",
    "RNN",
    "LSTM",
    "GRU",
    "Recurrent",
    "MultiHeadAttention",
    "PositionalEncoding",
    "TransformerBlock",
    "sinusoids",
    "SEQUENCE_MODELS",
    "rnn_lm",
    "transformer_lm",
]
