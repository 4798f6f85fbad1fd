"""Checks of a training set and a starting state against a model, before anything is compiled.

Inside the compiled epoch a bad label or a NaN pixel can no longer be named: an out-of-range
label silently picks no class and a NaN input only shows up as a NaN loss. `check_fit_inputs`
runs once per `fit` on the host arrays and raises a DataError (or ValueError) that names the
array, the example and the values:

    y_train: labels must lie in [0, 10) for a model with 10 outputs; got 12, 15 at examples 3, 40
"""

from __future__ import annotations

import jax
import numpy as np

from fnn.errors import describe
from fnn.nn.summary import layer_shapes
from fnn.pytrees import path_name
from fnn.train.readers import DataError


def _examples(idx: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in idx[:8])
    return shown + (f" ... ({idx.size} in all)" if idx.size > 8 else "")


def check_split(x, y, name: str, num_classes: int | None) -> None:
    """x (N, ...) finite numbers; y (N, ...): integer labels in [0, num_classes) (one per
    example, or per position), or finite float targets."""
    if x is None or y is None:
        raise DataError(
            f"x_{name} and y_{name} must both be arrays, got {describe(x)} and {describe(y)}"
        )
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 1 or y.ndim < 1:
        raise DataError(
            f"x_{name} must be (N, ...) and y_{name} (N, ...), labels or targets of "
            f"N examples; got x_{name} {describe(x)}, y_{name} {describe(y)}"
        )
    if name == "train" and len(x) == 0:
        raise DataError(f"x_train is empty ({describe(x)}): there is nothing to train on")
    if len(x) != len(y):
        raise DataError(
            f"x_{name} holds {len(x)} examples but y_{name} holds {len(y)} labels "
            f"(x_{name} {describe(x)}, y_{name} {describe(y)})"
        )
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all():
            idx = np.flatnonzero(~np.isfinite(y.reshape(len(y), -1)).all(axis=1))
            raise DataError(
                f"y_{name} {describe(y)} holds non-finite targets in examples {_examples(idx)}"
            )
        num_classes = None  # targets, not class labels
    elif not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"y_{name} must hold integer class labels or float targets, got "
            f"{describe(y)} (dtype {y.dtype}); convert them, e.g. y.astype(np.int32)"
        )
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(f"x_{name} must hold numbers, got {describe(x)} (dtype {x.dtype})")
    if np.issubdtype(x.dtype, np.floating):
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if bad.any():
            idx = np.flatnonzero(bad)
            n_nan, n_inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
            raise DataError(
                f"x_{name} {describe(x)} holds {n_nan} NaN and {n_inf} inf values, "
                f"in examples {_examples(idx)}: clean or drop them before training"
            )
    if num_classes is not None and y.size:
        bad = (y < 0) | (y >= num_classes)
        if bad.any():
            idx = np.flatnonzero(bad.reshape(-1))
            values = ", ".join(str(int(v)) for v in np.unique(y[idx])[:8])
            idx = np.unique(idx // max(1, int(np.prod(y.shape[1:]))))
            raise DataError(
                f"y_{name}: labels must lie in [0, {num_classes}) for a model with "
                f"{num_classes} outputs; got {values} at examples {_examples(idx)}"
            )


def _shapes(tree, prefix: str) -> dict:
    return {
        path_name(path, prefix): tuple(np.shape(leaf))
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def check_start(model, input_shape, start, shapes=None) -> None:
    """`start` (a TrainState) must have the params/state of `model` on `input_shape`
    (`shapes`: layer_shapes(model, input_shape) if already known)."""
    want = dict(zip(("params", "state"), shapes or layer_shapes(model, input_shape)))
    problems = []
    for part in ("params", "state"):
        have, need = _shapes(getattr(start, part), part), _shapes(want[part], part)
        problems += [
            f"{k}: {have[k]} in start, {need[k]} in the model"
            for k in sorted(have.keys() & need.keys())
            if have[k] != need[k]
        ]
        problems += [
            f"{k} {need[k]}: missing from start" for k in sorted(need.keys() - have.keys())
        ]
        problems += [
            f"{k} {have[k]}: in start but not in the model"
            for k in sorted(have.keys() - need.keys())
        ]
    if problems:
        more = f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else ""
        raise ValueError(
            f"start: the TrainState does not fit this model on input shape "
            f"{tuple(input_shape)}:\n  " + "\n  ".join(problems[:12]) + more
        )


@jax.jit
def _count_non_finite(leaves):
    return [(jax.numpy.isnan(a).sum(), jax.numpy.isinf(a).sum()) for a in leaves]


def non_finite_leaves(tree, prefix: str) -> list[str]:
    """'name (k NaN, j inf of n)' for each float leaf of `tree` holding NaN or inf."""
    paths = [
        (path_name(p, prefix), leaf)
        for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
        if hasattr(leaf, "dtype") and np.issubdtype(np.dtype(leaf.dtype), np.inexact)
    ]
    if not paths:
        return []
    counts = jax.device_get(_count_non_finite([leaf for _, leaf in paths]))
    return [
        f"{name} ({int(nan)} NaN, {int(inf)} inf of {int(np.size(leaf))})"
        for (name, leaf), (nan, inf) in zip(paths, counts)
        if nan or inf
    ]


def check_finite_state(ts, source: str = "start") -> None:
    """DataError naming every leaf of the parameters, model state and optimizer state of `ts`
    (a TrainState) that holds NaN or inf: training from them could only give NaN."""
    bad = [
        *non_finite_leaves(ts.params, "params"),
        *non_finite_leaves(ts.state, "state"),
        *non_finite_leaves(ts.opt_state, "opt_state"),
    ]
    if bad:
        shown = ", ".join(bad[:8]) + (f" ... ({len(bad)} leaves in all)" if len(bad) > 8 else "")
        raise DataError(
            f"{source}: the training state holds NaN/inf values in {shown}; "
            "training cannot start from it (every step would give NaN). Start "
            "from an earlier checkpoint, or from fresh parameters"
        )


def check_positive_int(name: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")


def check_optimizer_state(optimizer, start) -> None:
    """`start.opt_state` must be a state of `optimizer` for start.params (same structure,
    shapes and dtypes as optimizer.init(params) would give)."""
    want = jax.eval_shape(optimizer.init, start.params)
    have_leaves, have_def = jax.tree_util.tree_flatten_with_path(start.opt_state)
    want_leaves, want_def = jax.tree_util.tree_flatten_with_path(want)
    if have_def != want_def:
        raise ValueError(
            f"start: its opt_state is not a state of this optimizer (start holds "
            f"{_kinds(start.opt_state)}, this optimizer makes {_kinds(want)}): "
            "continue with the optimizer the state was made with"
        )
    problems = [
        f"{path_name(p, 'opt_state')}: {describe(a)} in start, {describe(b)} for this optimizer"
        for (p, a), (_, b) in zip(have_leaves, want_leaves)
        if tuple(np.shape(a)) != tuple(b.shape) or jax.numpy.result_type(a) != b.dtype
    ]
    if problems:
        raise ValueError(
            "start: its opt_state does not fit this optimizer and model:\n  "
            + "\n  ".join(problems[:12])
        )


def _kinds(tree) -> str:
    """The optimizer-state types in `tree` (optax's named tuples), in order: what tells one
    optimizer's state from another's."""
    names = []

    def walk(node):
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            names.append(type(node).__name__)
        if isinstance(node, (tuple, list)):
            for child in node:
                walk(child)

    walk(tree)
    text = "(" + ", ".join(names) + ")" if names else type(tree).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def check_position(start, n_steps: int, batch_size: int) -> None:
    """A `start` saved in the middle of an epoch must fit this epoch: its position inside it and
    the batch order it drew (steps, batch_size)."""
    p = start.position
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or not 0 <= p < n_steps:
        raise ValueError(
            f"start: position {p!r} inside the epoch must be in [0, {n_steps}) "
            f"(an epoch has {n_steps} steps of {batch_size})"
        )
    if p:
        order = None if not start.partial else start.partial.get("order")
        if order is None or tuple(np.shape(order)) != (n_steps, batch_size):
            raise ValueError(
                f"start: saved at step {p} of an epoch with batches "
                f"{describe(order) if order is not None else 'missing'}, but this "
                f"run's epochs have {n_steps} batches of {batch_size}: the data "
                "or the batch size changed since it was saved"
            )


def check_loss_shapes(loss, out: tuple, y, name: str = "loss") -> None:
    """The loss must take the model's scores (2, *out) with labels (2, *y.shape[1:]): tried on
    shapes alone (jax.eval_shape), its own error named with the shapes."""
    from fnn.train.step import get_loss

    fn = get_loss(loss)
    scores = jax.ShapeDtypeStruct((2, *out), np.float32)
    labels = jax.ShapeDtypeStruct((2, *np.shape(y)[1:]), np.asarray(y).dtype)
    try:
        jax.eval_shape(fn.fn, scores, labels)
    except Exception as e:  # the loss's own message, with the shapes that caused it

        def shape(dims):
            return "(" + ", ".join(["N", *map(str, dims)]) + ")"

        raise DataError(
            f"the loss {fn.name!r} cannot take the model's scores {shape(out)} with "
            f"labels y_{name} {shape(np.shape(y)[1:])} ({np.asarray(y).dtype}): "
            f"{str(e).splitlines()[0]}"
        ) from None


def check_held_out(x, y, split: str, y_train, input_shape: tuple, classes) -> None:
    """A validation or test split (`split`: "val", "test"): checked as the training split is
    (check_split), and its examples and labels of the training split's shapes and kind of
    label; DataError naming what differs."""
    check_split(x, y, split, classes)
    if tuple(np.shape(x)[1:]) != input_shape:
        raise DataError(
            f"x_{split} examples have shape {tuple(np.shape(x)[1:])} but "
            f"x_train examples {input_shape}: the model takes {input_shape}"
        )
    if tuple(np.shape(y)[1:]) != tuple(np.shape(y_train)[1:]):
        raise DataError(
            f"y_{split} labels have shape {tuple(np.shape(y)[1:])} per example "
            f"but y_train {tuple(np.shape(y_train)[1:])}"
        )
    kinds = [np.issubdtype(np.asarray(a).dtype, np.floating) for a in (y_train, y)]
    if kinds[0] != kinds[1]:
        what = {True: "float targets", False: "integer class labels"}
        raise DataError(
            f"y_{split} holds {what[kinds[1]]} ({np.asarray(y).dtype}) but "
            f"y_train {what[kinds[0]]} ({np.asarray(y_train).dtype}): "
            f"the loss and the accuracy would not be the same on both; convert "
            f"y_{split} to {np.asarray(y_train).dtype}"
        )


def check_fit_inputs(
    model,
    data,
    *,
    loss="softmax_cross_entropy",
    start=None,
    optimizer=None,
    batch_size: int | None = None,
    eval_batch_size: int | None = None,
    epochs: int | None = None,
) -> None:
    """Everything fit can check before compiling.

    Its counts, the output shape, labels and finiteness of the training, validation and test
    sets (each checked against the model and the loss), and `start` (params, state, the
    optimizer's state, its position inside an epoch).

    Args:
        model: the model (a fnn.nn Layer).
        data: the Dataset (or anything with x_train, y_train, x_val, y_val, input_shape).
        loss: a name, a fnn.train.Loss or a function (get_loss).
        start: a TrainState to continue from, checked against the model and optimizer.
        optimizer: the optax optimizer (to check `start`'s optimizer state).
        batch_size: the training batch size (checked against the counts).
        eval_batch_size: the evaluation batch size.
        epochs: the number of epochs (checked against `start`'s).

    Raises:
        ValueError: a count or batch size is not valid, or the model's output does not fit the
            loss.
        DataError: the inputs or labels of a split do not fit the model or the loss (shape,
            dtype, range, non-finite values).
    """
    from fnn.train.step import get_loss

    get_loss(loss)  # an unknown loss name fails here
    for name, v in (
        ("epochs", epochs),
        ("batch_size", batch_size),
        ("eval_batch_size", eval_batch_size),
    ):
        if v is not None:
            check_positive_int(name, v)
    input_shape = tuple(np.shape(data.x_train)[1:])
    shapes = layer_shapes(model, input_shape)  # (params, state, output shape) from shapes alone
    out = shapes[2]
    _check_scores_per_class(out, data.y_train, input_shape, loss)
    check_split(data.x_train, data.y_train, "train", out[-1] if out else None)
    check_loss_shapes(loss, out, data.y_train, "train")
    for split in ("val", "test"):
        x, y = getattr(data, f"x_{split}", None), getattr(data, f"y_{split}", None)
        if x is not None and len(x):
            check_held_out(x, y, split, data.y_train, input_shape, out[-1] if out else None)
    if start is not None:
        check_start_state(
            model, data, start, optimizer=optimizer, batch_size=batch_size, shapes=shapes
        )


def _check_scores_per_class(out: tuple, y_train, input_shape: tuple, loss) -> None:
    """Integer class labels, one per example, need the model to give one score per class for
    each example (`out` of one axis, (C,)); ValueError saying so otherwise."""
    y = np.asarray(y_train) if y_train is not None else None
    if y is not None and y.ndim == 1 and np.issubdtype(y.dtype, np.integer) and len(out) != 1:
        raise ValueError(
            f"the model maps one example {input_shape} to {out}; the loss {loss!r} "
            "with one label per example needs one score per class, (C,): end the "
            "model with a Dense layer (after a Flatten)"
        )


def check_start_state(
    model, data, start, *, optimizer=None, batch_size: int | None = None, shapes=None
) -> None:
    """`start`, a TrainState to continue training from, against the model (params, state), the
    optimizer (its state) and the epochs of `data` in batches of `batch_size` (its position
    inside an epoch); ValueError naming what does not fit."""
    from fnn.train.epoch import steps_per_epoch

    input_shape = tuple(np.shape(data.x_train)[1:])
    check_start(model, input_shape, start, shapes)
    if optimizer is not None:
        check_optimizer_state(optimizer, start)
    if batch_size is not None:
        check_position(start, steps_per_epoch(len(data.x_train), batch_size), batch_size)
