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
    leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(a.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def epoch_is_finite(losses, params) -> bool:
    """Every step's loss and every parameter after the epoch is finite."""
    return bool(np.all(np.isfinite(np.asarray(losses)))) and bool(_all_finite(params))


def _nonfinite_leaves(tree) -> list[str]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [path_name(path, "params") for path, leaf in leaves
            if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
            and not bool(np.all(np.isfinite(np.asarray(leaf))))]


def _run_steps(step, carry, x, y, order, keys):
    """The first len(order) steps of the epoch, compiled as one scan (make_train_epoch's)."""
    if not len(order):
        return carry
    return jax.jit(lambda c, o, k: scan_steps(step, c, x, y, o, k)[0])(carry, order, keys)


def find_nan_origin(model, optimizer, start, x, y, key, *, batch_size: int, losses,
                    epoch: int, step0: int, loss: str = "softmax_cross_entropy",
                    grad: str = "custom", l2: float = 0.0, rules=None) -> NanOriginError:
    """Replay the epoch that began at `start` (params, state, opt_state) with PRNG `key` and
    name the origin of its first non-finite loss (`losses`: the epoch's per-step losses; a
    non-finite loss at index len(losses) means the parameters after the last step).

    epoch: its number (1-based); step0: optimizer steps done before it (for the message).
    """
    losses = np.asarray(losses)
    bad = np.flatnonzero(~np.isfinite(losses))
    first = int(bad[0]) if bad.size else len(losses)
    host = jax.device_get  # replay on the default device, whatever the training placement
    x, y = jnp.asarray(host(x)), jnp.asarray(host(y))
    params, state, opt_state = jax.tree_util.tree_map(jnp.asarray, host(tuple(start)))
    order, keys = epoch_batches(key, x.shape[0], batch_size)
    lo = max(0, first - 1)
    where = (f"epoch {epoch}, step {first + 1} of the epoch (optimizer step {step0 + first + 1})"
             if first < len(losses) else f"epoch {epoch}, after its last step")
    value = f"{losses[first]}" if first < len(losses) else "non-finite parameters"
    head = f"training produced a non-finite loss ({value}) at {where}"
    if grad == "builtin":
        head += " (grad=builtin; replayed with fnn's hand-written VJPs to locate it)"
    carry = _run_steps(make_train_step(model, optimizer, loss=loss, grad=grad, l2=l2, jit=False,
                                       rules=rules),
                       (params, state, opt_state), x, y, order[:lo], keys[:lo])
    eager = make_train_step(model, optimizer, loss=loss, grad="custom", l2=l2, jit=False,
                            rules=rules)
    for i in range(lo, min(first + 1, len(order))):
        if i == lo:
            bad_params = _nonfinite_leaves(carry[0])
            if bad_params:
                return NanOriginError(
                    f"{head}. The parameters were already non-finite before step {i + 1} of the "
                    f"epoch ({', '.join(bad_params[:6])}): the NaN came from an earlier update",
                    gate=None, phase="before the epoch", site="?")
        batch = (x[order[i]], y[order[i]])
        try:
            with debug_nans():
                new_params, new_state, new_opt, metrics = eager(*carry, batch, keys[i])
        except NanOriginError as e:
            err = NanOriginError(f"{head}; replayed eagerly, step {i + 1} of the epoch: {e}",
                                 gate=e.gate, phase=e.phase, site=e.site)
            err.step = step0 + i + 1
            return err
        bad_params = _nonfinite_leaves(new_params)
        if bad_params:
            err = NanOriginError(
                f"{head}; replayed eagerly, step {i + 1} of the epoch: every gate's forward and "
                f"VJP stayed finite, but the optimizer update made {', '.join(bad_params[:6])} "
                "non-finite (the learning rate is too large or the gradients overflow: lower "
                "--lr, or clip them with --clip)", gate=None, phase="optimizer update", site="?")
            err.step = step0 + i + 1
            return err
        carry = (new_params, new_state, new_opt)
    return NanOriginError(
        f"{head}, but replaying it eagerly gave finite values: the NaN may depend on XLA's "
        "compiled arithmetic (fusion, reduction order) or on grad=builtin's derivatives",
        gate=None, phase="not reproduced", site="?")


class NanReplay(Hook):
    """The fit hook of check_nans=True: after each epoch, a non-finite loss or parameter raises
    the NanOriginError of find_nan_origin. The epoch's inputs are kept (not donated) for it."""

    donate = False

    def __init__(self, model, optimizer, x, y, *, batch_size: int, loss: str, grad: str,
                 l2: float, rules=None):
        self.model, self.optimizer, self.x, self.y = model, optimizer, x, y
        self.options = {"batch_size": batch_size, "loss": loss, "grad": grad, "l2": l2,
                        "rules": rules}

    def after_epoch(self, before, params, losses, key):
        if not epoch_is_finite(losses, params):
            raise find_nan_origin(self.model, self.optimizer,
                                  (before.params, before.state, before.opt_state), self.x,
                                  self.y, key, losses=losses, epoch=before.epoch + 1,
                                  step0=before.step, **self.options)
