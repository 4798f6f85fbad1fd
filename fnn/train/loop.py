"""fit: the epoch loop. What a run computes is its TrainSpec (fnn.train.spec), made and checked
once; everything besides training (progress bar, per-epoch log, callback, gradient health, NaN
replay, early stopping, checkpoints) is a hook (fnn.train.hooks).

    spec = fnn.train.TrainSpec(fnn.nn.mlp((100,)), fnn.train.make_optimizer("adam", 1e-3),
                               fnn.train.load_dataset("digits"), batch_size=64)
    ts, history = fnn.train.fit(spec, epochs=20, hooks=[fnn.train.EarlyStopping(3)])
    ts, history = fnn.train.fit(model, opt, data, epochs=20, grad="custom", log=print)  # the same,
                                                             # the spec's fields and hooks by keyword

Epoch e shuffles with fold_in(ts.key, e), so a run resumed from a checkpoint of epoch k (see
fnn.train.checkpoint) continues with exactly the batches and dropout masks it would have had.

The train step is traced once per fit, hooks' in_step included (one jaxpr: its outputs size the
per-step metric buffers, and the compiled loop replays it), and compiled once: an epoch runs as
chunks of steps of that one program (fnn.train.epoch.make_chunk_runner, the chunk's bounds its
arguments), each about `chunk_seconds` long (one step when a step takes longer). Between two
chunks fit updates the progress bar and looks for a Ctrl-C (fnn.train.interrupt): on one it
stops there, hands its hooks the state in the middle of the epoch (TrainState.position,
.partial: what a checkpoint needs to finish the epoch later, bit for bit as in one go) and
raises TrainingInterrupted. XLA running out of memory is reported with the run's sizes
(fnn.train.memory), and a run that cannot fit is refused before its first step.
"""

from __future__ import annotations

import time
from typing import Sequence

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

from fnn.pytrees import path_name
from fnn.runtime import remat_compiler_options
from fnn.train.diagnostics import HealthMonitor
from fnn.train.distributed import agree_stop
from fnn.train.epoch import epoch_batches, make_chunk_runner, make_evaluate
from fnn.train.hooks import Callback, EpochLog, Hook, ProgressBar, steps_inside
from fnn.train.interrupt import StopRequest, TrainingInterrupted, interruptible
from fnn.train.memory import (
    check_fits,
    footprint,
    is_out_of_memory,
    out_of_memory,
    tree_bytes,
    xla_temp_bytes,
)
from fnn.train.nancheck import NanReplay
from fnn.train.spec import TrainSpec
from fnn.train.state import TrainState
from fnn.train.step import uses_remat
from fnn.train.validate import check_finite_state, check_positive_int

CHUNK_SECONDS = 0.05  # target length of one compiled chunk of an epoch (see docs/benchmarks.md)
HOOK_OPTIONS = ("progress", "log", "callback", "diagnostics", "check_nans")  # fit's keywords
# that make hooks (standard_hooks); its other keywords are the TrainSpec's


def fit(
    spec,
    optimizer=None,
    data=None,
    *,
    epochs: int,
    hooks: Sequence[Hook] = (),
    start: TrainState | None = None,
    chunk_seconds: float | None = CHUNK_SECONDS,
    **options,
):
    """Train per `spec` (a fnn.train.TrainSpec) for `epochs` epochs.

    Epochs count in total, counting those of `start`. The epoch records are {epoch, step,
    train_loss, train_acc, val_loss, val_acc, lr, time_s, steps_per_s, examples_per_s,
    compile_s (first epoch of this call), stopped (a hook ended training there: why)} (the
    accuracies only when the labels are class indices).

    fit(model, optimizer, data, epochs=..., **options) is the same with the spec made from
    `options` (batch_size=64, loss, grad="custom", l2, seed, devices, shard, remat, rules,
    eval_batch_size=1000, schedule: TrainSpec's fields) and hooks added in front of `hooks` from
    progress=False, log=None, callback=None, diagnostics=0, check_nans=False (standard_hooks).

    A run whose step cannot fit in the device's memory is refused, and XLA running out of
    memory raises fnn.train.OutOfMemoryError with the run's sizes. With sharded parameters the
    returned TrainState keeps them split (np.asarray or a checkpoint gathers them).
    Several processes (fnn.train.distributed.initialize first, every process calling fit
    alike): each process places its own devices' share of the data, and between two chunks the
    processes agree on whether to stop (any Ctrl-C) and on the chunk's length, so that they all
    run the same steps and stop at the same one (a Ctrl-C during the first compilation waits
    for it); a hook's stop (should_stop) in any process ends the epoch's training in all.

    Args:
        spec: a fnn.train.TrainSpec, or the model (then `optimizer` and `data` follow).
        optimizer: with a model as `spec`: the optax optimizer.
        data: with a model as `spec`: the Dataset.
        epochs: the number of epochs in total (counting those of `start`).
        hooks: fnn.train.hooks.Hook objects (their protocol: fnn.train.hooks).
        start: a TrainState to continue from (resume; also one saved in the middle of an
            epoch), checked against the spec; else one initialized from the spec's seed.
        chunk_seconds: each epoch runs as compiled chunks of about this many seconds (at least
            one step); Ctrl-C stops between two chunks, hooks get on_interrupt(state) (the state
            in the middle of the epoch) and fit raises fnn.train.TrainingInterrupted carrying
            it. None: each epoch in one chunk (a Ctrl-C then waits for the epoch's end).
        **options: with a model as `spec`: TrainSpec's fields and the standard hooks' options
            (above).

    Returns:
        (the final TrainState, the list of epoch records).

    Raises:
        ValueError: `chunk_seconds` is not a finite number >= 0 or None; the inputs do not fit
            (check_fit_inputs, TrainSpec).
        TypeError: a TrainSpec is given with an optimizer, data or options.
        TrainingInterrupted: Ctrl-C (or SIGTERM) stopped training.
        OutOfMemoryError: the run does not fit in the device's memory.
    """
    _check_epochs_and_chunks(epochs, chunk_seconds)
    spec, hooks = _spec_and_hooks(spec, optimizer, data, epochs, hooks, options)
    return _Loop(spec, list(hooks), chunk_seconds).run(start, epochs)


def _check_epochs_and_chunks(epochs, chunk_seconds) -> None:
    """fit's `epochs` (a positive int) and `chunk_seconds` (a finite number >= 0, or None),
    checked: ValueError naming the one that is not."""
    check_positive_int("epochs", epochs)
    if chunk_seconds is not None and not (
        isinstance(chunk_seconds, (int, float)) and 0 <= chunk_seconds < float("inf")
    ):
        raise ValueError(
            f"chunk_seconds must be a finite number >= 0 or None, got {chunk_seconds!r}"
        )


def _spec_and_hooks(spec, optimizer, data, epochs: int, hooks, options: dict):
    """fit's (TrainSpec, hooks): `spec` as it is, or made from the model `spec`, `optimizer`,
    `data` and the spec's fields in `options`, the standard hooks of the others in front of
    `hooks`."""
    if isinstance(spec, TrainSpec):
        if optimizer is not None or data is not None or options:
            raise TypeError(
                "fit(spec, ...) takes epochs, hooks, start and chunk_seconds; the "
                "model, optimizer, data and options are the spec's"
            )
        return spec, hooks
    made = {k: options.pop(k) for k in HOOK_OPTIONS if k in options}
    return (TrainSpec(spec, optimizer, data, **options), [*standard_hooks(epochs, **made), *hooks])


def standard_hooks(
    epochs: int,
    *,
    progress: bool = False,
    log=None,
    callback=None,
    diagnostics: int = 0,
    check_nans: bool = False,
) -> list[Hook]:
    """The hooks of fit's keywords: gradient health every `diagnostics` steps (HealthMonitor),
    the NaN replay (check_nans), a progress bar (on a terminal), the per-epoch log(line), and
    callback(ts, record) after each epoch."""
    return [
        *([HealthMonitor(diagnostics)] if diagnostics else []),
        *([NanReplay()] if check_nans else []),
        ProgressBar(epochs, progress),
        *([EpochLog(log, epochs)] if log is not None else []),
        *([Callback(callback)] if callback is not None else []),
    ]


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


def loop_step(spec: TrainSpec, hooks: Sequence[Hook]):
    """step(carry, batch, key) -> (carry, metrics) with carry = (params, state, opt_state,
    slots): the spec's train step, then each hook's in_step, its value in slots[hook.slot]
    and its metrics beside the step's; the batch split and the parameters kept as placed on
    the spec's mesh."""
    train, dp = spec.train_step(), spec.dp
    watching = [h for h in hooks if steps_inside(h)]

    def step(carry, batch, key):
        params, state, opt_state, slots = carry
        if dp is not None:
            batch = jax.lax.with_sharding_constraint(batch, dp.batch)
        *after, metrics = train(params, state, opt_state, batch, key)
        slots = dict(slots)
        for h in watching:
            value, more = h.in_step(
                slots.get(h.slot), (params, state, opt_state), tuple(after), batch, key
            )
            if h.slot is not None:
                slots[h.slot] = value
            clash = sorted(set(more) & set(metrics))
            if clash:
                raise ValueError(
                    f"{type(h).__name__}.in_step: its metrics {clash} clash with "
                    "the step's or another hook's"
                )
            metrics = {**metrics, **more}
        if dp is not None:
            after = dp.constrain_carry(*after)
        return (*after, slots), metrics

    return step


def trace_once(step, carry, batch, key):
    """(the step replayed from its one trace, its outputs' shapes): `step` traced to a jaxpr on
    the shapes of (carry, batch, key), and a function evaluating that jaxpr on values of those
    shapes (what the compiled loop runs: the step's Python, fnn.grad's tracing included, is
    not run again)."""
    closed, out_shape = jax.make_jaxpr(step, return_shape=True)(carry, batch, key)
    out_tree = jax.tree_util.tree_structure(out_shape)
    run = jax.extend.core.jaxpr_as_fun(closed)

    def replay(carry, batch, key):
        out = run(*jax.tree_util.tree_leaves((carry, batch, key)))
        return jax.tree_util.tree_unflatten(out_tree, out)

    return replay, out_shape


class _Loop:
    """fit's epochs, and what it makes once for them: the data on the device, the step traced
    once and compiled once, the evaluation."""

    def __init__(self, spec: TrainSpec, hooks: list[Hook], chunk_seconds):
        self.spec, self.hooks = spec, hooks
        self.listeners = [h for h in hooks if h.progress]
        self.slotted = [h for h in hooks if h.slot is not None]
        names = [h.slot for h in self.slotted]
        if len(set(names)) < len(names):
            raise ValueError(f"hooks share a carry slot name: {sorted(names)}")
        self.chunks = _Chunks(chunk_seconds)
        self.compiled = self.fp = self.step = None
        self.place = jax.device_put if spec.dp is None else spec.dp.replicate

    def run(self, start: TrainState | None, epochs: int):
        spec = self.spec
        if start is not None:
            spec.check_start(start)
        ts = start if start is not None else spec.init_state()
        check_finite_state(ts, "start" if start is not None else "the initial parameters")
        for h in self.hooks:
            h.on_fit_start(spec, ts)
        with StopRequest() as self.stop:
            try:
                if spec.dp is not None:  # params, opt_state: per dp.param_sharding
                    ts = spec.dp.place_train_state(ts)
                self._place_data(ts)
                return self._epochs(ts, epochs)
            except jax.errors.JaxRuntimeError as e:
                if is_out_of_memory(e):
                    raise out_of_memory(e, self.fp, "while training") from None
                raise

    def _place_data(self, ts: TrainState) -> None:
        """The data on the device(s), the epochs' batch draw and evaluation, and the run's
        memory footprint (ts placed as it trains)."""
        spec, data = self.spec, self.spec.data
        self.x, self.y = self.place((data.x_train, data.y_train))  # the loop splits each batch
        self.val = self.place((data.x_val, data.y_val)) if spec.has_validation else None
        n, bs = len(data.x_train), spec.batch_size
        self.draw = jax.jit(lambda key: epoch_batches(key, n, bs, spec.n_steps))
        self.evaluate = make_evaluate(spec.model, loss=spec.loss, batch_size=spec.eval_batch_size)
        self.fp = footprint(
            spec.model,
            ts,
            data.input_shape,
            bs,
            tree_bytes((data.x_train, data.y_train, data.x_val, data.y_val)),
            devices=1 if spec.dp is None else spec.dp.size,
        )

    def _epochs(self, ts: TrainState, epochs: int):
        history = []
        for e in range(ts.epoch, epochs):
            ts, record = self._epoch(ts, e)
            history.append(record)
            if record.get("stopped"):
                break
            if e + 1 < epochs and agree_stop(self.stop.requested)[0]:  # a Ctrl-C at its end
                self.stop.request()
                self._interrupted(ts)
        return ts, history

    def _epoch(self, ts: TrainState, e: int):
        """Epoch e + 1 from ts (from ts.position when saved in the middle of it)."""
        spec, n = self.spec, self.spec.n_steps
        key = jax.random.fold_in(ts.key, e)
        order, keys = self.draw(key)
        p0 = ts.position
        if p0 and not np.array_equal(np.asarray(order), np.asarray(ts.partial["order"])):
            raise ValueError(
                f"start: saved at step {p0} of epoch {e + 1}, but that epoch's batch "
                "order is not the one it was drawn with: the training data "
                "changed since the state was saved (other files, --limit or "
                "--val-fraction?)"
            )
        record = {"epoch": e + 1}
        carry = (
            ts.params,
            ts.state,
            ts.opt_state,
            {h.slot: h.init_carry(ts) for h in self.slotted},
        )
        if self.step is None:  # the one trace of the step: it sizes the metric buffers
            self.step, out = trace_once(
                loop_step(spec, self.hooks),
                carry,
                self._batch(),
                jax.ShapeDtypeStruct(keys.shape[1:], keys.dtype),
            )
            self.metrics = out[1]
        buffers = _fill(
            self.place(
                jax.tree_util.tree_map(lambda s: jnp.zeros((n, *s.shape), s.dtype), self.metrics)
            ),
            ts.partial,
            p0,
        )
        if self.compiled is None:
            record["compile_s"] = self._compile(ts, carry, buffers, order, keys)
        for h in self.hooks:
            h.on_epoch_start(ts, n)
        if p0:
            for h in self.listeners:
                h.on_progress(p0)
        carry, buffers, done, run_s = self._chunks(carry, buffers, order, keys, p0)
        if done < n:  # stopped by a Ctrl-C in the middle of the epoch
            self._interrupted(self._midway(ts, carry, buffers, order, done))
        return self._finish(ts, key, carry, buffers, run_s, record)

    def _batch(self):
        bs = self.spec.batch_size
        return tuple(jax.ShapeDtypeStruct((bs, *a.shape[1:]), a.dtype) for a in (self.x, self.y))

    def _compile(self, ts, carry, buffers, order, keys) -> float:
        """Compile the chunk program (the seconds it took); a Ctrl-C while XLA compiles stops
        here, where the epoch stands."""
        spec, t0 = self.spec, time.perf_counter()
        donate = all(h.donate for h in self.hooks)
        dp = spec.dp  # sharded parameters: out of the program as they came in
        finish = (lambda c: (*dp.constrain_carry(*c[:3]), c[3])) if dp is not None else None
        runner = make_chunk_runner(self.step, donate=donate, finish=finish)
        zero = jnp.int32(0)
        lowered = runner.lower(carry, buffers, self.x, self.y, order, keys, zero, zero)
        options = remat_compiler_options() if spec.remat or uses_remat(spec.model) else None
        if spec.processes == 1:
            tick = (
                {"tick": lambda s: [h.on_compiling(s) for h in self.listeners]}
                if self.listeners
                else {}
            )
            ready, self.compiled = interruptible(
                lambda: lowered.compile(compiler_options=options), self.stop, **tick
            )
        else:  # every process compiles; a stop request waits for the first chunk's start
            ready, self.compiled = True, lowered.compile(compiler_options=options)
        if not ready:  # Ctrl-C while XLA compiles
            self._interrupted(self._midway(ts, carry, buffers, order, ts.position))
        self.fp.xla_temp = xla_temp_bytes(self.compiled)
        check_fits(self.fp, min({s.device for s in self.x.addressable_shards}, key=lambda d: d.id))
        return time.perf_counter() - t0

    def _chunks(self, carry, buffers, order, keys, done: int):
        """Run the epoch's steps from `done` in chunks until it is over or a stop is asked for:
        (carry, buffers, steps done, seconds)."""
        n, run_s = self.spec.n_steps, 0.0
        try:
            while done < n:
                # several processes: all stop at the same chunk, all run the same steps
                stopping, k = agree_stop(self.stop.requested, self.chunks.size(n - done))
                if stopping:
                    self.stop.request()
                    break
                t0 = time.perf_counter()
                carry, buffers = self.compiled(
                    carry,
                    buffers,
                    self.x,
                    self.y,
                    order,
                    keys,
                    jnp.int32(done),
                    jnp.int32(done + k),
                )
                jax.block_until_ready(buffers)
                dt = time.perf_counter() - t0
                run_s += dt
                self.chunks.measured(k, dt)
                done += k
                for h in self.listeners:
                    h.on_progress(done)
        finally:
            for h in self.hooks:
                h.on_epoch_stop()
        return carry, buffers, done, run_s

    def _finish(self, ts, key, carry, buffers, run_s: float, record: dict):
        """The epoch is done: its record, the hooks' say (a stop), the new TrainState."""
        spec, p0 = self.spec, ts.position
        params, state, opt_state, _ = carry
        metrics = jax.device_get(buffers)
        losses = np.asarray(metrics["loss"])
        for h in self.hooks:
            h.after_epoch(ts, params, losses, key)
        ran = spec.n_steps - p0
        ts = TrainState(params, state, opt_state, ts.key, ts.epoch + 1, ts.step + ran)
        record.update(step=ts.step, train_loss=float(losses.mean()))
        if "accuracy" in metrics:  # class labels (fnn.train.step.Loss.is_classification)
            record["train_acc"] = float(np.asarray(metrics["accuracy"]).mean())
        if self.val is not None:
            val = self.evaluate(ts.params, ts.state, *self.val)
            record["val_loss"] = float(val["loss"])
            if "accuracy" in val:
                record["val_acc"] = float(val["accuracy"])
        if spec.schedule is not None:
            record["lr"] = float(spec.schedule(ts.step))
        record.update(
            time_s=run_s,
            steps_per_s=ran / run_s if run_s else 0.0,
            examples_per_s=ran * spec.batch_size / run_s if run_s else 0.0,
        )
        for h in self.hooks:
            h.on_metrics(metrics, record)
        if not np.isfinite(record["train_loss"]):
            raise FloatingPointError(
                f"training diverged at epoch {ts.epoch}: the loss is "
                f"{record['train_loss']} (try a smaller learning rate; "
                "fit(..., check_nans=True) or `train --check-nans` names "
                "the gate that made it)"
            )
        reasons = [r for r in (h.should_stop(ts, record) for h in self.hooks) if r]
        if agree_stop(bool(reasons))[0]:  # several processes: one's stop is every one's
            record["stopped"] = "; ".join(reasons) or "another process's hook ended training"
        for h in self.hooks:
            h.on_epoch_end(ts, record)
        return ts, record

    def _midway(self, ts, carry, buffers, order, done: int) -> TrainState:
        """The TrainState at step `done` of epoch ts.epoch + 1 (its partial metrics kept)."""
        params, state, opt_state, _ = carry
        partial = None
        if done:
            metrics = jax.device_get(buffers)
            partial = {
                "order": np.asarray(order),
                "metrics": {k: np.asarray(v)[:done] for k, v in _flat(metrics).items()},
            }
        return TrainState(
            params, state, opt_state, ts.key, ts.epoch, ts.step + done - ts.position, done, partial
        )

    def _interrupted(self, ts: TrainState):
        """Hand the hooks the state training stopped at and raise TrainingInterrupted."""
        for h in self.hooks:
            h.on_interrupt(ts)
        where = (
            f"at step {ts.position} of epoch {ts.epoch + 1}"
            if ts.position
            else f"after epoch {ts.epoch}"
        )
        raise TrainingInterrupted(
            f"training interrupted {where} (optimizer step {ts.step})",
            ts,
            self.stop.waited(),
            self.stop.signum,
        )
