"""What is measured: the models of the step cases, bf16 compute, the gates' benchmark inputs."""

from __future__ import annotations

import dataclasses

import math

import jax
import jax.numpy as jnp

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
        return {"mlp": {"kind": "mlp", "hidden": (32, 32), "input": (64,), "batch": 8},
                "cnn": {"kind": "cnn", "channels": (4, 8), "input": (8, 8, 3), "batch": 4},
                "resnet": {"kind": "resnet", "widths": (4, 8, 8), "input": (8, 8, 3), "batch": 4},
                "digits": digits,
                "lstm": {"kind": "lstm", "vocab": 11, "embed": 4, "hidden": (8,),
                         "input": (5,), "batch": 4},
                "transformer": {"kind": "transformer", "vocab": 11, "width": 8, "depth": 1,
                                "heads": 2, "input": (6,), "batch": 2}}
    return {"mlp": {"kind": "mlp", "hidden": (1024, 1024), "input": (784,), "batch": 256},
            "cnn": {"kind": "cnn", "channels": (32, 64), "input": (32, 32, 3), "batch": 128},
            "resnet": {"kind": "resnet", "widths": (16, 32, 64), "input": (32, 32, 3),
                       "batch": 128},
            "digits": digits,
            "lstm": {"kind": "lstm", "vocab": TEXT_VOCAB, "embed": 64, "hidden": (256,),
                     "input": (64,), "batch": 64},
            "transformer": {"kind": "transformer", "vocab": TEXT_VOCAB, "width": 256, "depth": 4,
                            "heads": 4, "input": (128,), "batch": 32}}


def describe_spec(spec) -> str:
    shape = "x".join(map(str, spec["input"]))
    if spec["kind"] == "lstm":
        layers = "-".join(f"LSTM({h})" for h in spec["hidden"])
        return (f"Embedding({spec['vocab']}, {spec['embed']})-{layers}-Dense({spec['vocab']}) "
                f"per position, {spec['input'][0]} steps, batch {spec['batch']}")
    if spec["kind"] == "transformer":
        w, blocks = spec["width"], "blocks" if spec["depth"] > 1 else "block"
        return (f"transformer LM: Embedding({spec['vocab']}, {w}) + learned positions, "
                f"{spec['depth']} pre-norm {blocks} ({spec['heads']} heads, MLP {4 * w}, gelu), "
                f"LayerNorm, Dense({spec['vocab']}); context {spec['input'][0]}, "
                f"batch {spec['batch']}")
    if spec["kind"] == "mlp":
        sizes = "-".join(map(str, (math.prod(spec["input"]), *spec["hidden"], 10)))
        return f"MLP {sizes}, {shape} in, batch {spec['batch']}"
    if spec["kind"] == "cnn":
        blocks = "-".join(f"conv3x3({c})-relu-pool2" for c in spec["channels"])
        return f"{blocks}-dense(10), {shape} in, batch {spec['batch']}"
    return (f"ResNet (stem + 1 residual block per stage, widths "
            f"{','.join(map(str, spec['widths']))}), {shape} in, batch {spec['batch']}")


def build(spec) -> Layer:
    if spec["kind"] == "mlp":
        return mlp(spec["hidden"])
    if spec["kind"] == "cnn":
        return cnn(spec["channels"], dense=())
    if spec["kind"] == "lstm":
        return rnn_lm("lstm", spec["vocab"], hidden=spec["hidden"], embed=spec["embed"])
    if spec["kind"] == "transformer":
        return transformer_lm(spec["vocab"], width=spec["width"], depth=spec["depth"],
                              heads=spec["heads"])
    return resnet(spec["widths"])


def batch_of(spec, rng):
    """(x, y) of numpy arrays: a batch of the spec's inputs and labels (random token ids and
    next-token labels for the language models; images or vectors and 10 classes otherwise)."""
    import numpy as np

    if spec["kind"] in SEQUENCE_KINDS:
        shape = (spec["batch"], *spec["input"])
        return (rng.integers(0, spec["vocab"], shape).astype(np.int32),
                rng.integers(0, spec["vocab"], shape).astype(np.int32))
    return (rng.standard_normal((spec["batch"], *spec["input"])).astype(np.float32),
            rng.integers(0, 10, spec["batch"]).astype(np.int32))


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
def gate_inputs(quick: bool = False) -> dict:
    """gate name -> list of (label, make(rng, dtype) -> (args, kwargs)) at a realistic size."""
    E = (4, 8) if quick else (256, 1024)  # noqa: N806 - the elementwise shape
    IMG, C = ((2, 6, 6, 3), 3) if quick else ((64, 32, 32, 32), 32)  # noqa: N806
    LOGITS = (4, 5) if quick else (256, 1000)  # noqa: N806
    K, M = E[1], E[1]  # noqa: N806 - matmul (N, K) @ (K, M)

    def normal(r, shape, dtype, scale=1.0):
        return jnp.asarray(scale * r.standard_normal(shape), dtype)

    def positive(r, shape, dtype):
        return jnp.asarray(r.uniform(0.5, 2.0, shape), dtype)

    def one(make=normal, **kw):
        return lambda r, d: ((make(r, E, d),), dict(kw))

    def two(make_y=normal, make_x=normal):
        return lambda r, d: ((make_x(r, E, d), make_y(r, E, d)), {})

    def labels(r, d):
        return (normal(r, LOGITS, d), jnp.asarray(r.integers(0, LOGITS[1], LOGITS[0]))), {}

    def bn(r, d):
        c = IMG[-1]
        return ((normal(r, IMG, d), 1 + normal(r, (c,), d, 0.1), normal(r, (c,), d),
                 normal(r, (c,), d), positive(r, (c,), d)), {"train": True})

    def conv(stride, w_shape, img=IMG):
        return lambda r, d: ((normal(r, img, d), normal(r, w_shape, d, 0.1)),
                             {"stride": stride, "padding": "SAME"})

    def pool(window, stride=None):
        return lambda r, d: ((normal(r, IMG, d),), {"window": window, "stride": stride})

    other = {"float32": "bfloat16"}
    specs = {
        **{g: one() for g in ("exp", "negative", "abs", "relu", "relu6", "leaky_relu", "elu",
                               "gelu", "silu", "softplus", "sigmoid", "tanh", "stop_gradient",
                               "sign", "round", "spike")},
        "quantize": one(bits=2),
        "log": one(make=positive), "sqrt": one(make=positive),
        **{g: two() for g in ("add", "subtract", "multiply", "maximum", "minimum", "mse")},
        "divide": two(positive), "power": two(normal, positive),
        "where": lambda r, d: ((jnp.asarray(r.standard_normal(E) > 0), normal(r, E, d),
                                normal(r, E, d)), {}),
        "astype": lambda r, d: ((normal(r, E, d),),
                                {"dtype": other.get(jnp.dtype(d).name, "float32")}),
        "maxout": one(pieces=4),
        "matmul": lambda r, d: ((normal(r, (E[0], K), d), normal(r, (K, M), d)), {}),
        "affine": lambda r, d: ((normal(r, (E[0], K), d), normal(r, (K, M), d),
                                 normal(r, (M,), d)), {}),
        "transpose": one(), "reshape": one(shape=(E[1], E[0])),
        "broadcast_to": lambda r, d: ((normal(r, (1, E[1]), d),), {"shape": E}),
        "concatenate": lambda r, d: ((normal(r, (E[0], E[1] // 2), d),
                                      normal(r, (E[0], E[1] // 2), d)), {"axis": 1}),
        "take": lambda r, d: ((normal(r, (E[1], E[0]), d), jnp.asarray(
            r.integers(0, E[1], E[0]))), {"axis": 0}),
        "index": one(index=(slice(None), slice(0, E[1] // 2))),
        "softmax_cross_entropy": labels, "svm_loss": labels,
        "binary_cross_entropy_with_logits": lambda r, d: ((normal(r, LOGITS, d), jnp.asarray(
            r.uniform(0, 1, LOGITS), d)), {}),
        "l2_penalty": lambda r, d: ((normal(r, (K, M), d),), {"scale": 1e-3}),
        **{g: one(axis=-1) for g in ("sum", "mean", "max", "logsumexp", "softmax",
                                      "log_softmax")},
        "batch_norm": bn,
        "layer_norm": lambda r, d: ((normal(r, E, d), normal(r, E[-1:], d),
                                     normal(r, E[-1:], d)), {}),
        "dropout": lambda r, d: ((normal(r, E, d), jax.random.PRNGKey(0)), {"rate": 0.5}),
    }
    sizes = {"batch_norm": f"{IMG} train", "softmax_cross_entropy": f"{LOGITS}",
             "svm_loss": f"{LOGITS}", "matmul": f"{(E[0], K)}@{(K, M)}",
             "affine": f"{(E[0], K)}@{(K, M)}+b", "l2_penalty": f"{(K, M)}", "maxout": f"{E} /4",
             "take": f"{(E[1], E[0])}[{E[0]} rows]"}
    rows = {g: [(sizes.get(g, f"{E}"), f)] for g, f in specs.items()}
    w3, rgb = (3, 3, C, C), IMG[:3] + (3,)
    rows["conv2d"] = [(f"{IMG}*{w3} SAME", conv(1, w3)),
                      (f"{rgb}*{(3, 3, 3, C)} SAME", conv(1, (3, 3, 3, C), rgb)),
                      (f"{IMG}*{w3} stride 2", conv(2, w3)),
                      (f"{IMG}*{(1, 1, C, 2 * C)} stride 2", conv(2, (1, 1, C, 2 * C)))]
    B, T, D, H = (2, 5, 4, 6) if quick else (64, 64, 128, 256)  # noqa: N806 - sequence sizes
    V = 11 if quick else 256  # noqa: N806

    def cell(k, extra=0):
        return lambda r, d: ((normal(r, (B, D), d),) + (normal(r, (B, H), d),) * (1 + extra)
                             + (normal(r, (D, k * H), d, 0.1), normal(r, (H, k * H), d, 0.1),
                                normal(r, (k * H,), d, 0.1))
                             + ((normal(r, (k * H,), d, 0.1),) if k == 3 else ()), {})

    rows["embedding"] = [(f"({V}, {D})[{(B, T)}]", lambda r, d: (
        (normal(r, (V, D), d), jnp.asarray(r.integers(0, V, (B, T)))), {}))]
    rows["rnn_cell"] = [(f"N={B} D={D} H={H}", cell(1))]
    rows["lstm_cell"] = [(f"N={B} D={D} H={H}", cell(4, extra=1))]
    rows["gru_cell"] = [(f"N={B} D={D} H={H}", cell(3))]

    def sequence(k, states=1, biases=1):  # time-major x (T, N, D), as fnn.ops.recurrent takes
        return lambda r, d: ((normal(r, (T, B, D), d),)
                             + tuple(normal(r, (B, H), d) for _ in range(states))
                             + (normal(r, (D, k * H), d, 0.1), normal(r, (H, k * H), d, 0.1))
                             + tuple(normal(r, (k * H,), d, 0.1) for _ in range(biases)), {})

    rows["rnn_sequence"] = [(f"T={T} N={B} D={D} H={H}", sequence(1))]
    rows["lstm_sequence"] = [(f"T={T} N={B} D={D} H={H}", sequence(4, states=2))]
    rows["gru_sequence"] = [(f"T={T} N={B} D={D} H={H}", sequence(3, biases=2))]
    heads = (B, 4, T, D // 4)
    rows["attention"] = [(f"{heads} causal", lambda r, d: (
        tuple(normal(r, heads, d) for _ in range(3)), {"causal": True}))]
    rows["max_pool2d"] = [(f"{IMG} 2x2", pool(2)), (f"{IMG} 3x3 stride 2", pool(3, 2))]
    rows["avg_pool2d"] = [(f"{IMG} 2x2", pool(2)), (f"{IMG} 3x3 stride 2", pool(3, 2))]
    return rows
