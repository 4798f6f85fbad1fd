"""Loss gates: a scalar from a batch, with the fused gradient rules of the lecture.

    softmax cross-entropy: dlogits = (softmax(logits) - onehot(labels)) / N
    multiclass SVM:        dscores = [margin > 0] - onehot(labels) * (number of margins > 0), / N

Conventions: `g` is the upstream gradient (a scalar), `saved` what the forward kept. Class
labels are integer arrays and get no gradient (None). The classification losses check their
inputs in the forward and raise a GateError naming the gate, the argument and its shape/dtype;
labels that are concrete (not traced by jit) are also checked to lie in [0, C).
"""

import jax
import jax.numpy as jnp
import numpy as np

from fnn.autodiff.case_values import away_from, normal
from fnn.autodiff.gate import Case, defgate
from fnn.errors import GateError, describe


def _check_classes(name, scores, labels, what="logits"):
    """Validate (N, C) float scores and (N,) integer labels in [0, C); return labels, N, C."""
    if not hasattr(labels, "dtype"):
        labels = np.asarray(labels)
    if jnp.ndim(scores) != 2 or not jnp.issubdtype(scores.dtype, jnp.floating):
        raise GateError(
            f"gate '{name}': {what} must be a float array of shape (N, C), "
            f"got {what} {describe(scores)}"
        )
    n, c = scores.shape
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise GateError(
            f"gate '{name}': labels must be integer class indices, got labels "
            f"{describe(labels)} (dtype {labels.dtype}) for {what} {describe(scores)}"
        )
    if labels.shape != (n,):
        raise GateError(
            f"gate '{name}': labels must have shape ({n},), one per row of {what} "
            f"{describe(scores)}, got labels {describe(labels)}"
        )
    if n == 0 or c == 0:
        raise GateError(
            f"gate '{name}': empty batch, {what} {describe(scores)} and labels "
            f"{describe(labels)}; the mean over N needs N > 0 and C > 0"
        )
    if not isinstance(labels, jax.core.Tracer):
        concrete = np.asarray(labels)
        bad = np.flatnonzero((concrete < 0) | (concrete >= c))
        if bad.size:
            raise GateError(
                f"gate '{name}': labels must lie in [0, {c}) for {what} "
                f"{describe(scores)}; got values {concrete[bad[:8]].tolist()} at "
                f"rows {bad[:8].tolist()}" + (" ..." if bad.size > 8 else "")
            )
    return labels, n, c


def _onehot(labels, c, dtype):
    return (labels[:, None] == jnp.arange(c)[None, :]).astype(dtype)


# ---- softmax cross-entropy ---------------------------------------------------------------------
REDUCTIONS = ("mean", "sum", "none")


def _targets(logits, labels, label_smoothing, ignore_index):
    """(target distribution over the classes (..., C), weight per example (...) (0 where
    ignored), integer labels or None) after checking shapes, dtypes and ranges."""
    name = "softmax_cross_entropy"
    if jnp.ndim(logits) < 1 or not jnp.issubdtype(jnp.result_type(logits), jnp.floating):
        raise GateError(
            f"gate '{name}': logits must be a float array (..., C), got logits {describe(logits)}"
        )
    c = logits.shape[-1]
    if not 0.0 <= label_smoothing <= 1.0:
        raise GateError(
            f"gate '{name}': label_smoothing must lie in [0, 1], got {label_smoothing!r}"
        )
    if not hasattr(labels, "dtype"):
        labels = np.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.floating):  # class probabilities
        target, weight, ints = _probability_targets(name, logits, labels, ignore_index)
    else:
        target, weight, ints = _index_targets(name, logits, labels, ignore_index)
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + label_smoothing / c
    return target, weight, ints


def _probability_targets(name, logits, labels, ignore_index):
    """_targets of float `labels`, class probabilities shaped like `logits`: (labels, weight 1
    per example, None)."""
    dtype = jnp.result_type(logits)
    if labels.shape != logits.shape:
        raise GateError(
            f"gate '{name}': labels must be integer class indices (shape "
            f"{logits.shape[:-1]}) or class probabilities shaped like logits "
            f"{describe(logits)}; got labels {describe(labels)} (dtype "
            f"{labels.dtype})"
        )
    if ignore_index is not None:
        raise GateError(
            f"gate '{name}': ignore_index needs integer labels, got labels {describe(labels)}"
        )
    return labels.astype(dtype), jnp.ones(logits.shape[:-1], dtype), None


def _index_targets(name, logits, labels, ignore_index):
    """_targets of integer `labels`, class indices of shape logits.shape[:-1]: (one-hot
    targets, weight 0 where ignore_index else 1, the labels with ignore_index made 0)."""
    dtype, c = jnp.result_type(logits), logits.shape[-1]
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise GateError(
            f"gate '{name}': labels must be integer class indices, got labels "
            f"{describe(labels)} (dtype {labels.dtype}) for logits "
            f"{describe(logits)}"
        )
    if labels.shape != logits.shape[:-1]:
        raise GateError(
            f"gate '{name}': labels must have shape {logits.shape[:-1]}, one per "
            f"row of logits {describe(logits)}, got labels {describe(labels)}"
        )
    if not isinstance(labels, jax.core.Tracer):
        _check_label_range(name, logits, labels, ignore_index)
    kept = jnp.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    ints = jnp.where(kept, labels, 0).astype(jnp.int32)
    return (ints[..., None] == jnp.arange(c)).astype(dtype), kept.astype(dtype), ints


def _check_label_range(name, logits, labels, ignore_index):
    """GateError naming the first (up to 8) of concrete `labels` outside [0, C) that are not
    `ignore_index`."""
    c = logits.shape[-1]
    concrete = np.asarray(labels)
    bad = np.flatnonzero(((concrete < 0) | (concrete >= c)) & (concrete != ignore_index))
    if bad.size:
        raise GateError(
            f"gate '{name}': labels must lie in [0, {c}) for logits {describe(logits)}"
            + (f" (or be ignore_index {ignore_index})" if ignore_index is not None else "")
            + f"; got values {concrete.reshape(-1)[bad[:8]].tolist()} at "
            + ("rows" if concrete.ndim == 1 else "flat positions")
            + f" {bad[:8].tolist()}"
            + (" ..." if bad.size > 8 else "")
        )


@defgate
def softmax_cross_entropy(
    logits, labels, *, label_smoothing=0.0, ignore_index=None, reduction="mean"
):
    """-sum_c target_c log softmax(logits)_c per example, then reduced (stable, max-shifted).

    Shapes: logits (..., C) float; labels (...) integer class indices in [0, C), or class
    probabilities (..., C) (float). label_smoothing e: the target is (1 - e) onehot + e / C.
    ignore_index: examples whose label equals it add nothing (padding tokens). reduction:
    "mean" (over the examples not ignored; the default), "sum", or "none" (the loss of each
    example, shape (...)).
    Local gradients (fused through softmax and log): d/dlogits = (softmax(logits) - target)
    times each example's weight (1/count for the mean, 0 where ignored); for probability labels
    d/dlabels = -log softmax(logits) times the same weight. Integer labels get no gradient.

    Args:
        logits: (..., C) float.
        labels: (...) integer class indices in [0, C), or class probabilities (..., C).
        label_smoothing: e: the target is (1 - e) onehot + e / C.
        ignore_index: a label whose examples add nothing (None: none).
        reduction: "mean", "sum" or "none".

    Returns:
        The loss: a scalar, or shape (...) for reduction="none".

    Raises:
        fnn.GateError: an empty batch, or an unknown reduction.
    """
    if reduction not in REDUCTIONS:
        raise GateError(
            f"gate 'softmax_cross_entropy': reduction must be one of "
            f"{', '.join(REDUCTIONS)}, got {reduction!r}"
        )
    target, weight, ints = _targets(logits, labels, label_smoothing, ignore_index)
    if reduction == "mean" and (logits.size == 0 or logits.shape[-1] == 0):
        raise GateError(
            f"gate 'softmax_cross_entropy': empty batch, logits {describe(logits)} "
            f"and labels {describe(labels)}; the mean needs examples and classes"
        )
    shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
    logp = shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))
    if ints is not None and not label_smoothing:  # one log-probability per example
        per_example = -jnp.take_along_axis(logp, ints[..., None], axis=-1)[..., 0] * weight
    else:
        per_example = -jnp.sum(target * logp, axis=-1) * weight
    if reduction == "none":
        return per_example, (logp, target, weight, None)
    total = jnp.sum(per_example)
    if reduction == "sum":
        return total, (logp, target, weight, None)
    count = jnp.sum(weight)
    return total / count, (logp, target, weight, count)


@softmax_cross_entropy.defvjp
def softmax_cross_entropy_vjp(
    g, saved, *, needs, label_smoothing=0.0, ignore_index=None, reduction="mean"
):
    logp, target, weight, count = saved
    scale = weight * (g if reduction == "none" else g / count if reduction == "mean" else g)
    dlogits = (jnp.exp(logp) * jnp.sum(target, axis=-1, keepdims=True) - target) * scale[..., None]
    dlabels = None
    if needs[1]:  # probability labels
        dlabels = -logp * scale[..., None] * (1.0 - label_smoothing)
    return dlogits.astype(logp.dtype), dlabels


def _labels(rng, n, c):
    return rng.integers(0, c, size=n)


@softmax_cross_entropy.defcases
def _softmax_cross_entropy_cases(rng, dtype):
    cases = [
        Case((normal(rng, (n, c), dtype, scale), _labels(rng, n, c)), label=f"{n}x{c}*{scale}")
        for n, c, scale in [(4, 3, 1.0), (8, 10, 1.0), (1, 5, 1.0), (6, 4, 5.0), (3, 1, 1.0)]
    ]
    tokens = rng.integers(0, 6, (2, 5))
    tokens[0, 3:] = -1  # padding
    probs = rng.dirichlet(np.ones(4), size=3).astype(dtype)
    return cases + [
        Case(
            (normal(rng, (2, 5, 6), dtype), tokens),
            {"ignore_index": -1},
            label="(B, T, V) with padding ignored",
        ),
        Case(
            (normal(rng, (4, 5), dtype), _labels(rng, 4, 5)),
            {"label_smoothing": 0.1},
            label="label smoothing",
        ),
        Case((normal(rng, (3, 4), dtype), probs), label="class probabilities"),
        Case(
            (normal(rng, (3, 4), dtype), _labels(rng, 3, 4)),
            {"reduction": "none"},
            label="per example",
        ),
        Case((normal(rng, (3, 4), dtype), _labels(rng, 3, 4)), {"reduction": "sum"}, label="sum"),
    ]


softmax_cross_entropy.defkinks(
    lambda dtype: [
        Case(
            (np.asarray([[0.0, -np.inf, 1.0], [2.0, 2.0, -np.inf]], dtype), np.asarray([0, 1])),
            label="-inf logits, ties",
        )
    ]
)


@defgate
def binary_cross_entropy_with_logits(logits, targets, *, reduction="mean"):
    """Binary cross-entropy from logits, computed stably, then reduced.

    -(t log sigmoid(z) + (1 - t) log(1 - sigmoid(z))) elementwise, from logits z (stable:
    softplus(z) - z t, softplus by jnp.logaddexp(z, 0)), then reduced ("mean", "sum" or "none").

    Shapes: logits and targets the same shape; targets in [0, 1] (float).
    Local gradients: d/dz = sigmoid(z) - t, d/dt = -z, times 1/size for the mean.

    Args:
        logits: the logits z.
        targets: the targets t in [0, 1] (float), shaped like the logits.
        reduction: "mean", "sum" or "none".

    Returns:
        The loss: a scalar, or shaped like the logits for reduction="none".

    Raises:
        fnn.GateError: an unknown reduction, or targets that are not floats shaped like the logits.
    """
    if reduction not in REDUCTIONS:
        raise GateError(
            f"gate 'binary_cross_entropy_with_logits': reduction must be one of "
            f"{', '.join(REDUCTIONS)}, got {reduction!r}"
        )
    if np.shape(logits) != np.shape(targets) or not jnp.issubdtype(
        jnp.result_type(targets), jnp.floating
    ):
        raise GateError(
            f"gate 'binary_cross_entropy_with_logits': targets must be floats shaped "
            f"like logits {describe(logits)}, got targets {describe(targets)}"
        )
    targets = targets.astype(jnp.result_type(logits))
    softplus = jnp.logaddexp(logits, 0.0)  # log(1 + e**z) = max(z, 0) + log(1 + e**-|z|)
    loss = softplus - logits * targets
    saved = (logits, targets, softplus)
    if reduction == "none":
        return loss, saved
    return (jnp.mean(loss) if reduction == "mean" else jnp.sum(loss)), saved


def _finite(x):
    return jnp.where(jnp.isinf(x), jnp.zeros((), x.dtype), x)


@binary_cross_entropy_with_logits.defvjp
def binary_cross_entropy_with_logits_vjp(g, saved, *, needs, reduction="mean"):
    z, t, softplus = saved
    scale = g / z.size if reduction == "mean" else g
    # sigmoid(z) as jnp.logaddexp's rule writes it, exp(z - softplus(z)) (infinities read as 0)
    dz = scale * jnp.exp(_finite(z) - _finite(softplus)) - scale * t
    return dz, (-z * scale if needs[1] else None)


@binary_cross_entropy_with_logits.defcases
def _bce_cases(rng, dtype):
    return [
        Case(
            (normal(rng, (4, 3), dtype, 3.0), rng.uniform(0, 1, (4, 3)).astype(dtype)),
            {"reduction": r},
            label=r,
        )
        for r in REDUCTIONS
    ]


binary_cross_entropy_with_logits.defkinks(
    lambda dtype: [
        Case(
            (
                np.asarray([0.0, -0.0, 1.0, -2.0, 30.0, -30.0], dtype),
                np.asarray([0.0, 1.0, 0.5, 0.0, 1.0, 0.25], dtype),
            ),
            {"reduction": r},
            label=f"z = 0, +-30, {r}",
        )
        for r in ("sum", "none")
    ]
)


# ---- multiclass SVM (hinge) --------------------------------------------------------------------
@defgate
def svm_loss(scores, labels, *, delta=1.0):
    """CS231n multiclass SVM: mean_i sum_{j != y_i} max(0, s_ij - s_iy_i + delta).

    Shapes: scores (N, C) float, labels (N,) int in [0, C); output a scalar.
    Local gradient: for j != y_i, d/ds_ij = [margin_ij > 0] / N; for the correct class,
    d/ds_iy_i = -(number of j with margin_ij > 0) / N. A margin of exactly 0 counts as
    inactive (gradient 0). Labels get no gradient.

    Args:
        scores: (N, C) float.
        labels: (N,) int in [0, C).
        delta: the margin.

    Returns:
        The loss, a scalar.
    """
    labels, n, c = _check_classes("svm_loss", scores, labels, what="scores")
    correct = jnp.take_along_axis(scores, labels[:, None].astype(jnp.int32), axis=1)
    is_label = labels[:, None] == jnp.arange(c)[None, :]
    raw = scores - correct + delta
    margins = jnp.where(is_label | (raw <= 0), 0.0, raw)  # a margin of exactly 0 is inactive
    return jnp.sum(margins) / n, (scores, correct, labels)


@svm_loss.defvjp
def svm_loss_vjp(g, saved, *, delta=1.0):
    scores, correct, labels = saved  # the masks are recomputed, fused into the one pass over g
    n, c = scores.shape
    is_label = labels[:, None] == jnp.arange(c)[None, :]
    active = ~is_label & ~(scores - correct + delta <= 0)  # as the forward's where: NaN active
    dscores = jnp.where(active, g / n, np.zeros((), g.dtype))
    # the label's column gets minus the row's sum: n values written in place
    return dscores.at[jnp.arange(n), labels].set(-jnp.sum(dscores, axis=1)), None


@svm_loss.defcases
def _svm_loss_cases(rng, dtype):
    """Scores built from their margins, which stay at least 0.1 away from the kink at 0."""
    cases = []
    for n, c, delta in [(4, 3, 1.0), (8, 10, 1.0), (1, 5, 1.0), (5, 4, 0.5), (3, 1, 1.0)]:
        labels = _labels(rng, n, c)
        margins = away_from(rng, (n, c), "float64", gap=0.1)
        correct = rng.standard_normal((n, 1))
        scores = np.where(labels[:, None] == np.arange(c), correct, margins + correct - delta)
        cases.append(
            Case((scores.astype(dtype), labels), {"delta": delta}, label=f"{n}x{c},delta={delta}")
        )
    return cases


svm_loss.defkinks(
    lambda dtype: [  # margins exactly 0: inactive, as the forward's where says
        Case(
            (
                np.asarray([[1.0, 0.0, -5.0], [2.0, 2.0, 1.0], [0.5, 1.5, 0.5]], dtype),
                np.asarray([0, 1, 2]),
            ),
            label="margins exactly 0",
        )
    ]
)


# ---- regression and regularization -------------------------------------------------------------
@defgate
def mse(pred, target):
    """mean((pred - target)**2) over all entries; a scalar.

    Shapes: pred and target the same shape exactly (no broadcasting), size M > 0.
    Local gradients: d/dpred = 2 (pred - target) / M, d/dtarget = -2 (pred - target) / M.

    Args:
        pred: the predictions.
        target: the targets, shaped like pred.

    Returns:
        The mean squared error, a scalar.

    Raises:
        fnn.GateError: the inputs are empty or not of the same shape.
    """
    if np.shape(pred) != np.shape(target):
        raise GateError(
            f"gate 'mse': pred {describe(pred)} and target {describe(target)} must "
            "have exactly the same shape (mse does not broadcast)"
        )
    if np.size(pred) == 0:
        raise GateError(
            f"gate 'mse': empty inputs pred {describe(pred)}, target {describe(target)}"
        )
    diff = pred - target
    return jnp.mean(diff * diff), (diff, jnp.result_type(pred), jnp.result_type(target))


@mse.defvjp
def mse_vjp(g, saved, *, needs):
    diff, pred_dtype, target_dtype = saved
    d = diff * (2.0 * g / diff.size)
    return (
        d.astype(pred_dtype) if needs[0] else None,
        (-d).astype(target_dtype) if needs[1] else None,
    )


@mse.defcases
def _mse_cases(rng, dtype):
    return [
        Case((normal(rng, s, dtype), normal(rng, s, dtype)), label=str(s))
        for s in [(), (5,), (3, 4), (2, 3, 4)]
    ]


mse.defkinks(smooth=True)


@defgate
def l2_penalty(w, *, scale=1.0):
    """CS231n's L2 regularization: scale * sum(w**2) (no 1/2), a scalar.

    Shapes: w any shape. Local gradient: d/dw = 2 * scale * w.

    Args:
        w: the weights (any shape).
        scale: the penalty's factor.

    Returns:
        scale * sum(w**2), a scalar.
    """
    return scale * jnp.sum(w * w), w


@l2_penalty.defvjp
def l2_penalty_vjp(g, w, *, scale=1.0):
    return ((2.0 * scale * g * w).astype(w.dtype),)


@l2_penalty.defcases
def _l2_penalty_cases(rng, dtype):
    return [
        Case((normal(rng, s, dtype),), {"scale": scale}, label=f"{s},scale={scale}")
        for s, scale in [((), 1.0), ((5,), 1.0), ((3, 4), 0.5), ((2, 3, 4), 1e-3)]
    ]


l2_penalty.defkinks(smooth=True)
