"""fit: the epoch loop. Everything besides training (progress bar, per-epoch log, callback,
gradient health, NaN replay, checkpoints) is a hook (fnn.train.hooks).

    model = fnn.nn.mlp((100,))
    data = fnn.train.load_dataset("digits")
    opt = fnn.train.make_optimizer("adam", 1e-3)
    ts, history = fnn.train.fit(model, opt, data, epochs=20, grad="custom")

Epoch e shuffles with fold_in(ts.key, e), so a run resumed from a checkpoint of epoch k (see
fnn.train.checkpoint) continues with exactly the batches and dropout masks it would have had.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Callable, Sequence

import jax
import numpy as np

from fnn.train.diagnostics import HealthMonitor
from fnn.train.epoch import make_evaluate, make_train_epoch, steps_per_epoch
from fnn.train.hooks import Callback, EpochLog, Hook, ProgressBar
from fnn.train.nancheck import NanReplay
from fnn.train.parallel import data_parallel
from fnn.train.state import TrainState, init_train_state
from fnn.train.step import make_train_step
from fnn.train.validate import check_fit_inputs


class _CtrlC:
    """Notes a Ctrl-C that comes while the compiled epoch runs.

    A KeyboardInterrupt raised inside a host callback (the progress hooks) reaches fit wrapped
    in JAX's runtime error, with nothing to tell it by but its text, and one raised while the
    main thread waits inside JAX's runtime may not come out at all. So for the epoch's
    duration a SIGINT handler (main thread only) notes that one came before raising it as
    usual, and the progress callback notes one it sees; fit decides by that note.
    """

    def __init__(self):
        self.seen = False

    def __enter__(self):
        self.seen, self.previous = False, None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False

    def _on_sigint(self, signum, frame):
        if self.previous == signal.SIG_IGN:
            return
        if callable(self.previous):  # Python's own handler raises KeyboardInterrupt
            try:
                self.previous(signum, frame)
            except KeyboardInterrupt:
                self.seen = True
                raise
            return
        self.seen = True
        raise KeyboardInterrupt

    def watch(self, progress: Callable) -> Callable:
        """`progress` noting a KeyboardInterrupt raised in it."""
        def watched(done):
            try:
                progress(done)
            except KeyboardInterrupt:
                self.seen = True
                raise
        return watched


def fit(model, optimizer, data, *, epochs: int, batch_size: int = 64, grad: str = "custom",
        loss="softmax_cross_entropy", l2: float = 0.0, seed: int = 0,
        start: TrainState | None = None, schedule: Callable | None = None,
        callback: Callable | None = None, progress: bool = False, log: Callable | None = None,
        eval_batch_size: int = 1000, diagnostics: int = 0, check_nans: bool = False,
        devices=None, hooks: Sequence[Hook] = (), rules=None):
    """Train `model` on data.x_train for `epochs` epochs (in total, counting those of `start`).

    data: a Dataset (or anything with x_train, y_train, x_val, y_val arrays and input_shape).
    start: a TrainState to continue from (resume); else initialized from `seed`.
    schedule: the learning-rate schedule, only to report `lr` per epoch.
    callback(ts, record) runs after each epoch (checkpointing, logging); log(line) prints the
    per-epoch line (None: silent). Returns the final TrainState and the list of epoch records
    {epoch, step, train_loss, train_acc, val_loss, val_acc, lr, time_s, steps_per_s,
    examples_per_s, compile_s (first epoch of this call)} (the accuracies only when the labels
    are class indices). loss: a name, a fnn.train.Loss or a function loss(scores, labels) ->
    scalar (fnn.train.step.get_loss); labels of any shape it accepts (per-token labels).
    diagnostics=N > 0 measures gradient health every N steps inside the compiled epoch and adds
    its rows to the record as "diagnostics" (see fnn.train.diagnostics).
    check_nans: on a non-finite loss, replay the step eagerly under fnn.debug_nans and raise a
    NanOriginError naming the gate (fnn.train.nancheck). devices: data parallel over N devices
    (or a device list or Mesh), the batch split, parameters replicated (fnn.train.parallel).
    hooks: more fnn.train.hooks.Hook objects, called after the ones these options make
    (diagnostics, check_nans, progress, log, callback, in that order).
    rules: backward-rule overrides for grad="custom" ({gate: rule}, fnn.grad's rules=; from
    text specs: fnn.train.rules.make_rules); the gradient health (diagnostics) then also
    reports each layer's alignment angle between the gradient they give and the true one.
    The data, labels and `start` are checked against the model first (fnn.train.validate).
    """
    check_fit_inputs(model, data, loss=loss, start=start)
    ts = start if start is not None else init_train_state(model, optimizer, data.input_shape, seed)
    hooks = [*([HealthMonitor(model, diagnostics, loss=loss, l2=l2, rules=rules)]
               if diagnostics else []),
             *([NanReplay(model, optimizer, data.x_train, data.y_train, batch_size=batch_size,
                          loss=loss, grad=grad, l2=l2, rules=rules)] if check_nans else []),
             ProgressBar(epochs, progress),
             *([EpochLog(log, epochs)] if log is not None else []),
             *([Callback(callback)] if callback is not None else []), *hooks]
    has_val = data.x_val is not None and len(data.x_val) > 0
    dp = data_parallel(devices)
    place = jax.device_put if dp is None else dp.replicate  # make_train_epoch splits each batch
    x, y = place((data.x_train, data.y_train))
    x_val, y_val = place((data.x_val, data.y_val)) if has_val else (None, None)
    if dp is not None:
        dp.check_batch_size(batch_size)
        ts = TrainState(*dp.replicate((ts.params, ts.state, ts.opt_state, ts.key)), ts.epoch,
                        ts.step)
    n_steps = steps_per_epoch(len(data.x_train), batch_size)
    step = make_train_step(model, optimizer, loss=loss, grad=grad, l2=l2, jit=False, rules=rules)
    for h in hooks:
        step = h.wrap_step(step)
    ctrl_c = _CtrlC()
    listeners = [h for h in hooks if h.progress]
    epoch_fn = make_train_epoch(
        step, batch_size=batch_size, devices=dp, donate=all(h.donate for h in hooks),
        progress=ctrl_c.watch(lambda done: [h.on_progress(done) for h in listeners])
        if listeners else None)
    evaluate = make_evaluate(model, loss=loss, batch_size=eval_batch_size)
    compiled, history = None, []
    for e in range(ts.epoch, epochs):
        key = jax.random.fold_in(ts.key, e)
        record = {"epoch": e + 1}
        carried = ts.opt_state
        for h in hooks:
            carried = h.carry_in(carried, ts)
        if compiled is None:
            t0 = time.perf_counter()
            compiled = epoch_fn.lower(ts.params, ts.state, carried, x, y, key).compile()
            record["compile_s"] = time.perf_counter() - t0
        for h in hooks:
            h.on_epoch_start(ts, n_steps)
        t0 = time.perf_counter()
        try:
            with ctrl_c:
                params, state, carried, metrics = compiled(ts.params, ts.state, carried, x, y,
                                                           key)
                losses = np.asarray(metrics["loss"])
                accs = np.asarray(metrics["accuracy"]) if "accuracy" in metrics else None
        except Exception:
            if ctrl_c.seen:  # Ctrl-C in a progress callback, wrapped by JAX: an interrupt
                raise KeyboardInterrupt from None
            raise
        finally:
            for h in hooks:
                h.on_epoch_stop()
        if ctrl_c.seen:  # a Ctrl-C that JAX's runtime let pass: an interrupt all the same
            raise KeyboardInterrupt
        dt = time.perf_counter() - t0
        for h in hooks:
            h.after_epoch(ts, params, losses, key)
        for h in reversed(hooks):
            carried = h.carry_out(carried, metrics, record)
        ts = TrainState(params, state, carried, ts.key, e + 1, ts.step + n_steps)
        record.update(step=ts.step, train_loss=float(losses.mean()))
        if accs is not None:  # class labels (fnn.train.step.Loss.is_classification)
            record["train_acc"] = float(accs.mean())
        if has_val:
            val = evaluate(ts.params, ts.state, x_val, y_val)
            record["val_loss"] = float(val["loss"])
            if "accuracy" in val:
                record["val_acc"] = float(val["accuracy"])
        if schedule is not None:
            record["lr"] = float(schedule(ts.step))
        record.update(time_s=dt, steps_per_s=n_steps / dt, examples_per_s=n_steps * batch_size / dt)
        if not np.isfinite(record["train_loss"]):
            raise FloatingPointError(f"training diverged at epoch {e + 1}: the loss is "
                                     f"{record['train_loss']} (try a smaller learning rate; "
                                     "fit(..., check_nans=True) or `train --check-nans` names "
                                     "the gate that made it)")
        history.append(record)
        for h in hooks:
            h.on_epoch_end(ts, record)
    return ts, history
