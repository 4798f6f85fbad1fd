"""One training step and one evaluation step, from a model, a loss gate and an optax optimizer.

The loss function is written once, with fnn's gates; `grad` picks who differentiates it:

    grad="custom"   fnn.value_and_grad   the hand-written VJP of every gate
    grad="builtin"  jax.value_and_grad   JAX's own autodiff of the gates' forwards

Both see exactly the same function, so any difference between the two runs is a difference in
the gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fnn.ops import l2_penalty, registry
from fnn.train.parallel import constrain_batch, data_parallel, jit_step
from fnn.transforms import value_and_grad as fnn_value_and_grad

LOSSES = {"softmax_cross_entropy": "softmax_cross_entropy",
          "cross_entropy": "softmax_cross_entropy", "svm": "svm_loss"}
GRADS = ("custom", "builtin")


def get_loss(name: str):
    """The loss gate `loss(scores (N, C), labels (N,)) -> mean over the batch`, by name."""
    try:
        return registry[LOSSES[name]]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}") from None


def make_loss_fn(model, loss: str = "softmax_cross_entropy", *, l2: float = 0.0):
    """loss_fn(params, state, x, y, key) -> (loss, (new_state, scores)), in training mode.

    l2 > 0 adds the lecture's l2 * sum(w**2) over every weight matrix and kernel (ndim >= 2).
    """
    loss_gate = get_loss(loss)

    def loss_fn(params, state, x, y, key):
        scores, new_state = model.apply(params, state, x, key=key, train=True)
        value = loss_gate(scores, y)
        if l2:
            for w in jax.tree_util.tree_leaves(params):
                if w.ndim >= 2:
                    value = value + l2_penalty(w, scale=l2)
        return value, (new_state, scores)

    return loss_fn


def value_and_grad(loss_fn, grad: str = "custom"):
    """(value, aux), grads of `loss_fn` wrt its first argument, by fnn or by JAX."""
    if grad == "custom":
        return fnn_value_and_grad(loss_fn, has_aux=True)
    if grad == "builtin":
        return jax.value_and_grad(loss_fn, has_aux=True)
    raise ValueError(f"grad must be one of {', '.join(GRADS)}, got {grad!r}")


def accuracy(scores, labels):
    """Fraction of rows whose highest score is the label."""
    return jnp.mean(jnp.argmax(scores, axis=-1) == labels)


def make_train_step(model, optimizer: optax.GradientTransformation, *,
                    loss: str = "softmax_cross_entropy", grad: str = "custom", l2: float = 0.0,
                    jit: bool = True, devices=None):
    """step(params, state, opt_state, batch, key) -> (params, state, opt_state, metrics).

    batch = (x, y); metrics = {"loss", "accuracy"} of the batch, before the update. With
    jit=True the step is compiled and params, state and opt_state are donated: do not use the
    arrays you passed in after the call. jit=False gives the plain function (to scan over).
    devices (a count, devices or a Mesh; fnn.train.parallel): data parallel, the batch split
    across them and everything else replicated (placed on the first call), one jitted program.
    """
    vg = value_and_grad(make_loss_fn(model, loss, l2=l2), grad)

    def step(params, state, opt_state, batch, key):
        x, y = batch
        (value, (new_state, scores)), grads = vg(params, state, x, y, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, new_state, opt_state, {"loss": value, "accuracy": accuracy(scores, y)}

    dp = data_parallel(devices)
    if dp is not None:
        return jit_step(step, dp) if jit else constrain_batch(step, dp)
    return jax.jit(step, donate_argnums=(0, 1, 2)) if jit else step


def per_example_loss(loss: str, scores, labels):
    """The loss of each row on its own, (N,): the loss gate applied to one example at a time."""
    gate = get_loss(loss)
    return jax.vmap(lambda s, y: gate(s[None], y[None]))(scores, labels)


def make_eval_step(model, *, loss: str = "softmax_cross_entropy", jit: bool = True):
    """eval_step(params, state, batch) -> {"loss", "accuracy"}: batch means, evaluation mode."""

    def eval_step(params, state, batch):
        x, y = batch
        scores, _ = model.apply(params, state, x, train=False)
        return {"loss": jnp.mean(per_example_loss(loss, scores, y)),
                "accuracy": accuracy(scores, y)}

    return jax.jit(eval_step) if jit else eval_step
