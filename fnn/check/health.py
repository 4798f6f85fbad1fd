"""Gradient health of a model on one batch, per layer: what `python -m fnn train --diagnostics`
measures every N steps.

    loss_fn = fnn.train.make_loss_fn(model)                          # or any loss of that form
    h = fnn.check.gradient_health(loss_fn, model, params, state, (x, y))   # jit-able; arrays out
    h["grad_norm"]["1_dense"], h["dead_relu"]["2_relu"], h["custom_vs_builtin"]["1_dense"]

`loss_fn(params, state, x, y, key) -> (loss, aux)` is the training loss (what
fnn.train.make_loss_fn builds); it is differentiated by fnn.grad and by jax.grad. The
activations are read from one run of the model in training mode through the combinators'
`observe` hook (fnn/nn/combinators.py), with the same key.

Metrics (each a dict: layer path -> scalar):
  grad_norm          |g| of the layer's parameters (all its leaves together), g = fnn.grad
  update_ratio       |update| / |params| of the layer, when `updates` is given (the optimizer's
                     step; the CS231n rule of thumb wants about 1e-3)
  custom_vs_builtin  CS231n relative error max|g - g_jax| / (max|g| + max|g_jax|) of fnn.grad
                     vs jax.grad of the same loss at the same params and batch (drift monitor;
                     with rule overrides, how far their gradient is from the true one)
  alignment          the angle in degrees between the layer's gradient g (with the rules given)
                     and jax.grad's: 0 for exact rules, the feedback-alignment literature's
                     angle for feedback alignment and surrogate gradients
  dead_relu          fraction of a ReLU layer's units whose output is 0 for every example of
                     the batch; a unit is a feature (Dense) or a channel, the last axis (Conv:
                     0 at every example and position)
  saturated          fraction of a sigmoid or tanh layer's outputs (units x examples) in the flat
                     tails: |tanh| > 0.99, sigmoid < 0.01 or > 0.99
and "loss", the batch loss. A parameter layer is named by the path of its params dict
("1_dense", "3_residual_block/0_residual/main/0_conv2d"); an activation layer by its path in
the model ("2_relu"). Activation layers are found by their Layer.name ("relu", "sigmoid", "tanh").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fnn.check.numeric import rel_error
from fnn.nn.combinators import named_layers
from fnn.pytrees import path_name
from fnn.transforms import value_and_grad as fnn_value_and_grad

SATURATION = 0.99  # |tanh| above, sigmoid outside [1 - SATURATION, SATURATION]
DEAD = ("relu",)
SATURATING = ("sigmoid", "tanh")
METRICS = ("grad_norm", "update_ratio", "custom_vs_builtin", "alignment", "dead_relu", "saturated")


def _watched(path: tuple, layer) -> str | None:
    """The activation path of a ReLU, sigmoid or tanh layer at `path` (None for others)."""
    if layer.children or layer.name not in DEAD + SATURATING:
        return None
    return "/".join(path) or layer.name


def activation_layers(model) -> dict:
    """{path: layer name} of the ReLU, sigmoid and tanh layers of a model, at any depth."""
    return {
        _watched(path, layer): layer.name
        for path, layer in named_layers(model)
        if _watched(path, layer)
    }


def layer_activations(model, params, state, x, *, key=None, train=False):
    """(y, {path: output}): the model's output and the output of each layer that
    activation_layers(model) lists, from one run of the model (its `observe` hook). Jit-able."""
    acts = {}

    def observe(path, layer, y):
        name = _watched(path, layer)
        if name:
            acts[name] = y

    if not model.children:  # a lone layer is its own only activation
        y, _ = model.apply(params, state, x, key=key, train=train)
        observe((), model, y)
        return y, acts
    y, _ = model.apply(params, state, x, key=key, train=train, observe=observe)
    return y, acts


def dead_fraction(y):
    """Fraction of units (last axis) that are 0 at every example (and position): (N, .., D)."""
    alive = jnp.any(y.reshape(-1, y.shape[-1]) != 0, axis=0)
    return 1.0 - jnp.mean(alive.astype(jnp.float32))


def saturated_fraction(name: str, y):
    """Fraction of the outputs of a sigmoid or tanh layer in their flat tails."""
    if name == "tanh":
        flat = jnp.abs(y) > SATURATION
    else:
        flat = (y < 1.0 - SATURATION) | (y > SATURATION)
    return jnp.mean(flat.astype(jnp.float32))


def by_layer(tree, name: str = "model") -> dict:
    """{layer path: [leaves]}: the leaves of a params-shaped pytree grouped by their layer (the
    path of the dict holding them); `name` for leaves at the top (a one-layer model)."""
    groups = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        groups.setdefault(path_name(path[:-1]) or name, []).append(leaf)
    return groups


def _norm(leaves):
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in leaves))


def angle_deg(a, b):
    """The angle between two pytrees as vectors, in degrees (0 when either is zero)."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    dot = sum(jnp.vdot(u.astype(jnp.float32), v.astype(jnp.float32)) for u, v in zip(la, lb))
    na = jnp.sqrt(sum(jnp.vdot(u, u).astype(jnp.float32) for u in la))
    nb = jnp.sqrt(sum(jnp.vdot(v, v).astype(jnp.float32) for v in lb))
    cos = jnp.where((na > 0) & (nb > 0), dot / jnp.maximum(na * nb, 1e-30), 1.0)
    return jnp.degrees(jnp.arccos(jnp.clip(cos, -1.0, 1.0)))


def gradient_health(
    loss_fn, model, params, state, batch, *, key=None, updates=None, rules=None
) -> dict:
    """The gradient-health metrics for `model` at (params, state) on batch = (x, y).

    Per layer (layer path -> scalar): grad_norm, update_ratio, custom_vs_builtin, alignment,
    dead_relu and saturated, and "loss" (fnn.check.health defines each). Pure and jit-able;
    returns float arrays (jax.device_get them for numbers).

    Args:
        loss_fn: `loss_fn(params, state, x, y, key) -> (loss, aux)`, the loss to differentiate
            (what fnn.train.make_loss_fn builds).
        model: the model (a `fnn.nn.Layer`).
        params: its parameters.
        state: its state (batch-norm statistics).
        batch: `(x, y)`.
        key: the dropout key passed to `loss_fn`.
        updates: the optimizer's update of params (a pytree like params, e.g.
            new_params - params) for update_ratio; without it update_ratio is {}.
        rules: backward-rule overrides (as fnn.grad takes them): the gradient measured is
            theirs, "custom_vs_builtin" its distance from the true one and "alignment" the angle
            between the two per layer, in degrees (the quantity the feedback-alignment literature
            plots; 0 for exact rules).

    Returns:
        A dict: metric name -> {layer path: float array}, and "loss" -> the batch loss.
    """
    x, y = batch
    (value, _), g = fnn_value_and_grad(loss_fn, has_aux=True, rules=rules)(params, state, x, y, key)
    g_jax, _ = jax.grad(loss_fn, has_aux=True)(params, state, x, y, key)
    _, acts = layer_activations(model, params, state, x, key=key, train=True)
    kinds = activation_layers(model)
    grads, ref = by_layer(g, model.name), by_layer(g_jax, model.name)
    health = {
        "loss": value,
        "grad_norm": {k: _norm(v) for k, v in grads.items()},
        "update_ratio": {},
        "custom_vs_builtin": {k: jnp.asarray(rel_error(v, ref[k])) for k, v in grads.items()},
        "alignment": {k: angle_deg(v, ref[k]) for k, v in grads.items()},
        "dead_relu": {k: dead_fraction(a) for k, a in acts.items() if kinds[k] in DEAD},
        "saturated": {
            k: saturated_fraction(kinds[k], a) for k, a in acts.items() if kinds[k] in SATURATING
        },
    }
    if updates is not None:
        us, ps = by_layer(updates, model.name), by_layer(params, model.name)
        health["update_ratio"] = {k: _norm(us[k]) / _norm(v) for k, v in ps.items()}
    return health
