"""fit: the epoch loop, with validation, timing and an optional progress bar per epoch.

    model = fnn.nn.mlp((100,))
    data = fnn.train.load_dataset("digits")
    opt = fnn.train.make_optimizer("adam", 1e-3)
    ts, history = fnn.train.fit(model, opt, data, epochs=20, grad="custom")

Epoch e shuffles with fold_in(ts.key, e), so a run resumed from a checkpoint of epoch k (see
fnn.train.checkpoint) continues with exactly the batches and dropout masks it would have had.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

import jax
import numpy as np

from fnn.train.epoch import make_evaluate, make_train_epoch, steps_per_epoch
from fnn.train.nancheck import epoch_is_finite, find_nan_origin
from fnn.train.parallel import data_parallel
from fnn.train.state import TrainState, init_train_state
from fnn.train.step import make_train_step
from fnn.train.validate import check_fit_inputs


class _Bar:
    """A tqdm progress bar per epoch, fed from inside the compiled epoch."""

    def __init__(self, enabled: bool):
        # only on a terminal: elsewhere (logs, pipes) the per-epoch lines say it all
        self.enabled, self.bar = enabled and sys.stderr.isatty(), None

    def start(self, total: int, desc: str):
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)

    def update(self, done):
        if self.bar is not None:
            self.bar.update(int(done) - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def format_record(r: dict, epochs: int) -> str:
    """The per-epoch line: train/val loss and accuracy, time and speed."""
    line = (f"epoch {r['epoch']:>{len(str(epochs))}}/{epochs}  train loss {r['train_loss']:.4f} "
            f"acc {r['train_acc']:.4f}")
    if "val_loss" in r:
        line += f"  val loss {r['val_loss']:.4f} acc {r['val_acc']:.4f}"
    speed = r["steps_per_s"]
    line += f"  {r['time_s']:.2f}s ({speed:,.0f} steps/s)" if speed >= 10 else \
        f"  {r['time_s']:.2f}s ({speed:.2f} steps/s)"
    if "compile_s" in r:
        line += f"  compile {r['compile_s']:.2f}s"
    return line


def fit(model, optimizer, data, *, epochs: int, batch_size: int = 64, grad: str = "custom",
        loss: str = "softmax_cross_entropy", l2: float = 0.0, seed: int = 0,
        start: TrainState | None = None, schedule: Callable | None = None,
        callback: Callable | None = None, progress: bool = False, log: Callable | None = None,
        eval_batch_size: int = 1000, diagnostics: int = 0, check_nans: bool = False,
        devices=None):
    """Train `model` on data.x_train for `epochs` epochs (in total, counting those of `start`).

    data: a Dataset (or anything with x_train, y_train, x_val, y_val arrays and input_shape).
    start: a TrainState to continue from (resume); else initialized from `seed`.
    schedule: the learning-rate schedule, only to report `lr` per epoch.
    callback(ts, record) runs after each epoch (checkpointing, logging); log(line) prints the
    per-epoch line (None: silent). Returns the final TrainState and the list of epoch records
    {epoch, step, train_loss, train_acc, val_loss, val_acc, lr, time_s, steps_per_s,
    examples_per_s, compile_s (first epoch of this call)}.
    diagnostics=N > 0 measures gradient health every N steps inside the compiled epoch and adds
    its rows to the record as "diagnostics" (see fnn.train.diagnostics).
    check_nans: on a non-finite loss, replay the step eagerly under fnn.debug_nans and raise a
    NanOriginError naming the gate (fnn.train.nancheck). devices: data parallel over N devices
    (or a device list or Mesh), the batch split, parameters replicated (fnn.train.parallel).
    The data, labels and `start` are checked against the model first (fnn.train.validate).
    """
    check_fit_inputs(model, data, loss=loss, start=start)
    ts = start if start is not None else init_train_state(model, optimizer, data.input_shape, seed)
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
    bar = _Bar(progress)
    step = make_train_step(model, optimizer, loss=loss, grad=grad, l2=l2, jit=False)
    monitor = None
    if diagnostics:  # the step counter rides in the scan with opt_state: (opt_state, count)
        from fnn.train.diagnostics import Monitor

        monitor = Monitor(model, diagnostics, loss=loss, l2=l2)
        step = monitor.wrap(step)
    epoch_fn = make_train_epoch(step, batch_size=batch_size,
                                progress=bar.update if bar.enabled else None, devices=dp,
                                donate=not check_nans)  # check_nans keeps the epoch's inputs
    evaluate = make_evaluate(model, loss=loss, batch_size=eval_batch_size)
    compiled, history = None, []
    for e in range(ts.epoch, epochs):
        key = jax.random.fold_in(ts.key, e)
        record = {"epoch": e + 1}
        opt_in = monitor.carry_in(ts.opt_state, ts.step) if monitor else ts.opt_state
        if compiled is None:
            t0 = time.perf_counter()
            compiled = epoch_fn.lower(ts.params, ts.state, opt_in, x, y, key).compile()
            record["compile_s"] = time.perf_counter() - t0
        bar.start(n_steps, f"epoch {e + 1}/{epochs}")
        before = (ts.params, ts.state, ts.opt_state) if check_nans else None
        t0 = time.perf_counter()
        try:
            params, state, opt_state, metrics = compiled(ts.params, ts.state, opt_in, x, y, key)
            losses, accs = np.asarray(metrics["loss"]), np.asarray(metrics["accuracy"])
        except Exception as err:
            # Ctrl-C while the progress callback runs reaches us wrapped in a JAX runtime error
            if "KeyboardInterrupt" in str(err):
                raise KeyboardInterrupt from None
            raise
        finally:
            bar.close()
        dt = time.perf_counter() - t0
        if check_nans and not epoch_is_finite(losses, params):
            raise find_nan_origin(model, optimizer, before, data.x_train, data.y_train, key,
                                  batch_size=batch_size, losses=losses, epoch=e + 1,
                                  step0=ts.step, loss=loss, grad=grad, l2=l2)
        if monitor:
            opt_state, record["diagnostics"] = monitor.carry_out(opt_state, metrics, e + 1)
        ts = TrainState(params, state, opt_state, ts.key, e + 1, ts.step + n_steps)
        record.update(step=ts.step, train_loss=float(losses.mean()), train_acc=float(accs.mean()))
        if has_val:
            val = evaluate(ts.params, ts.state, x_val, y_val)
            record.update(val_loss=float(val["loss"]), val_acc=float(val["accuracy"]))
        if schedule is not None:
            record["lr"] = float(schedule(ts.step))
        record.update(time_s=dt, steps_per_s=n_steps / dt, examples_per_s=n_steps * batch_size / dt)
        if not np.isfinite(record["train_loss"]):
            raise FloatingPointError(f"training diverged at epoch {e + 1}: the loss is "
                                     f"{record['train_loss']} (try a smaller learning rate; "
                                     "fit(..., check_nans=True) or `train --check-nans` names "
                                     "the gate that made it)")
        history.append(record)
        if log is not None:
            log(format_record(record, epochs))  # the epoch's bar is closed by now
        if callback is not None:
            callback(ts, record)
    return ts, history
