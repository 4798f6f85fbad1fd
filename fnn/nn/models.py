"""Ready models: an MLP of any depth and width, a CNN, a small residual CNN; models by name.

    mlp(hidden=(100,))            the lecture's 2-layer net: affine - relu - affine
    mlp(hidden=(100, 100))        its 3-layer net
    cnn()                         [conv - relu - conv - relu - pool] x 2 - dense - relu - dense
    resnet()                      conv-bn-relu, 3 stages of residual blocks, global pool, dense
    ResidualBlock(channels)       the basic block of a ResNet
    rnn_lm(kind='lstm')           a character language model: embedding - recurrent layer(s) -
                                  dense per position ('rnn', 'lstm', 'gru')
    transformer_lm()              a decoder-only transformer LM (GPT-2's pre-norm blocks)
    FACTS, build_model            the models by name, each with the data it reads and the
                                  training options it takes (fnn.train.config derives from them)

The language models map token ids (batch, T) to next-token logits (batch, T, num_classes).

remat=True (every model): each block (an MLP's Dense-(BN)-act-(Dropout), a CNN's conv stage, a
ResNet's residual block, an LM's recurrent layer or transformer block, the stem and the head)
is recomputed in the backward instead of kept (fnn.nn.remat with the block lengths as segments);
the params are the same as without, so either loads the other's checkpoints.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from fnn.nn.activations import Activation, Relu
from fnn.nn.combinators import Layer, remat as remat_layer, residual, serial
from fnn.nn.layers import Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D, MaxPool2D
from fnn.nn.normalization import BatchNorm, LayerNorm
from fnn.nn.sequence import Embedding, PositionalEncoding, Recurrent, TransformerBlock


def _blocks(model: Layer, sizes: Sequence[int], remat: bool) -> Layer:
    """`model` (a serial), each run of `sizes` layers checkpointed when remat (fnn.nn.remat)."""
    if not isinstance(remat, bool):
        raise TypeError(f"{model.name}: remat must be True or False, got {remat!r}")
    return remat_layer(model, tuple(sizes)) if remat else model


def mlp(
    hidden: Sequence[int] = (100,),
    num_classes: int = 10,
    *,
    activation: str = "relu",
    init="he",
    batch_norm: bool = False,
    dropout: float = 0.0,
    remat: bool = False,
) -> Layer:
    """Flatten, then [Dense - (BatchNorm) - activation - (Dropout)] per hidden width, then Dense.

    mlp(hidden=(100,)) is the lecture's 2-layer net (affine - relu - affine), mlp(hidden=(100,
    100)) its 3-layer net.

    Args:
        hidden: the width of each hidden layer.
        num_classes: the number of outputs.
        activation: the activation's name (fnn.nn.ACTIVATIONS).
        init: the Dense layers' initializer (fnn.nn.INITIALIZERS, or a function).
        batch_norm: a BatchNorm after each hidden Dense.
        dropout: the dropout rate after each activation (0: none).
        remat: each block recomputed in the backward (fnn.nn.remat with the block lengths as
            segments); the params are the same as without.

    Returns:
        The model (a serial named "mlp"): the class scores (logits), (N, num_classes).

    Raises:
        ValueError: a width, the activation, the initializer or the dropout rate is not valid.
        TypeError: `remat` is not a bool.
    """
    layers = [Flatten()]
    for width in hidden:
        layers.append(Dense(width, init=init))
        if batch_norm:
            layers.append(BatchNorm())
        layers.append(Activation(activation))
        if dropout:
            layers.append(Dropout(dropout))
    layers.append(Dense(num_classes, init=init))
    block = 2 + bool(batch_norm) + bool(dropout)
    return _blocks(serial(*layers, name="mlp"), [1] + [block] * len(hidden) + [1], remat)


def cnn(
    channels: Sequence[int] = (32, 64),
    num_classes: int = 10,
    *,
    dense: Sequence[int] = (128,),
    convs_per_block: int = 1,
    activation: str = "relu",
    init="he",
    batch_norm: bool = False,
    dropout: float = 0.0,
    remat: bool = False,
) -> Layer:
    """[(conv3x3 - (bn) - act) x convs_per_block - maxpool2] per channel count, then an MLP head.

    The head: Flatten - [Dense - act - (Dropout)] per width of `dense` - Dense(num_classes).

    Args:
        channels: the output channels of each conv stage.
        num_classes: the number of outputs.
        dense: the widths of the head's hidden layers.
        convs_per_block: the convolutions per stage.
        activation: the activation's name (fnn.nn.ACTIVATIONS).
        init: the initializer of the convolutions and Dense layers.
        batch_norm: a BatchNorm after each convolution.
        dropout: the dropout rate in the head (0: none).
        remat: each conv stage and dense block recomputed in the backward; the params are the
            same as without.

    Returns:
        The model (a serial named "cnn"), NHWC images to logits (N, num_classes).

    Raises:
        ValueError: a width, the activation, the initializer or the dropout rate is not valid.
        TypeError: `remat` is not a bool.
    """
    layers = []
    for c in channels:
        for _ in range(convs_per_block):
            layers.append(Conv2D(c, 3, init=init))
            if batch_norm:
                layers.append(BatchNorm())
            layers.append(Activation(activation))
        layers.append(MaxPool2D(2))
    layers.append(Flatten())
    for width in dense:
        layers += [Dense(width, init=init), Activation(activation)]
        if dropout:
            layers.append(Dropout(dropout))
    layers.append(Dense(num_classes, init=init))
    stage = convs_per_block * (2 + bool(batch_norm)) + 1
    sizes = [stage] * len(channels) + [1] + [2 + bool(dropout)] * len(dense) + [1]
    return _blocks(serial(*layers, name="cnn"), sizes, remat)


def ResidualBlock(
    channels: int, *, stride: int = 1, in_channels: int | None = None, init="he"
) -> Layer:
    """The basic ResNet block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)), 3x3 convs.

    The shortcut is the identity, or a 1x1 strided conv + BatchNorm when the block changes the
    resolution (stride > 1) or the number of channels (in_channels != channels).

    Args:
        channels: the output channels.
        stride: the first convolution's stride (2 halves the resolution).
        in_channels: the input channels (None: the same as `channels`).
        init: the convolutions' initializer.

    Returns:
        The block (a serial named "residual_block").

    Raises:
        ValueError: `channels` is not a positive int, or the initializer is unknown.
    """
    main = serial(
        Conv2D(channels, 3, stride=stride, init=init),
        BatchNorm(),
        Relu(),
        Conv2D(channels, 3, init=init),
        BatchNorm(),
        name="main",
    )
    project = stride != 1 or (in_channels is not None and in_channels != channels)
    shortcut = (
        serial(Conv2D(channels, 1, stride=stride, init=init), BatchNorm(), name="projection")
        if project
        else None
    )
    return serial(residual(main, shortcut), Relu(), name="residual_block")


def resnet(
    widths: Sequence[int] = (16, 32, 64),
    num_classes: int = 10,
    *,
    blocks_per_stage: int = 1,
    init="he",
    remat: bool = False,
) -> Layer:
    """A small ResNet for 32x32x3 images (any HxW works).

    conv3x3-bn-relu, then per width a stage of residual blocks (the first of each later stage
    halves the resolution), global average pooling and a dense classifier. widths=(16, 32, 64),
    3 blocks/stage is ResNet-20.

    Args:
        widths: the channels of each stage.
        num_classes: the number of outputs.
        blocks_per_stage: the residual blocks per stage.
        init: the convolutions' initializer.
        remat: the stem, each residual block and the head recomputed in the backward; the params
            are the same as without.

    Returns:
        The model (a serial named "resnet").

    Raises:
        ValueError: a width or the initializer is not valid.
        TypeError: `remat` is not a bool.
    """
    layers = [Conv2D(widths[0], 3, init=init), BatchNorm(), Activation("relu")]
    c_in = widths[0]
    for i, c in enumerate(widths):
        for j in range(blocks_per_stage):
            stride = 2 if (i > 0 and j == 0) else 1
            layers.append(ResidualBlock(c, stride=stride, in_channels=c_in, init=init))
            c_in = c
    layers += [GlobalAvgPool2D(), Dense(num_classes, init="glorot")]
    n_blocks = len(layers) - 5
    return _blocks(serial(*layers, name="resnet"), [3] + [1] * n_blocks + [2], remat)


def rnn_lm(
    kind: str = "lstm",
    num_classes: int = 256,
    *,
    hidden: Sequence[int] = (256,),
    embed: int = 64,
    dropout: float = 0.0,
    remat: bool = False,
) -> Layer:
    """A character-level language model (Karpathy's char-rnn) with recurrent layers.

    Embedding(num_classes, embed) - a `kind` recurrent layer per width in `hidden` (each
    returning every step; dropout between them) - Dense(num_classes) on every position: token
    ids (batch, T) to next-token logits (batch, T, num_classes).

    Args:
        kind: "rnn", "lstm" or "gru".
        num_classes: the vocabulary size.
        hidden: the width of each recurrent layer.
        embed: the embedding's width.
        dropout: the dropout rate between recurrent layers (0: none).
        remat: each recurrent layer (with the dropout before it) recomputed in the backward.

    Returns:
        The model (a serial named f"{kind}_lm").

    Raises:
        ValueError: `kind`, a width or the dropout rate is not valid.
        TypeError: `remat` is not a bool.
    """
    layers, sizes = [Embedding(num_classes, embed)], [1]
    for i, width in enumerate(hidden):
        if i and dropout:
            layers.append(Dropout(dropout))
        layers.append(Recurrent(kind, width))
        sizes.append(2 if i and dropout else 1)
    layers.append(Dense(num_classes, init="glorot", flatten=False))
    return _blocks(serial(*layers, name=f"{kind}_lm"), sizes + [1], remat)


def transformer_lm(
    num_classes: int = 256,
    *,
    width: int = 128,
    depth: int = 2,
    heads: int = 4,
    mlp_ratio: int = 4,
    positional: str = "learned",
    dropout: float = 0.0,
    max_len: int | None = None,
    remat: bool = False,
) -> Layer:
    """A decoder-only transformer language model (GPT-2's layout).

    Token embedding (N(0, 0.02)) plus positions, `depth` pre-norm causal TransformerBlocks of
    `heads` heads, a final LayerNorm and a Dense to next-token logits on every position: token
    ids (batch, T) to logits (batch, T, num_classes).

    Args:
        num_classes: the vocabulary size.
        width: the model's width.
        depth: the number of transformer blocks.
        heads: the attention heads per block.
        mlp_ratio: the blocks' MLP width, as a multiple of `width`.
        positional: 'learned' or 'sinusoidal' positions.
        dropout: the dropout rate (0: none).
        max_len: the longest context (default: the T of the input shape).
        remat: the embedding, each block and the head recomputed in the backward.

    Returns:
        The model (a serial named "transformer_lm").

    Raises:
        ValueError: `positional`, a size or the dropout rate is not valid; (from init) `width`
            is not divisible by `heads`, or the input is longer than `max_len`.
        TypeError: `remat` is not a bool.
    """
    from fnn.nn.initializers import normal

    layers = [
        Embedding(num_classes, width, init=normal(0.02)),
        PositionalEncoding(positional, max_len=max_len),
    ]
    if dropout:
        layers.append(Dropout(dropout))
    layers += [
        TransformerBlock(width, heads, mlp_ratio=mlp_ratio, dropout=dropout) for _ in range(depth)
    ]
    layers += [LayerNorm(), Dense(num_classes, init="glorot", flatten=False)]
    sizes = [2 + bool(dropout)] + [1] * depth + [2]
    return _blocks(serial(*layers, name="transformer_lm"), sizes, remat)


def _recurrent(kind):
    def build(num_classes: int = 256, **options) -> Layer:
        return rnn_lm(kind, num_classes, **options)

    build.__name__ = f"{kind}_lm"
    build.__doc__ = f"rnn_lm({kind!r}, ...): a character language model with {kind} layers."
    return build


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What training needs to know of a ready model: its builder, the kind of data it reads
    ("images": NHWC arrays; "text": token ids (N, T)) and the training options it reads, each
    mapped to the builder's keyword (fnn.train.config derives from these which options apply to
    which model, and the builder's keywords of a config)."""

    build: Callable[..., Layer]
    data: str
    options: dict


_IMAGE = {"activation": "activation", "init": "init", "dropout": "dropout"}
FACTS: dict[str, ModelFacts] = {
    "mlp": ModelFacts(mlp, "images", {"hidden": "hidden", **_IMAGE}),
    "cnn": ModelFacts(cnn, "images", {"channels": "channels", **_IMAGE}),
    "resnet": ModelFacts(resnet, "images", {"channels": "widths", "init": "init"}),
    **{
        kind: ModelFacts(_recurrent(kind), "text", {"hidden": "hidden", "dropout": "dropout"})
        for kind in ("rnn", "lstm", "gru")
    },
    "transformer": ModelFacts(
        transformer_lm,
        "text",
        {"width": "width", "depth": "depth", "heads": "heads", "dropout": "dropout"},
    ),
}
"""The ready-made models by name, each with what training needs to know of it (ModelFacts)."""
MODELS: dict[str, Callable[..., Layer]] = {name: f.build for name, f in FACTS.items()}
"""The ready-made models by name (what `--model` accepts): name -> a function of the model's
options returning a Layer."""
SEQUENCE_MODELS = tuple(n for n, f in FACTS.items() if f.data == "text")
"""The language models among MODELS: token ids in, per-position logits out (`--dataset text`)."""


def models_reading(option: str) -> tuple:
    """The models (names, in FACTS order) that read training option `option`."""
    return tuple(name for name, f in FACTS.items() if option in f.options)


def model_options(name: str, values: dict) -> dict:
    """The builder's keywords of model `name` from training options `values` (an option left
    unset, None or empty, is left to the builder's default)."""
    return {
        kw: values[opt]
        for opt, kw in FACTS[name].options.items()
        if values.get(opt) not in (None, ())
    }


def build_model(name: str, num_classes: int = 10, **options) -> Layer:
    """A model by name with the builder's keyword options.

    Args:
        name: one of MODELS: 'mlp', 'cnn', 'resnet', and the language models 'rnn', 'lstm',
            'gru', 'transformer'.
        num_classes: the number of outputs (the vocabulary size of a language model).
        **options: the builder's keyword options (mlp's hidden=, ...).

    Returns:
        The model.

    Raises:
        ValueError: `name` is not one of MODELS, or the builder refuses an option's value.
        TypeError: an option the builder does not take.
    """
    try:
        builder = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None
    return builder(num_classes=num_classes, **options)
