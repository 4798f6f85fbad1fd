"""fit: the epoch loop. Everything besides training (progress bar, per-epoch log, callback,
gradient health, NaN replay, checkpoints) is a hook (fnn.train.hooks).

    model = fnn.nn.mlp((100,))
    data = fnn.train.load_dataset("digits")
    opt = fnn.train.make_optimizer("adam", 1e-3)
    ts, history = fnn.train.fit(model, opt, data, epochs=20, grad="custom")

Epoch e shuffles with fold_in(ts.key, e), so a run resumed from a checkpoint of epoch k (see
fnn.train.checkpoint) continues with exactly the batches and dropout masks it would have had.

An epoch runs as compiled chunks of steps (fnn.train.epoch.make_epoch_runner: one program,
the chunk's bounds its arguments), each about `chunk_seconds` long (one step when a step takes
longer). Between two chunks fit updates the progress bar and looks for a Ctrl-C
(fnn.train.interrupt): on one it stops there, hands its hooks the state in the middle of the
epoch (TrainState.position, .partial: what a checkpoint needs to finish the epoch later,
bit for bit as in one go) and raises TrainingInterrupted. XLA running out of memory is
reported with the run's sizes (fnn.train.memory), and a run that cannot fit is refused before
its first step.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fnn.pytrees import path_name
from fnn.runtime import remat_compiler_options
from fnn.train.diagnostics import HealthMonitor
from fnn.train.distributed import agree_stop
from fnn.train.epoch import (epoch_batches, make_epoch_runner, make_evaluate, metrics_buffers,
                             steps_per_epoch)
from fnn.train.hooks import Callback, EpochLog, Hook, ProgressBar
from fnn.train.interrupt import StopRequest, TrainingInterrupted, interruptible
from fnn.train.memory import (check_fits, footprint, init_out_of_memory, is_out_of_memory,
                               out_of_memory, tree_bytes, xla_temp_bytes)
from fnn.train.nancheck import NanReplay
from fnn.train.parallel import data_parallel
from fnn.train.state import TrainState, init_train_state
from fnn.train.step import make_train_step, uses_remat
from fnn.train.validate import check_finite_state, check_fit_inputs

CHUNK_SECONDS = 0.05  # target length of one compiled chunk of an epoch (see docs/benchmarks.md)


class _Chunks:
    """How many steps the next chunk runs: about `seconds` worth at the measured step time
    (1 step when a step takes longer, or before anything is measured); None: a whole epoch."""

    def __init__(self, seconds: float | None):
        self.seconds, self.step_s = seconds, None

    def size(self, remaining: int) -> int:
        if self.seconds is None:
            return remaining
        if self.step_s is None:
            return 1
        return max(1, min(remaining, int(self.seconds / self.step_s)))

    def measured(self, steps: int, dt: float) -> None:
        per = dt / steps
        self.step_s = per if self.step_s is None else 0.5 * self.step_s + 0.5 * per


def _flat(tree) -> dict:
    return {path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _fill(buffers, partial: dict | None, position: int):
    """The epoch's metric buffers with the first `position` steps taken from a mid-epoch
    state's partial metrics (by name; a metric it lacks stays zero)."""
    if not position or not partial:
        return buffers
    saved = partial.get("metrics", {})
    paths, treedef = jax.tree_util.tree_flatten_with_path(buffers)
    leaves = []
    for path, buf in paths:
        got = saved.get(path_name(path))
        if got is not None and tuple(np.shape(got)) == (position, *buf.shape[1:]):
            buf = buf.at[:position].set(jnp.asarray(got, buf.dtype))
        leaves.append(buf)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def fit(model, optimizer, data, *, epochs: int, batch_size: int = 64, grad: str = "custom",
        loss="softmax_cross_entropy", l2: float = 0.0, seed: int = 0,
        start: TrainState | None = None, schedule: Callable | None = None,
        callback: Callable | None = None, progress: bool = False, log: Callable | None = None,
        eval_batch_size: int = 1000, diagnostics: int = 0, check_nans: bool = False,
        devices=None, hooks: Sequence[Hook] = (), rules=None,
        chunk_seconds: float | None = CHUNK_SECONDS, shard: str | None = None,
        remat=False):
    """Train `model` on data.x_train for `epochs` epochs (in total, counting those of `start`).

    data: a Dataset (or anything with x_train, y_train, x_val, y_val arrays and input_shape;
    x_test, y_test are checked too when present).
    start: a TrainState to continue from (resume; also one saved in the middle of an epoch);
    else initialized from `seed` (an int in [0, 2**64-1]).
    schedule: the learning-rate schedule, only to report `lr` per epoch.
    callback(ts, record) runs after each epoch (checkpointing, logging); log(line) prints the
    per-epoch line (None: silent). Returns the final TrainState and the list of epoch records
    {epoch, step, train_loss, train_acc, val_loss, val_acc, lr, time_s, steps_per_s,
    examples_per_s, compile_s (first epoch of this call)} (the accuracies only when the labels
    are class indices). loss: a name, a fnn.train.Loss or a function loss(scores, labels) ->
    scalar (fnn.train.step.get_loss); labels of any shape it accepts (per-token labels).
    diagnostics=N > 0 measures gradient health every N steps inside the compiled epoch and adds
    its rows to the record as "diagnostics" (see fnn.train.diagnostics).
    check_nans: on a non-finite loss, parameter or model state (BatchNorm statistics), replay
    the step eagerly under fnn.debug_nans and raise a NanOriginError naming the gate
    (fnn.train.nancheck). devices: data parallel over N devices (or a device list or Mesh),
    the batch split, parameters replicated (fnn.train.parallel).
    hooks: more fnn.train.hooks.Hook objects, called after the ones these options make
    (diagnostics, check_nans, progress, log, callback, in that order).
    rules: backward-rule overrides for grad="custom" ({gate: rule}, fnn.grad's rules=; from
    text specs: fnn.train.rules.make_rules); the gradient health (diagnostics) then also
    reports each layer's alignment angle between the gradient they give and the true one.
    chunk_seconds: each epoch runs as compiled chunks of about this many seconds (at least one
    step); Ctrl-C stops between two chunks, hooks get on_interrupt(state) (the state in the
    middle of the epoch) and fit raises fnn.train.TrainingInterrupted (a KeyboardInterrupt)
    carrying it. None: each epoch in one chunk (a Ctrl-C then waits for the epoch's end).
    The data, labels, counts and `start` are checked against the model and optimizer first
    (fnn.train.validate); a run whose step cannot fit in the device's memory is refused, and
    XLA running out of memory raises fnn.train.OutOfMemoryError with the run's sizes.
    shard="params": the large parameters and their optimizer state split across the devices
    too, not replicated (FSDP; fnn.train.parallel); devices=None then means all of them. The
    returned TrainState keeps them split (np.asarray or a checkpoint gathers them).
    remat: recompute the activations in the backward instead of keeping them (less memory,
    about one more forward per step; make_train_step's remat, fnn.train.step.remat_model).
    Several processes (fnn.train.distributed.initialize first, every process calling fit
    alike): devices=None means every device of every process, each process places its own
    devices' share of the data, and between two chunks the processes agree on whether to stop
    (any Ctrl-C) and on the chunk's length, so that they all run the same steps and stop at the
    same one (a Ctrl-C during the first compilation waits for it).
    """
    if chunk_seconds is not None and not (isinstance(chunk_seconds, (int, float))
                                          and 0 <= chunk_seconds < float("inf")):
        raise ValueError(f"chunk_seconds must be a finite number >= 0 or None, "
                         f"got {chunk_seconds!r}")
    check_fit_inputs(model, data, loss=loss, start=start, optimizer=optimizer,
                     batch_size=batch_size, eval_batch_size=eval_batch_size, epochs=epochs)
    if devices is None and jax.process_count() > 1:
        devices = jax.device_count()  # several processes: every device of every process
    dp = data_parallel(devices, shard)
    try:
        ts = start if start is not None else init_train_state(
            model, optimizer, data.input_shape, seed, place=dp)
    except jax.errors.JaxRuntimeError as e:
        if is_out_of_memory(e):
            raise init_out_of_memory(e, model, optimizer, data.input_shape,
                                     "while initializing the parameters") from None
        raise
    check_finite_state(ts, "start" if start is not None else "the initial parameters")
    hooks = [*([HealthMonitor(model, diagnostics, loss=loss, l2=l2, rules=rules)]
               if diagnostics else []),
             *([NanReplay(model, optimizer, data.x_train, data.y_train, batch_size=batch_size,
                          loss=loss, grad=grad, l2=l2, rules=rules)] if check_nans else []),
             ProgressBar(epochs, progress),
             *([EpochLog(log, epochs)] if log is not None else []),
             *([Callback(callback)] if callback is not None else []), *hooks]
    has_val = data.x_val is not None and len(data.x_val) > 0
    n = len(data.x_train)
    n_steps = steps_per_epoch(n, batch_size)
    place = jax.device_put if dp is None else dp.replicate  # the runner splits each batch
    fp = None
    with StopRequest() as stop:
        try:
            x, y = place((data.x_train, data.y_train))
            x_val, y_val = place((data.x_val, data.y_val)) if has_val else (None, None)
            if dp is not None:
                dp.check_batch_size(batch_size)
                ts = dp.place_train_state(ts)  # params, opt_state: per dp.param_sharding
            step = make_train_step(model, optimizer, loss=loss, grad=grad, l2=l2, jit=False,
                                   rules=rules, remat=remat)
            for h in hooks:
                step = h.wrap_step(step)
            runner = make_epoch_runner(step, donate=all(h.donate for h in hooks), devices=dp)
            draw = jax.jit(lambda key: epoch_batches(key, n, batch_size))
            evaluate = make_evaluate(model, loss=loss, batch_size=eval_batch_size)
            fp = footprint(model, ts, data.input_shape, batch_size,
                           tree_bytes((data.x_train, data.y_train, data.x_val, data.y_val)),
                           devices=1 if dp is None else dp.size)
            return _epochs(hooks, ts, epochs, n_steps, batch_size, x, y, x_val, y_val, step,
                           runner, draw, evaluate, place, schedule, stop, chunk_seconds, fp,
                           remat_compiler_options() if remat or uses_remat(model) else None)
        except jax.errors.JaxRuntimeError as e:
            if is_out_of_memory(e):
                raise out_of_memory(e, fp, "while training") from None
            raise


def _epochs(hooks, ts, epochs, n_steps, batch_size, x, y, x_val, y_val, step, runner, draw,
            evaluate, place, schedule, stop, chunk_seconds, fp, compiler_options=None):
    """fit's loop over the epochs (fit has made everything it needs; compiler_options: XLA's
    options for the epoch's program, those remat needs)."""
    has_val = x_val is not None
    chunks = _Chunks(chunk_seconds)
    listeners = [h for h in hooks if h.progress]
    compiled, history = None, []
    for e in range(ts.epoch, epochs):
        key = jax.random.fold_in(ts.key, e)
        order, keys = draw(key)
        p0 = ts.position
        if p0 and not np.array_equal(np.asarray(order), np.asarray(ts.partial["order"])):
            raise ValueError(f"start: saved at step {p0} of epoch {e + 1}, but that epoch's batch "
                             "order is not the one it was drawn with: the training data "
                             "changed since the state was saved (other files, --limit or "
                             "--val-fraction?)")
        record = {"epoch": e + 1}
        carried = ts.opt_state
        for h in hooks:
            carried = h.carry_in(carried, ts)
        buffers = place(metrics_buffers(step, ts.params, ts.state, carried, x, y, n_steps,
                                        batch_size))
        buffers = _fill(buffers, ts.partial, p0)
        zero = jnp.int32(0)
        if compiled is None:
            t0 = time.perf_counter()
            lowered = runner.lower(ts.params, ts.state, carried, buffers, x, y, order, keys,
                                   zero, zero)
            if jax.process_count() == 1:
                ready, compiled = interruptible(
                    lambda: lowered.compile(compiler_options=compiler_options), stop,
                    tick=lambda s: [h.on_compiling(s) for h in listeners])
            else:  # every process compiles; a stop request waits for the first chunk's start
                ready, compiled = True, lowered.compile(compiler_options=compiler_options)
            if not ready:  # Ctrl-C while XLA compiles: stop now, where the epoch stands
                _interrupted(hooks, ts, e, p0, p0, ts.params, ts.state, carried, buffers,
                             order, stop)
            record["compile_s"] = time.perf_counter() - t0
            fp.xla_temp = xla_temp_bytes(compiled)
            check_fits(fp, min({s.device for s in x.addressable_shards}, key=lambda d: d.id))
        for h in hooks:
            h.on_epoch_start(ts, n_steps)
        if p0:
            for h in listeners:
                h.on_progress(p0)
        params, state, done, run_s = ts.params, ts.state, p0, 0.0
        try:
            while done < n_steps:
                # several processes: all stop at the same chunk, all run the same steps
                stopping, k = agree_stop(stop.requested, chunks.size(n_steps - done))
                if stopping:
                    stop.request()
                    break
                t0 = time.perf_counter()
                params, state, carried, buffers = compiled(
                    params, state, carried, buffers, x, y, order, keys, jnp.int32(done),
                    jnp.int32(done + k))
                jax.block_until_ready(buffers)
                dt = time.perf_counter() - t0
                run_s += dt
                chunks.measured(k, dt)
                done += k
                for h in listeners:
                    h.on_progress(done)
        finally:
            for h in hooks:
                h.on_epoch_stop()
        if done < n_steps:  # stopped by a Ctrl-C in the middle of the epoch
            _interrupted(hooks, ts, e, p0, done, params, state, carried, buffers, order, stop)
        metrics = jax.device_get(buffers)
        losses = np.asarray(metrics["loss"])
        for h in hooks:
            h.after_epoch(ts, params, losses, key)
        for h in reversed(hooks):
            carried = h.carry_out(carried, metrics, record)
        ts = TrainState(params, state, carried, ts.key, e + 1, ts.step + n_steps - p0)
        record.update(step=ts.step, train_loss=float(losses.mean()))
        if "accuracy" in metrics:  # class labels (fnn.train.step.Loss.is_classification)
            record["train_acc"] = float(np.asarray(metrics["accuracy"]).mean())
        if has_val:
            val = evaluate(ts.params, ts.state, x_val, y_val)
            record["val_loss"] = float(val["loss"])
            if "accuracy" in val:
                record["val_acc"] = float(val["accuracy"])
        if schedule is not None:
            record["lr"] = float(schedule(ts.step))
        ran = n_steps - p0
        record.update(time_s=run_s, steps_per_s=ran / run_s if run_s else 0.0,
                      examples_per_s=ran * batch_size / run_s if run_s else 0.0)
        if not np.isfinite(record["train_loss"]):
            raise FloatingPointError(f"training diverged at epoch {e + 1}: the loss is "
                                     f"{record['train_loss']} (try a smaller learning rate; "
                                     "fit(..., check_nans=True) or `train --check-nans` names "
                                     "the gate that made it)")
        history.append(record)
        for h in hooks:
            h.on_epoch_end(ts, record)
        if e + 1 < epochs and agree_stop(stop.requested)[0]:  # a Ctrl-C at the epoch's end
            stop.request()
            _interrupted(hooks, ts, e + 1, 0, 0, ts.params, ts.state, ts.opt_state, None, None,
                         stop, carried_out=True)
    return ts, history


def _interrupted(hooks, ts, epoch, p0, done, params, state, carried, buffers, order, stop,
                 carried_out=False):
    """Hand the hooks the state at step `done` of epoch `epoch + 1` and raise
    TrainingInterrupted."""
    if not carried_out:
        scratch = {"epoch": epoch + 1}
        metrics = jax.device_get(buffers)
        for h in reversed(hooks):
            carried = h.carry_out(carried, metrics, scratch)
        partial = None
        if done:
            partial = {"order": np.asarray(order),
                       "metrics": {k: np.asarray(v)[:done] for k, v in _flat(metrics).items()}}
        ts = TrainState(params, state, carried, ts.key, epoch, ts.step + done - p0, done,
                        partial)
    for h in hooks:
        h.on_interrupt(ts)
    where = (f"at step {ts.position} of epoch {ts.epoch + 1}" if ts.position
             else f"after epoch {ts.epoch}")
    raise TrainingInterrupted(f"training interrupted {where} (optimizer step {ts.step})", ts,
                              stop.waited(), stop.signum)
