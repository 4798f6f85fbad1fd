"""Where a NaN loss came from: `fit(..., check_nans=True)`, `python -m fnn train --check-nans`.

The epoch runs compiled, where fnn.debug_nans cannot look at values. So fit keeps a copy of the
state at the start of each epoch and, when a step's loss is NaN or inf, `find_nan_origin`
replays that epoch: the steps before the offending one compiled (same batches, same keys), then
the step before it and the offending step eagerly, one gate at a time, under fnn.debug_nans()
with fnn's hand-written VJPs. The first gate whose forward or VJP makes a NaN/inf is named, with
its call site and input ranges; if every gate stays finite but the optimizer update makes a
parameter non-finite, the update is named instead. The result is a NanOriginError to raise.
`NanReplay` is the fit hook that does this after every epoch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fnn.autodiff.nans import NanOriginError, debug_nans
from fnn.pytrees import path_name
from fnn.train.epoch import epoch_batches, scan_steps
from fnn.train.hooks import Hook
from fnn.train.step import make_train_step


@jax.jit
def _all_finite(tree):
    leaves = [
        jnp.all(jnp.isfinite(a))
        for a in jax.tree_util.tree_leaves(tree)
        if jnp.issubdtype(a.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def epoch_is_finite(losses, params, state=None) -> bool:
    """Every step's loss, every parameter and every leaf of the model state (BatchNorm
    statistics) after the epoch is finite."""
    return (
        bool(np.all(np.isfinite(np.asarray(losses))))
        and bool(_all_finite(params))
        and (state is None or bool(_all_finite(state)))
    )


def _nonfinite_leaves(tree, prefix: str = "params") -> list[str]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [
        path_name(path, prefix)
        for path, leaf in leaves
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
        and not bool(np.all(np.isfinite(np.asarray(leaf))))
    ]


def _run_steps(step, carry, x, y, order, keys):
    """The first len(order) steps of the epoch, compiled as one scan (make_train_epoch's)."""
    if not len(order):
        return carry
    return jax.jit(lambda c, o, k: scan_steps(step, c, x, y, o, k)[0])(carry, order, keys)


def find_nan_origin(
    model,
    optimizer,
    start,
    x,
    y,
    key,
    *,
    batch_size: int,
    losses,
    epoch: int,
    step0: int,
    loss: str = "softmax_cross_entropy",
    grad: str = "custom",
    l2: float = 0.0,
    position: int = 0,
    state_nonfinite=None,
    rules=None,
) -> NanOriginError:
    """Replay an epoch and name the origin of its first non-finite loss.

    The epoch began at `start` (params, state, opt_state) with PRNG `key`; a non-finite loss at
    index len(losses) means the parameters or model state after the last step.

    Args:
        model: the model.
        optimizer: the optax optimizer.
        start: (params, state, opt_state) at the beginning of the epoch.
        x: the training inputs.
        y: the training labels.
        key: the epoch's PRNG key.
        batch_size: the training batch size.
        losses: the epoch's per-step losses.
        epoch: its number (1-based).
        step0: optimizer steps done before `start` (for the message).
        loss: the loss (a name, a Loss or a function).
        grad: "custom" or "builtin", as in training.
        l2: the L2 penalty, as in training.
        position: the step of the epoch `start` is at (a run resumed in the middle of the
            epoch: the replay begins there).
        state_nonfinite: per step, whether the model state (BatchNorm running statistics) after
            it holds a NaN/inf (its loss may still be finite).
        rules: the backward-rule overrides, as in training.

    Returns:
        A NanOriginError naming the step and the gate (to raise).
    """
    losses = np.asarray(losses)
    first = _first_nonfinite(losses, state_nonfinite, position)
    step0 -= position  # optimizer steps before the epoch's step 1
    make_step = functools.partial(
        make_train_step, model, optimizer, loss=loss, l2=l2, jit=False, rules=rules
    )
    data, carry, order, keys = _epoch_on_default_device(start, x, y, key, batch_size)
    head = _what(losses, first, epoch, step0, grad)
    lo = max(position, first - 1)
    carry = _run_steps(make_step(grad=grad), carry, *data, order[position:lo], keys[position:lo])
    steps = range(lo, min(first + 1, len(order)))
    return _replay_eagerly(make_step(grad="custom"), carry, data, order, keys, steps, head, step0)


def _epoch_on_default_device(start, x, y, key, batch_size: int):
    """((x, y), (params, state, opt_state), order, keys): the epoch's data and starting state
    on the default device, whatever the training placement, and its batches' order and keys."""
    host = jax.device_get
    x, y = jnp.asarray(host(x)), jnp.asarray(host(y))
    params, state, opt_state = jax.tree_util.tree_map(jnp.asarray, host(tuple(start)))
    order, keys = epoch_batches(key, x.shape[0], batch_size)
    return (x, y), (params, state, opt_state), order, keys


def _first_nonfinite(losses, state_nonfinite, position: int) -> int:
    """The first step from `position` on whose loss or model state is non-finite;
    len(losses) where there is none (the parameters or state after the last step)."""
    state_bad = (
        np.zeros(len(losses), bool)
        if state_nonfinite is None
        else np.asarray(state_nonfinite, bool)
    )
    bad = np.flatnonzero((~np.isfinite(losses) | state_bad)[position:])
    return position + int(bad[0]) if bad.size else len(losses)


def _replay_eagerly(
    eager, carry, data, order, keys, steps: range, head: str, step0: int
) -> NanOriginError:
    """The epoch's `steps` replayed by the `eager` train step from `carry` (params, state,
    opt_state before the first of them), one gate at a time under fnn.debug_nans: the error
    naming the first gate or update that makes a NaN/inf (or the parameters already
    non-finite before them), else one saying that the replay stayed finite."""
    x, y = data
    for i in steps:
        if i == steps[0]:
            bad_params = _nonfinite_leaves(carry[0]) + _nonfinite_leaves(carry[1], "state")
            if bad_params:
                return NanOriginError(
                    f"{head}. The parameters were already non-finite before step {i + 1} of the "
                    f"epoch ({', '.join(bad_params[:6])}): the NaN came from an earlier update",
                    gate=None,
                    phase="before the epoch",
                    site="?",
                )
        batch = (x[order[i]], y[order[i]])
        try:
            with debug_nans():
                new_params, new_state, new_opt, metrics = eager(*carry, batch, keys[i])
        except NanOriginError as e:
            err = NanOriginError(
                f"{head}; replayed eagerly, step {i + 1} of the epoch: {e}",
                gate=e.gate,
                phase=e.phase,
                site=e.site,
            )
            err.step = step0 + i + 1
            return err
        err = _after_gates(
            f"{head}; replayed eagerly, step {i + 1} of the epoch", new_params, new_state
        )
        if err is not None:
            err.step = step0 + i + 1
            return err
        carry = (new_params, new_state, new_opt)
    return NanOriginError(
        f"{head}, but replaying it eagerly gave finite values: the NaN may depend on XLA's "
        "compiled arithmetic (fusion, reduction order) or on grad=builtin's derivatives",
        gate=None,
        phase="not reproduced",
        site="?",
    )


def _what(losses, first: int, epoch: int, step0: int, grad: str) -> str:
    """What went non-finite, and where: the head of find_nan_origin's message (step `first`
    of the epoch, len(losses): after its last step; step0: optimizer steps before its step 1)."""
    where = (
        f"epoch {epoch}, step {first + 1} of the epoch (optimizer step {step0 + first + 1})"
        if first < len(losses)
        else f"epoch {epoch}, after its last step"
    )
    if first < len(losses) and np.isfinite(losses[first]):
        head = f"the model state (BatchNorm statistics) became non-finite at {where}"
    else:
        value = f"{losses[first]}" if first < len(losses) else "non-finite parameters"
        head = f"training produced a non-finite loss ({value}) at {where}"
    if grad == "builtin":
        head += " (grad=builtin; replayed with fnn's hand-written VJPs to locate it)"
    return head


def _after_gates(head: str, new_params, new_state) -> NanOriginError | None:
    """A step replayed eagerly whose gates all stayed finite: the update of the model state
    (running statistics) or of the parameters (the optimizer's) that made a NaN/inf, or None."""
    bad_state = _nonfinite_leaves(new_state, "state")
    if bad_state and not _nonfinite_leaves(new_params):
        return NanOriginError(
            f"{head}: every gate's forward and VJP stayed finite, but the model state (running "
            f"statistics) became non-finite: {', '.join(bad_state[:6])} (a BatchNorm layer saw "
            "inputs too large for its dtype: lower --lr, clip with --clip, or normalize the "
            "inputs)",
            gate=None,
            phase="model state update",
            site="?",
        )
    bad_params = _nonfinite_leaves(new_params)
    if bad_params:
        return NanOriginError(
            f"{head}: every gate's forward and VJP stayed finite, but the optimizer update made "
            f"{', '.join(bad_params[:6])} non-finite (the learning rate is too large or the "
            "gradients overflow: lower --lr, or clip them with --clip)",
            gate=None,
            phase="optimizer update",
            site="?",
        )
    return None


STATE_FLAG = "state_nonfinite"  # the per-step metric NanReplay adds


class NanReplay(Hook):
    """The fit hook of check_nans=True: after each epoch, a non-finite loss, parameter or model
    state (BatchNorm statistics; watched after every step, inside the compiled loop) raises
    the NanOriginError of find_nan_origin. The epoch's inputs are kept (not donated) for it.
    The model, optimizer, data and training options are the spec's (on_fit_start)."""

    donate = False

    def on_fit_start(self, spec, ts):
        self.spec, self.pending = spec, None

    def in_step(self, value, before, after, batch, key):  # is the state after it finite?
        return value, {STATE_FLAG: ~_all_finite(after[1])}

    def after_epoch(self, before, params, losses, key):
        self.pending = (before, params, losses, key)

    def on_metrics(self, metrics, record):
        state_bad = np.asarray(metrics[STATE_FLAG])
        (before, params, losses, key), self.pending = self.pending, None
        if not epoch_is_finite(losses, params) or state_bad[before.position :].any():
            spec = self.spec
            raise find_nan_origin(
                spec.model,
                spec.optimizer,
                (before.params, before.state, before.opt_state),
                spec.data.x_train,
                spec.data.y_train,
                key,
                losses=losses,
                epoch=before.epoch + 1,
                step0=before.step,
                position=before.position,
                state_nonfinite=state_bad,
                batch_size=spec.batch_size,
                loss=spec.loss,
                grad=spec.grad,
                l2=spec.l2,
                rules=spec.rules,
            )
