"""A whole epoch as one compiled program, and evaluation over a whole dataset.

The training arrays stay on the device; each epoch draws a permutation from its PRNG key, cuts
it into batches (dropping the last partial batch) and runs the step over them with `lax.scan`,
so a small model costs one dispatch per epoch instead of one per step.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from fnn.train.parallel import constrain_batch, data_parallel
from fnn.train.step import get_loss, per_example_loss


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Number of full batches in n examples.

    Args:
        n: the number of examples.
        batch_size: the batch size.

    Returns:
        n // batch_size.

    Raises:
        ValueError: there is no full batch.
    """
    if batch_size < 1 or n < batch_size:
        raise ValueError(
            f"batch size {batch_size} does not fit in the {n} training examples: "
            "use a batch size between 1 and the training set size"
        )
    return n // batch_size


def epoch_batches(key, n: int, batch_size: int, n_steps: int | None = None):
    """(order (steps, batch_size) example indices, keys (steps,) step PRNG keys) of an epoch of
    n examples: a permutation drawn from `key`, the last partial batch dropped. `n_steps`:
    steps_per_epoch(n, batch_size), where the caller has it already (a TrainSpec's)."""
    n_steps = steps_per_epoch(n, batch_size) if n_steps is None else n_steps
    perm_key, step_key = jax.random.split(key)
    order = jax.random.permutation(perm_key, n)[: n_steps * batch_size]
    return order.reshape(n_steps, batch_size), jax.random.split(step_key, n_steps)


def scan_steps(step: Callable, carry, x, y, order, keys, progress: Callable | None = None):
    """lax.scan of `step` over the batches (x[order[i]], y[order[i]]) with keys[i]: the body of
    an epoch. carry = (params, state, opt_state) -> (carry after the steps, per-step metrics).
    `progress(done)` is called about 20 times (from the compiled program) if given."""
    n_steps = order.shape[0]
    every = max(1, n_steps // 20)

    def body(carry, inputs):
        idx, k, i = inputs
        batch = (jnp.take(x, idx, axis=0), jnp.take(y, idx, axis=0))
        params, state, opt_state, metrics = step(*carry, batch, k)
        if progress is not None:
            done = i + 1
            lax.cond(
                (done % every == 0) | (done == n_steps),
                lambda: jax.debug.callback(progress, done),
                lambda: None,
            )
        return (params, state, opt_state), metrics

    return lax.scan(body, tuple(carry), (order, keys, jnp.arange(n_steps)))


def make_train_epoch(
    step: Callable,
    *,
    batch_size: int,
    progress: Callable | None = None,
    donate: bool = True,
    devices=None,
    compiler_options=None,
):
    """Make epoch(params, state, opt_state, x, y, key) -> (params, state, opt_state, metrics).

    x, y are the whole training set. metrics hold one value per step: {"loss": (steps,),
    "accuracy": (steps,)}. Still one scan, also over several devices.

    Args:
        step: an uncompiled train step (make_train_step(..., jit=False)).
        batch_size: the training batch size.
        progress: `progress(done)`, if given, is called from the compiled program about 20
            times per epoch with the number of steps done (for a progress bar).
        donate: the params, state and opt_state passed in are donated to the result.
        devices: a count, devices, a Mesh (see fnn.train.parallel): split each step's batch
            across them (the batch size must be divisible by their number); pass the other
            arguments replicated on them (parallel.data_parallel(devices).replicate). A
            DataParallel with sharded parameters (data_parallel(n, shard="params")) keeps params
            and opt_state split per its param_sharding (place them with its place_params).
        compiler_options: XLA's options for the compiled epoch; a step made with remat=True (or
            a model with checkpointed layers) needs fnn.runtime.remat_compiler_options() here for
            its rematerialization to save memory on the CPU (make_train_step(jit=True) and fit add
            them themselves).

    Returns:
        The epoch function (compiled).
    """
    dp = data_parallel(devices)
    if dp is not None:
        dp.check_batch_size(batch_size)
        step = constrain_batch(step, dp)

    def epoch(params, state, opt_state, x, y, key):
        order, keys = epoch_batches(key, x.shape[0], batch_size)
        carry, metrics = scan_steps(step, (params, state, opt_state), x, y, order, keys, progress)
        if dp is not None:  # sharded parameters: out as they came in
            carry = dp.constrain_carry(*carry)
        return (*carry, metrics)

    return jax.jit(
        epoch, donate_argnums=(0, 1, 2) if donate else (), compiler_options=compiler_options
    )


def _chunk(step: Callable, finish: Callable | None = None):
    """run(carry, metrics, x, y, order, keys, start, stop) -> (carry, metrics): steps start, ...,
    stop - 1 of an epoch, step(carry, batch, key) -> (carry, the step's metrics), each step's
    metrics written at its index of the per-step buffers `metrics`; finish(carry) after them."""

    def run(carry, metrics, x, y, order, keys, start, stop):
        def body(i, loop):
            carry, metrics = loop
            idx = order[i]
            batch = (jnp.take(x, idx, axis=0), jnp.take(y, idx, axis=0))
            carry, m = step(carry, batch, keys[i])
            metrics = jax.tree_util.tree_map(lambda buf, v: buf.at[i].set(v), metrics, m)
            return carry, metrics

        carry, metrics = lax.fori_loop(start, stop, body, (carry, metrics))
        return (finish(carry) if finish is not None else carry), metrics

    return run


def make_chunk_runner(step: Callable, *, donate: bool = True, finish: Callable | None = None):
    """run(carry, metrics, x, y, order, keys, start, stop) -> (carry, metrics), compiled: what
    make_epoch_runner runs, for a step of any carry, step(carry, batch, key) -> (carry, the
    step's metrics) (fit's: params, state, opt_state and its hooks' slots). finish(carry): what
    the program does to the carry after its steps (sharded parameters: constrained as they came
    in). donate: the carry is donated to the result (the metrics always are)."""
    return jax.jit(_chunk(step, finish), donate_argnums=(0, 1) if donate else (1,))


def make_epoch_runner(step: Callable, *, donate: bool = True, devices=None):
    """run(params, state, opt_state, metrics, x, y, order, keys, start, stop) -> (params,
    state, opt_state, metrics): steps start, ..., stop - 1 of an epoch, as one compiled loop.

    The epoch's batches are `order` (steps, batch_size) example indices and `keys` (steps,) the
    step keys, as epoch_batches draws them; step i trains on (x[order[i]], y[order[i]]) with
    keys[i] and writes its metrics at index i of `metrics`, per-step buffers (steps, ...) made
    by metrics_buffers. The bounds are arguments, not constants: one compiled program runs any
    chunk of the epoch, so fit can run an epoch as several chunks, stop between two of them
    (Ctrl-C) and finish the epoch later from where it stopped, with the same bits as in one
    go. donate=True donates params, state, opt_state and metrics (always donated) to the
    result. devices: as in make_train_epoch.
    """
    dp = data_parallel(devices)
    if dp is not None:
        step = constrain_batch(step, dp)

    def carry_step(carry, batch, key):
        *carry, metrics = step(*carry, batch, key)
        return tuple(carry), metrics

    # sharded parameters: out as they came in (the next chunk's input)
    run = _chunk(carry_step, (lambda carry: dp.constrain_carry(*carry)) if dp is not None else None)

    def runner(params, state, opt_state, metrics, x, y, order, keys, start, stop):
        carry, metrics = run((params, state, opt_state), metrics, x, y, order, keys, start, stop)
        return (*carry, metrics)

    return jax.jit(runner, donate_argnums=(0, 1, 2, 3) if donate else (3,))


def metrics_buffers(step: Callable, params, state, opt_state, x, y, n_steps: int, batch_size: int):
    """Zeros to hold `n_steps` of the step's metrics: each metric leaf as (n_steps, ...)."""
    batch = (
        jax.ShapeDtypeStruct((batch_size, *x.shape[1:]), x.dtype),
        jax.ShapeDtypeStruct((batch_size, *y.shape[1:]), y.dtype),
    )
    out = jax.eval_shape(step, params, state, opt_state, batch, jax.random.PRNGKey(0))[3]
    return jax.tree_util.tree_map(lambda s: jnp.zeros((n_steps, *s.shape), s.dtype), out)


def make_evaluate(model, *, loss="softmax_cross_entropy", batch_size: int = 1000):
    """Make evaluate(params, state, x, y) -> {"loss", "accuracy"}: means over x, in eval mode.

    ("accuracy" only for class labels; per-token labels: the mean over positions.)
    The data is padded to whole batches and scanned; padded rows are masked out.

    Args:
        model: the model.
        loss: a name, a Loss or a function (get_loss).
        batch_size: the evaluation batch size.

    Returns:
        The evaluate function; it raises ValueError on an empty dataset.
    """

    def evaluate(params, state, x, y):
        n = x.shape[0]
        if n == 0:
            raise ValueError("evaluate: empty dataset")
        bs = min(batch_size, n)
        n_batches = math.ceil(n / bs)
        pad = n_batches * bs - n
        xs = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
        xs = xs.reshape((n_batches, bs) + x.shape[1:])
        ys = jnp.pad(y, ((0, pad),) + ((0, 0),) * (y.ndim - 1))
        ys = ys.reshape((n_batches, bs) + y.shape[1:])
        mask = (jnp.arange(n_batches * bs) < n).reshape(n_batches, bs)
        classify = None

        def body(_, inputs):
            nonlocal classify
            xb, yb, mb = inputs
            scores, _ = model.apply(params, state, xb, train=False)
            losses = per_example_loss(loss, scores, yb)
            classify = get_loss(loss).is_classification(scores.shape, yb)
            if classify:  # per example: the fraction of its positions right (one for (N,))
                right = jnp.argmax(scores, axis=-1) == yb
                correct = jnp.mean(right.reshape(right.shape[0], -1), axis=1)
            else:
                correct = jnp.zeros(losses.shape)
            return None, (jnp.sum(jnp.where(mb, losses, 0)), jnp.sum(jnp.where(mb, correct, 0)))

        _, (losses, correct) = lax.scan(body, None, (xs, ys, mask))
        out = {"loss": jnp.sum(losses) / n}
        if classify:
            out["accuracy"] = jnp.sum(correct) / n
        return out

    return jax.jit(evaluate)
