"""Small fnn.nn models with a batch, for the checkers' views of a whole model
(`python -m fnn gradcheck --model`, `python -m fnn graph --model`).

    model, params, state, x, y = small_model("cnn")
    report, divergences = check_model("cnn")     # check_grads and locate_divergence of its loss
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fnn.check.divergence import locate_divergence
from fnn.check.grads import check_grads
from fnn.nn import cnn, mlp, resnet, rnn_lm, transformer_lm
from fnn.ops import softmax_cross_entropy

MODELS = {
    "mlp": (lambda: mlp(hidden=(16, 16), num_classes=5), (12,), 8),
    "cnn": (lambda: cnn(channels=(4, 8), dense=(16,), num_classes=5), (8, 8, 3), 4),
    "resnet": (lambda: resnet(widths=(4, 8), num_classes=5), (8, 8, 3), 4),
    "lstm": (lambda: rnn_lm("lstm", 5, hidden=(8,), embed=4), (6,), 3),
    "gru": (lambda: rnn_lm("gru", 5, hidden=(8,), embed=4), (6,), 3),
    "transformer": (lambda: transformer_lm(5, width=8, depth=1, heads=2), (6,), 3),
}
TOKENS = ("lstm", "gru", "transformer")  # token ids in, per-position logits out


def small_model(name: str, seed: int = 0):
    """(model, params, state, x, y): a small fnn.nn model by name with a batch, in float32."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    build, shape, batch = MODELS[name]
    model = build()
    kp, kx, ky = jax.random.split(jax.random.PRNGKey(seed), 3)
    params, state, _ = model.init(kp, shape)
    if name in TOKENS:  # ids in, the next id at every position out
        ids = jax.random.randint(kx, (batch, shape[0] + 1), 0, 5)
        return model, params, state, ids[:, :-1], ids[:, 1:]
    x = jax.random.normal(kx, (batch,) + shape, jnp.float32)
    y = jax.random.randint(ky, (batch,), 0, 5)
    return model, params, state, x, y


def check_model(name: str, *, seed: int = 0):
    """check_grads of a small model's loss wrt its parameters (one row per layer's leaf), and
    locate_divergence of the same loss: (GradReport, Divergences)."""
    model, params, state, x, y = small_model(name, seed)

    def loss(params, x):
        return softmax_cross_entropy(model.apply(params, state, x, train=True)[0], y)

    return check_grads(loss, params, x, seed=seed), locate_divergence(loss, params, x)
