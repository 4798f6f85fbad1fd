"""One training step and one evaluation step, from a model, a loss gate and an optax optimizer.

The loss function is written once, with fnn's gates; `grad` picks who differentiates it:

    grad="custom"   fnn.value_and_grad   the hand-written VJP of every gate
    grad="builtin"  jax.value_and_grad   JAX's own autodiff of the gates' forwards

Both see exactly the same function, so any difference between the two runs is a difference in
the gradients.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from fnn.nn import remat as remat_layer
from fnn.nn.combinators import is_plain_serial
from fnn.ops import l2_penalty, registry
from fnn.runtime import remat_compiler_options
from fnn.train.parallel import constrain_batch, data_parallel, jit_step
from fnn.transforms import value_and_grad as fnn_value_and_grad

GRADS = ("custom", "builtin")
"""The gradient modes: custom (fnn.grad, hand-written rules) and builtin (jax.grad)."""


@dataclasses.dataclass(frozen=True)
class Loss:
    """A training loss: fn(scores, labels) -> the mean over the batch (a scalar).

    Labels may have any shape the function accepts: (N,) class labels for (N, C) scores,
    (N, T) per-token labels for (N, T, C) logits, float targets shaped like the scores for
    regression.

    Attributes:
        name: the loss's name (in reports and checkpoints).
        fn: fn(scores, labels) -> the mean over the batch (a scalar).
        classify: the labels are class indices (integers shaped like scores[..., 0]), so
            accuracy (argmax over the last axis) is reported; None decides by the labels' dtype
            and shape.
        per_example_fn: `per_example(scores, labels) -> (N,)`; None: fn on one example at a
            time.
    """

    name: str
    fn: Callable
    classify: bool | None = None
    per_example_fn: Callable | None = None

    def __call__(self, scores, labels):
        return self.fn(scores, labels)

    def is_classification(self, scores_shape, labels) -> bool:
        """Whether accuracy means something for these scores and labels."""
        if self.classify is not None:
            return self.classify
        return (
            jnp.issubdtype(jnp.result_type(labels), jnp.integer)
            and tuple(jnp.shape(labels)) == tuple(scores_shape)[:-1]
        )

    def per_example(self, scores, labels):
        if self.per_example_fn is not None:
            return self.per_example_fn(scores, labels)
        return jax.vmap(lambda s, y: self.fn(s[None], y[None]))(scores, labels)


def _one_hot_mse(scores, labels):
    """mse against one-hot targets when the labels are class indices (the lecture's squared
    error on classes), else against the labels themselves (regression)."""
    if jnp.issubdtype(jnp.result_type(labels), jnp.integer) and (
        jnp.ndim(labels) == jnp.ndim(scores) - 1
    ):
        labels = jax.nn.one_hot(labels, scores.shape[-1], dtype=jnp.result_type(scores))
    return registry["mse"](scores, labels)


LOSSES = {
    "softmax_cross_entropy": Loss("softmax_cross_entropy", registry["softmax_cross_entropy"], True),
    "cross_entropy": Loss("softmax_cross_entropy", registry["softmax_cross_entropy"], True),
    "svm": Loss("svm_loss", registry["svm_loss"], True),
    "mse": Loss("mse", _one_hot_mse),
}
"""The losses by name (what `loss=` and `--loss` accept): name -> Loss."""


def cross_entropy(*, label_smoothing: float = 0.0, ignore_index: int | None = None) -> Loss:
    """Softmax cross-entropy with label smoothing and/or an ignored label (padding tokens).

    These are the `softmax_cross_entropy` gate's own options (its hand-written rule covers both).

    Args:
        label_smoothing: cross-entropy against (1 - E) one-hot + E / C targets, E in [0, 1].
        ignore_index: a label whose positions are left out of the mean (None: none).

    Returns:
        The Loss.

    Raises:
        ValueError: `label_smoothing` is not in [0, 1].
    """
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1], got {label_smoothing!r}")
    if not label_smoothing and ignore_index is None:
        return LOSSES["softmax_cross_entropy"]
    gate = registry["softmax_cross_entropy"]

    def fn(scores, labels):
        return gate(scores, labels, label_smoothing=label_smoothing, ignore_index=ignore_index)

    name = (
        "softmax_cross_entropy"
        + (f" (label_smoothing {label_smoothing})" if label_smoothing else "")
        + (f" (ignore_index {ignore_index})" if ignore_index is not None else "")
    )
    return Loss(name, fn, True)


def get_loss(loss) -> Loss:
    """A Loss by name (LOSSES), a Loss, or any function loss(scores, labels) -> scalar mean.

    Args:
        loss: a name in LOSSES, a Loss, or a function (a gate, a jnp expression, an optax loss
            followed by a mean).

    Returns:
        The Loss.

    Raises:
        ValueError: `loss` names no loss, or is none of the accepted kinds.
    """
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        try:
            return LOSSES[loss]
        except KeyError:
            raise ValueError(
                f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)} or "
                "pass a function loss(scores, labels) -> scalar"
            ) from None
    if callable(loss):
        return Loss(getattr(loss, "__name__", type(loss).__name__), loss)
    raise ValueError(
        f"loss must be a name ({', '.join(LOSSES)}), a fnn.train.Loss or a "
        f"function loss(scores, labels) -> scalar, got {loss!r}"
    )


def make_loss_fn(model, loss="softmax_cross_entropy", *, l2: float = 0.0):
    """Make loss_fn(params, state, x, y, key) -> (loss, (new_state, scores)), in training mode.

    Args:
        model: the model.
        loss: a name, a Loss or a function (get_loss).
        l2: l2 > 0 adds the lecture's l2 * sum(w**2) over every weight matrix and kernel
            (ndim >= 2).

    Returns:
        The loss_fn function.
    """
    loss_gate = get_loss(loss)  # a name, a Loss or a function (get_loss)

    def loss_fn(params, state, x, y, key):
        scores, new_state = model.apply(params, state, x, key=key, train=True)
        value = loss_gate(scores, y)
        if l2:
            for w in jax.tree_util.tree_leaves(params):
                if w.ndim >= 2:
                    value = value + l2_penalty(w, scale=l2)
        return value, (new_state, scores)

    return loss_fn


def value_and_grad(loss_fn, grad: str = "custom", rules=None):
    """(value, aux), grads of `loss_fn` wrt its first argument, by fnn or by JAX. rules: fnn's
    rule overrides (fnn.grad's rules=; fnn.train.rule_specs.make_rules), grad="custom" only."""
    if grad == "custom":
        return fnn_value_and_grad(loss_fn, has_aux=True, rules=rules)
    if grad == "builtin":
        if rules:
            raise ValueError(
                f"rules replace fnn's hand-written backward: they need "
                f"grad='custom', not jax.grad (got rules for "
                f"{', '.join(map(str, rules))})"
            )
        return jax.value_and_grad(loss_fn, has_aux=True)
    raise ValueError(f"grad must be one of {', '.join(GRADS)}, got {grad!r}")


def accuracy(scores, labels):
    """Fraction of rows (of positions, for per-token labels) whose highest score is the label.

    Args:
        scores: (N, C) scores, or (N, T, C) per-token logits.
        labels: (N,) class labels, or (N, T) per-token labels.

    Returns:
        The fraction, a scalar.
    """
    return jnp.mean(jnp.argmax(scores, axis=-1) == labels)


def batch_metrics(loss, value, scores, labels) -> dict:
    """{"loss"} and, when the labels are class indices (Loss.is_classification), "accuracy"."""
    out = {"loss": value}
    if get_loss(loss).is_classification(jnp.shape(scores), labels):
        out["accuracy"] = accuracy(scores, labels)
    return out


def remat_model(model, remat=True):
    """`model` with its activations recomputed in the backward (rematerialization) for a train step:

      a model built with remat=True (Layer.remat)  as it is: its own blocks are checkpointed;
      a serial model                               its top-level layers in runs of about
                                                   sqrt(n) (fnn.nn.remat(model, 'sqrt'));
      any other layer                              checkpointed whole: it then keeps only its
                                                   input, but its backward recomputes all of it
                                                   at once, so the peak memory hardly drops.

    remat: True (the above), False (model unchanged), or an int k: runs of k top-level layers.
    """
    if remat is False or getattr(model, "remat", False):
        return model
    if remat is not True and (not isinstance(remat, int) or isinstance(remat, bool) or remat < 1):
        raise ValueError(
            f"remat must be True, False or a positive int (layers per checkpointed "
            f"run), got {remat!r}"
        )
    if not is_plain_serial(model):  # a leaf, a residual, a wrapper (in_dtype): whole
        return remat_layer(model)
    return remat_layer(model, "sqrt" if remat is True else remat)


def uses_remat(model) -> bool:
    """Whether any layer of `model` (itself or a child, at any depth) is checkpointed
    (fnn.nn.remat, a model's remat=True): its compiled step then needs XLA's remat options."""
    return bool(getattr(model, "remat", False)) or any(
        uses_remat(child) for _, child in getattr(model, "children", ())
    )


def make_train_step(
    model,
    optimizer: optax.GradientTransformation,
    *,
    loss="softmax_cross_entropy",
    grad: str = "custom",
    l2: float = 0.0,
    jit: bool = True,
    devices=None,
    rules=None,
    shard: str | None = None,
    remat=False,
):
    """Make step(params, state, opt_state, batch, key) -> (params, state, opt_state, metrics).

    batch = (x, y); metrics = {"loss", "accuracy"} of the batch, before the update ("accuracy"
    only when the labels are class indices).

    Args:
        model: the model.
        optimizer: the optax optimizer.
        loss: a name, a Loss or a function (get_loss).
        grad: "custom" (fnn's hand-written gradients) or "builtin" (jax.grad).
        l2: the lecture's l2 * sum(w**2) over the weights.
        jit: compile the step, donating params, state and opt_state: do not use the arrays you
            passed in after the call. jit=False gives the plain function (to scan over).
        devices: a count, devices or a Mesh (fnn.train.parallel): data parallel, the batch split
            across them and everything else replicated (placed on the first call), one jitted
            program.
        rules: backward-rule overrides, {gate: rule} as fnn.grad(rules=) takes (grad="custom").
        shard: "params": the large parameters and their optimizer state split across the
            devices as well (fnn.train.parallel; devices=None then means all of them).
        remat: recompute the model's activations in the backward instead of keeping them, to
            fit a bigger model or batch in memory for about one more forward per step
            (remat_model: True, or an int k, runs of k top-level layers); the compiled step gets
            XLA's options for it (fnn.runtime.remat_compiler_options); either grad. The values
            are those without it.

    Returns:
        The step function.
    """
    model = remat_model(model, remat)
    vg = value_and_grad(make_loss_fn(model, loss, l2=l2), grad, rules)

    def step(params, state, opt_state, batch, key):
        x, y = batch
        (value, (new_state, scores)), grads = vg(params, state, x, y, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, new_state, opt_state, batch_metrics(loss, value, scores, y)

    options = remat_compiler_options() if uses_remat(model) else None  # (after remat_model)
    dp = data_parallel(devices, shard)
    if dp is not None:
        return jit_step(step, dp, compiler_options=options) if jit else constrain_batch(step, dp)
    return jax.jit(step, donate_argnums=(0, 1, 2), compiler_options=options) if jit else step


def per_example_loss(loss, scores, labels):
    """The loss of each example on its own, (N,) (Loss.per_example)."""
    return get_loss(loss).per_example(scores, labels)


def make_eval_step(model, *, loss="softmax_cross_entropy", jit: bool = True):
    """Make eval_step(params, state, batch) -> {"loss", "accuracy"}: batch means, evaluation mode.

    ("accuracy" for class labels only.)

    Args:
        model: the model.
        loss: a name, a Loss or a function (get_loss).
        jit: compile the step.

    Returns:
        The eval_step function.
    """

    def eval_step(params, state, batch):
        x, y = batch
        scores, _ = model.apply(params, state, x, train=False)
        return batch_metrics(loss, jnp.mean(per_example_loss(loss, scores, y)), scores, y)

    return jax.jit(eval_step) if jit else eval_step
