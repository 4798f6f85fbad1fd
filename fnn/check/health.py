"""Gradient health of a model on one batch, per layer: what `python -m fnn train --diagnostics`
measures every N steps.

    h = fnn.check.gradient_health(model, params, state, (x, y))      # jit-able; arrays out
    h["grad_norm"]["1_dense"], h["dead_relu"]["2_relu"], h["custom_vs_builtin"]["1_dense"]

Metrics (each a dict: layer path -> scalar):
  grad_norm          |g| of the layer's parameters (all its leaves together), g = fnn.grad
  update_ratio       |update| / |params| of the layer, when `updates` is given (the optimizer's
                     step; the CS231n rule of thumb wants about 1e-3)
  custom_vs_builtin  CS231n relative error max|g - g_jax| / (max|g| + max|g_jax|) of fnn.grad
                     vs jax.grad of the same loss at the same params and batch (drift monitor)
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

from fnn.nn.combinators import split_key
from fnn.pytrees import path_name

SATURATION = 0.99  # |tanh| above, sigmoid outside [1 - SATURATION, SATURATION]
DEAD = ("relu",)
SATURATING = ("sigmoid", "tanh")
METRICS = ("grad_norm", "update_ratio", "custom_vs_builtin", "dead_relu", "saturated")


def activation_layers(model) -> dict:
    """{path: layer name} of the ReLU, sigmoid and tanh layers of a model, at any depth."""
    found = {}

    def visit(layer, path):
        if layer.kind in ("serial", "parallel"):
            for k, child in layer.children:
                visit(child, path + (k,))
        elif layer.name in DEAD + SATURATING:
            found["/".join(path) or layer.name] = layer.name

    visit(model, ())
    return found


def layer_activations(model, params, state, x, *, key=None, train=False):
    """(y, {path: output}): the model's output and the output of each layer that
    activation_layers(model) lists. Jit-able.

    Serial combinators are run child by child, exactly as `serial` does (same PRNG keys), so y
    is the model's own output. A "parallel" combinator (residual) is run by its own apply; its
    children are also run on its input, only to read their activations (their keys are split
    from the combinator's as serial would, so a dropout inside a branch may draw other masks).
    """
    acts = {}
    y = _walk(model, params, state, x, key, train, (), acts)
    return y, acts


def _walk(layer, params, state, x, key, train, path, acts):
    if layer.kind == "serial":
        for (k, child), sub in zip(layer.children, split_key(key, len(layer.children))):
            x = _walk(child, params[k], state[k], x, sub, train, path + (k,), acts)
        return x
    if layer.kind == "parallel":
        for (k, child), sub in zip(layer.children, split_key(key, len(layer.children))):
            _walk(child, params[k], state[k], x, sub, train, path + (k,), acts)
    y, _ = layer.apply(params, state, x, key=key, train=train)
    if layer.kind != "parallel" and layer.name in DEAD + SATURATING:
        acts["/".join(path) or layer.name] = y
    return y


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


def _maxabs(leaves):
    return jnp.max(jnp.stack([jnp.max(jnp.abs(leaf)) for leaf in leaves]))


def rel_error(a, b):
    """CS231n relative error of two lists of arrays, jit-able: max|a - b| / (max|a| + max|b|)
    (fnn.check.rel_error's measure, over all leaves of a layer at once)."""
    diff = _maxabs([u - v for u, v in zip(a, b)])
    scale = _maxabs(a) + _maxabs(b)
    return jnp.where(scale > 0, diff / jnp.where(scale > 0, scale, 1.0), diff)


def by_layer(tree, name: str = "model") -> dict:
    """{layer path: [leaves]}: the leaves of a params-shaped pytree grouped by their layer (the
    path of the dict holding them); `name` for leaves at the top (a one-layer model)."""
    groups = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        groups.setdefault(path_name(path[:-1]) or name, []).append(leaf)
    return groups


def _norm(leaves):
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in leaves))


def gradient_health(model, params, state, batch, *, key=None, loss: str = "softmax_cross_entropy",
                    l2: float = 0.0, updates=None) -> dict:
    """The metrics of the module docstring for `model` at (params, state) on batch = (x, y).

    The loss is the training loss (fnn.train.make_loss_fn: training mode, `key` for dropout,
    the `l2` penalty). updates: the optimizer's update of params (a pytree like params, e.g.
    new_params - params) for update_ratio; without it update_ratio is {}. Pure and jit-able;
    returns float arrays (jax.device_get them for numbers).
    """
    from fnn.transforms import value_and_grad as fnn_value_and_grad
    from fnn.train.step import make_loss_fn

    x, y = batch
    loss_fn = make_loss_fn(model, loss, l2=l2)
    (value, _), g = fnn_value_and_grad(loss_fn, has_aux=True)(params, state, x, y, key)
    g_jax, _ = jax.grad(loss_fn, has_aux=True)(params, state, x, y, key)
    _, acts = layer_activations(model, params, state, x, key=key, train=True)
    kinds = activation_layers(model)
    grads, ref, ps = by_layer(g, model.name), by_layer(g_jax, model.name), by_layer(params,
                                                                                   model.name)
    health = {
        "loss": value,
        "grad_norm": {k: _norm(v) for k, v in grads.items()},
        "update_ratio": {},
        "custom_vs_builtin": {k: rel_error(v, ref[k]) for k, v in grads.items()},
        "dead_relu": {k: dead_fraction(a) for k, a in acts.items() if kinds[k] in DEAD},
        "saturated": {k: saturated_fraction(kinds[k], a) for k, a in acts.items()
                      if kinds[k] in SATURATING},
    }
    if updates is not None:
        us = by_layer(updates, model.name)
        health["update_ratio"] = {k: _norm(us[k]) / _norm(v) for k, v in ps.items()}
    return health
