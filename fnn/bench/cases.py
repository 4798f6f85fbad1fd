"""What is measured: the models of the step cases, bf16 compute, the gates' benchmark inputs."""

from __future__ import annotations

import dataclasses

import math

import jax
import jax.numpy as jnp

from fnn.autodiff.case_values import positive
from fnn.nn import cnn, mlp, resnet, rnn_lm, transformer_lm
from fnn.nn.combinators import Layer
from fnn.ops import astype
from fnn.train.step import GRADS  # noqa: F401  (re-exported for the bench)

STEP_CASES = ("mlp", "cnn", "resnet", "digits", "lstm", "transformer")
SEQUENCE_KINDS = ("lstm", "transformer")  # token ids (batch, T) in, per-token labels
TEXT_VOCAB = 162  # byte values in the default text corpus (fnn.train.text, the stdlib's source)
CASES = ("gemm", *STEP_CASES, "epoch", "gates", "jax")  # jax: plain JAX models (jax_models)


def model_specs(quick: bool = False) -> dict:
    """case -> spec: kind ('mlp' | 'cnn' | 'resnet' | 'lstm' | 'transformer'), sizes, input
    shape (one example: (T,) token ids for the language models, with their vocabulary), batch.

    The language models are issue 13's: an LSTM (hidden 256, 64 steps, batch 64) and the
    transformer LM (4 layers, width 256, context 128, batch 32), over the default text corpus's
    vocabulary of 162 bytes."""
    from fnn.train.run import TrainConfig

    d = TrainConfig()  # the default training run: digits, its MLP, its batch size
    digits = {"kind": "mlp", "hidden": tuple(d.hidden), "input": (8, 8, 1), "batch": d.batch_size}
    if quick:
        return {
            "mlp": {"kind": "mlp", "hidden": (32, 32), "input": (64,), "batch": 8},
            "cnn": {"kind": "cnn", "channels": (4, 8), "input": (8, 8, 3), "batch": 4},
            "resnet": {"kind": "resnet", "widths": (4, 8, 8), "input": (8, 8, 3), "batch": 4},
            "digits": digits,
            "lstm": {
                "kind": "lstm",
                "vocab": 11,
                "embed": 4,
                "hidden": (8,),
                "input": (5,),
                "batch": 4,
            },
            "transformer": {
                "kind": "transformer",
                "vocab": 11,
                "width": 8,
                "depth": 1,
                "heads": 2,
                "input": (6,),
                "batch": 2,
            },
        }
    return {
        "mlp": {"kind": "mlp", "hidden": (1024, 1024), "input": (784,), "batch": 256},
        "cnn": {"kind": "cnn", "channels": (32, 64), "input": (32, 32, 3), "batch": 128},
        "resnet": {"kind": "resnet", "widths": (16, 32, 64), "input": (32, 32, 3), "batch": 128},
        "digits": digits,
        "lstm": {
            "kind": "lstm",
            "vocab": TEXT_VOCAB,
            "embed": 64,
            "hidden": (256,),
            "input": (64,),
            "batch": 64,
        },
        "transformer": {
            "kind": "transformer",
            "vocab": TEXT_VOCAB,
            "width": 256,
            "depth": 4,
            "heads": 4,
            "input": (128,),
            "batch": 32,
        },
    }


def describe_spec(spec) -> str:
    shape = "x".join(map(str, spec["input"]))
    if spec["kind"] == "lstm":
        layers = "-".join(f"LSTM({h})" for h in spec["hidden"])
        return (
            f"Embedding({spec['vocab']}, {spec['embed']})-{layers}-Dense({spec['vocab']}) "
            f"per position, {spec['input'][0]} steps, batch {spec['batch']}"
        )
    if spec["kind"] == "transformer":
        w, blocks = spec["width"], "blocks" if spec["depth"] > 1 else "block"
        return (
            f"transformer LM: Embedding({spec['vocab']}, {w}) + learned positions, "
            f"{spec['depth']} pre-norm {blocks} ({spec['heads']} heads, MLP {4 * w}, gelu), "
            f"LayerNorm, Dense({spec['vocab']}); context {spec['input'][0]}, "
            f"batch {spec['batch']}"
        )
    if spec["kind"] == "mlp":
        sizes = "-".join(map(str, (math.prod(spec["input"]), *spec["hidden"], 10)))
        return f"MLP {sizes}, {shape} in, batch {spec['batch']}"
    if spec["kind"] == "cnn":
        blocks = "-".join(f"conv3x3({c})-relu-pool2" for c in spec["channels"])
        return f"{blocks}-dense(10), {shape} in, batch {spec['batch']}"
    return (
        f"ResNet (stem + 1 residual block per stage, widths "
        f"{','.join(map(str, spec['widths']))}), {shape} in, batch {spec['batch']}"
    )


def build(spec) -> Layer:
    if spec["kind"] == "mlp":
        return mlp(spec["hidden"])
    if spec["kind"] == "cnn":
        return cnn(spec["channels"], dense=())
    if spec["kind"] == "lstm":
        return rnn_lm("lstm", spec["vocab"], hidden=spec["hidden"], embed=spec["embed"])
    if spec["kind"] == "transformer":
        return transformer_lm(
            spec["vocab"], width=spec["width"], depth=spec["depth"], heads=spec["heads"]
        )
    return resnet(spec["widths"])


def batch_of(spec, rng):
    """(x, y) of numpy arrays: a batch of the spec's inputs and labels (random token ids and
    next-token labels for the language models; images or vectors and 10 classes otherwise)."""
    import numpy as np

    if spec["kind"] in SEQUENCE_KINDS:
        shape = (spec["batch"], *spec["input"])
        return (
            rng.integers(0, spec["vocab"], shape).astype(np.int32),
            rng.integers(0, spec["vocab"], shape).astype(np.int32),
        )
    return (
        rng.standard_normal((spec["batch"], *spec["input"])).astype(np.float32),
        rng.integers(0, 10, spec["batch"]).astype(np.int32),
    )


def in_dtype(model: Layer, dtype) -> Layer:
    """`model` computing in `dtype` with float32 parameters and float32 scores (mixed precision).

    The casts of the parameters and the scores are astype gates, so both fnn.grad and jax.grad
    carry gradients through them; the inputs are data (no gradient) and are cast directly
    (float inputs only: token ids stay integers).
    """

    def apply(params, state, x, *, key=None, train=False, **observe):
        low = jax.tree_util.tree_map(lambda p: astype(p, dtype=dtype), params)
        if jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(dtype)
        y, state = model.apply(low, state, x, key=key, train=train, **observe)
        return astype(y, dtype=jnp.float32), state

    # the model's children, kind and remat kept (summaries, diagnostics, remat options); its
    # apply is not serial's chain, so remat checkpoints it whole (fnn.nn.is_plain_serial)
    return dataclasses.replace(model, name=f"{model.name}_{jnp.dtype(dtype).name}", apply=apply)


# ---- gate micro-benchmarks: inputs at a realistic size ------------------------------------------
@dataclasses.dataclass(frozen=True)
class _GateSizes:
    """The shapes of the gates' benchmark inputs (small ones for a quick run)."""

    elementwise: tuple  # (N, K); a matmul is (N, K) @ (K, K)
    image: tuple  # NHWC
    logits: tuple  # (batch, classes)
    batch: int  # the sequence gates': batch, steps, features, hidden, vocabulary
    steps: int
    features: int
    hidden: int
    vocab: int

    @property
    def channels(self) -> int:
        return self.image[-1]

    @property
    def weights(self) -> tuple:
        """A matmul's (K, M)."""
        return (self.elementwise[1], self.elementwise[1])


def _gate_sizes(quick: bool) -> _GateSizes:
    if quick:
        return _GateSizes(
            elementwise=(4, 8),
            image=(2, 6, 6, 3),
            logits=(4, 5),
            batch=2,
            steps=5,
            features=4,
            hidden=6,
            vocab=11,
        )
    return _GateSizes(
        elementwise=(256, 1024),
        image=(64, 32, 32, 32),
        logits=(256, 1000),
        batch=64,
        steps=64,
        features=128,
        hidden=256,
        vocab=256,
    )


def _normal(r, shape, dtype, scale=1.0):
    return jnp.asarray(scale * r.standard_normal(shape), dtype)


def _positive(r, shape, dtype):
    return jnp.asarray(positive(r, shape, dtype))


def _one(shape, /, make=_normal, **kw):
    """make(rng, dtype): one array of `shape`, the gate's keywords `kw`."""
    return lambda r, d: ((make(r, shape, d),), dict(kw))


def _two(shape, make_y=_normal, make_x=_normal):
    return lambda r, d: ((make_x(r, shape, d), make_y(r, shape, d)), {})


def _elementwise_makers(s: _GateSizes) -> dict:
    """gate -> make(rng, dtype) for the elementwise gates, on arrays of s.elementwise."""
    E = s.elementwise  # noqa: N806
    other = {"float32": "bfloat16"}
    return {
        **{
            g: _one(E)
            for g in (
                "exp",
                "negative",
                "abs",
                "relu",
                "relu6",
                "leaky_relu",
                "elu",
                "gelu",
                "silu",
                "softplus",
                "sigmoid",
                "tanh",
                "stop_gradient",
                "sign",
                "round",
                "spike",
            )
        },
        "quantize": _one(E, bits=2),
        "log": _one(E, make=_positive),
        "sqrt": _one(E, make=_positive),
        **{g: _two(E) for g in ("add", "subtract", "multiply", "maximum", "minimum", "mse")},
        "divide": _two(E, _positive),
        "power": _two(E, _normal, _positive),
        "where": lambda r, d: (
            (jnp.asarray(r.standard_normal(E) > 0), _normal(r, E, d), _normal(r, E, d)),
            {},
        ),
        "astype": lambda r, d: (
            (_normal(r, E, d),),
            {"dtype": other.get(jnp.dtype(d).name, "float32")},
        ),
        "maxout": _one(E, pieces=4),
    }


def _linear_makers(s: _GateSizes) -> dict:
    """gate -> make(rng, dtype) for matmul and affine: (N, K) @ (K, M) (+ b)."""
    (N, _), (K, M) = s.elementwise, s.weights  # noqa: N806
    return {
        "matmul": lambda r, d: ((_normal(r, (N, K), d), _normal(r, (K, M), d)), {}),
        "affine": lambda r, d: (
            (_normal(r, (N, K), d), _normal(r, (K, M), d), _normal(r, (M,), d)),
            {},
        ),
    }


def _shape_makers(s: _GateSizes) -> dict:
    """gate -> make(rng, dtype) for the gates that move elements: transpose, reshape, ..."""
    E = s.elementwise  # noqa: N806
    return {
        "transpose": _one(E),
        "reshape": _one(E, shape=(E[1], E[0])),
        "broadcast_to": lambda r, d: ((_normal(r, (1, E[1]), d),), {"shape": E}),
        "concatenate": lambda r, d: (
            (_normal(r, (E[0], E[1] // 2), d), _normal(r, (E[0], E[1] // 2), d)),
            {"axis": 1},
        ),
        "take": lambda r, d: (
            (_normal(r, (E[1], E[0]), d), jnp.asarray(r.integers(0, E[1], E[0]))),
            {"axis": 0},
        ),
        "index": _one(E, index=(slice(None), slice(0, E[1] // 2))),
    }


def _loss_makers(s: _GateSizes) -> dict:
    """gate -> make(rng, dtype) for the losses on s.logits scores, and the L2 penalty."""
    LOGITS = s.logits  # noqa: N806

    def labels(r, d):
        return (_normal(r, LOGITS, d), jnp.asarray(r.integers(0, LOGITS[1], LOGITS[0]))), {}

    return {
        "softmax_cross_entropy": labels,
        "svm_loss": labels,
        "binary_cross_entropy_with_logits": lambda r, d: (
            (_normal(r, LOGITS, d), jnp.asarray(r.uniform(0, 1, LOGITS), d)),
            {},
        ),
        "l2_penalty": lambda r, d: ((_normal(r, s.weights, d),), {"scale": 1e-3}),
    }


def _reduction_makers(s: _GateSizes) -> dict:
    """gate -> make(rng, dtype) for the reductions (and softmaxes) along the last axis."""
    return {
        g: _one(s.elementwise, axis=-1)
        for g in ("sum", "mean", "max", "logsumexp", "softmax", "log_softmax")
    }


def _normalization_makers(s: _GateSizes) -> dict:
    """gate -> make(rng, dtype) for batch_norm (training, on images), layer_norm and dropout."""
    E, IMG, c = s.elementwise, s.image, s.channels  # noqa: N806

    def bn(r, d):
        return (
            (
                _normal(r, IMG, d),
                1 + _normal(r, (c,), d, 0.1),
                _normal(r, (c,), d),
                _normal(r, (c,), d),
                _positive(r, (c,), d),
            ),
            {"train": True},
        )

    return {
        "batch_norm": bn,
        "layer_norm": lambda r, d: (
            (_normal(r, E, d), _normal(r, E[-1:], d), _normal(r, E[-1:], d)),
            {},
        ),
        "dropout": lambda r, d: ((_normal(r, E, d), jax.random.PRNGKey(0)), {"rate": 0.5}),
    }


def _one_size_rows(s: _GateSizes) -> dict:
    """gate -> [(label, make)] for the gates measured at one size (most of them)."""
    E, IMG, LOGITS, (K, M) = s.elementwise, s.image, s.logits, s.weights  # noqa: N806
    specs = {
        **_elementwise_makers(s),
        **_linear_makers(s),
        **_shape_makers(s),
        **_loss_makers(s),
        **_reduction_makers(s),
        **_normalization_makers(s),
    }
    sizes = {
        "batch_norm": f"{IMG} train",
        "softmax_cross_entropy": f"{LOGITS}",
        "svm_loss": f"{LOGITS}",
        "matmul": f"{(E[0], K)}@{(K, M)}",
        "affine": f"{(E[0], K)}@{(K, M)}+b",
        "l2_penalty": f"{(K, M)}",
        "maxout": f"{E} /4",
        "take": f"{(E[1], E[0])}[{E[0]} rows]",
    }
    return {g: [(sizes.get(g, f"{E}"), f)] for g, f in specs.items()}


def _conv_rows(s: _GateSizes) -> dict:
    """conv2d -> [(label, make)]: 3x3 SAME (on C channels, on RGB), strided 3x3 and 1x1."""
    IMG, C = s.image, s.channels  # noqa: N806

    def conv(stride, w_shape, img=IMG):
        return lambda r, d: (
            (_normal(r, img, d), _normal(r, w_shape, d, 0.1)),
            {"stride": stride, "padding": "SAME"},
        )

    w3, rgb = (3, 3, C, C), IMG[:3] + (3,)
    return {
        "conv2d": [
            (f"{IMG}*{w3} SAME", conv(1, w3)),
            (f"{rgb}*{(3, 3, 3, C)} SAME", conv(1, (3, 3, 3, C), rgb)),
            (f"{IMG}*{w3} stride 2", conv(2, w3)),
            (f"{IMG}*{(1, 1, C, 2 * C)} stride 2", conv(2, (1, 1, C, 2 * C))),
        ]
    }


def _sequence_rows(s: _GateSizes) -> dict:
    """gate -> [(label, make)] for embedding, the recurrent cells and sequences, attention."""
    B, T, D, H, V = s.batch, s.steps, s.features, s.hidden, s.vocab  # noqa: N806

    def cell(k, extra=0):
        return lambda r, d: (
            (_normal(r, (B, D), d),)
            + (_normal(r, (B, H), d),) * (1 + extra)
            + (
                _normal(r, (D, k * H), d, 0.1),
                _normal(r, (H, k * H), d, 0.1),
                _normal(r, (k * H,), d, 0.1),
            )
            + ((_normal(r, (k * H,), d, 0.1),) if k == 3 else ()),
            {},
        )

    def sequence(k, states=1, biases=1):  # time-major x (T, N, D), as fnn.ops.recurrent takes
        return lambda r, d: (
            (_normal(r, (T, B, D), d),)
            + tuple(_normal(r, (B, H), d) for _ in range(states))
            + (_normal(r, (D, k * H), d, 0.1), _normal(r, (H, k * H), d, 0.1))
            + tuple(_normal(r, (k * H,), d, 0.1) for _ in range(biases)),
            {},
        )

    heads = (B, 4, T, D // 4)
    return {
        "embedding": [
            (
                f"({V}, {D})[{(B, T)}]",
                lambda r, d: ((_normal(r, (V, D), d), jnp.asarray(r.integers(0, V, (B, T)))), {}),
            )
        ],
        "rnn_cell": [(f"N={B} D={D} H={H}", cell(1))],
        "lstm_cell": [(f"N={B} D={D} H={H}", cell(4, extra=1))],
        "gru_cell": [(f"N={B} D={D} H={H}", cell(3))],
        "rnn_sequence": [(f"T={T} N={B} D={D} H={H}", sequence(1))],
        "lstm_sequence": [(f"T={T} N={B} D={D} H={H}", sequence(4, states=2))],
        "gru_sequence": [(f"T={T} N={B} D={D} H={H}", sequence(3, biases=2))],
        "attention": [
            (
                f"{heads} causal",
                lambda r, d: (tuple(_normal(r, heads, d) for _ in range(3)), {"causal": True}),
            )
        ],
    }


def _pool_rows(s: _GateSizes) -> dict:
    """max_pool2d and avg_pool2d -> [(label, make)]: 2x2, and 3x3 with stride 2."""
    IMG = s.image  # noqa: N806

    def pool(window, stride=None):
        return lambda r, d: ((_normal(r, IMG, d),), {"window": window, "stride": stride})

    return {
        g: [(f"{IMG} 2x2", pool(2)), (f"{IMG} 3x3 stride 2", pool(3, 2))]
        for g in ("max_pool2d", "avg_pool2d")
    }


def gate_inputs(quick: bool = False) -> dict:
    """gate name -> list of (label, make(rng, dtype) -> (args, kwargs)) at a realistic size."""
    s = _gate_sizes(quick)
    return {**_one_size_rows(s), **_conv_rows(s), **_sequence_rows(s), **_pool_rows(s)}
