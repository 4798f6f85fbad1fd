"""Gradient health while training: fnn.check.gradient_health every N steps, inside the epoch,
as a fit hook (HealthMonitor).

    ts, history = fnn.train.fit(model, opt, data, epochs=5, diagnostics=20)
    history[0]["diagnostics"]      # rows of epoch 1, at steps 0, 20 (and 40, ...)

How it runs: the whole epoch stays one compiled `lax.scan`. `monitor_step` wraps the train step;
after the real step it measures under `lax.cond(count % every == 0, ...)`, so the measuring
(two backward passes, fnn's and JAX's, and a forward that keeps the activations) costs only on
those steps. The step counter rides along with the optimizer state, (opt_state, count), inside
the scan. The measurement uses the step's own batch, dropout key and params before the update;
the update is new params - params. Training itself is unchanged: same batches, same updates.

A row (one line of RUN_DIR/diagnostics.jsonl):
    {"step": 40, "epoch": 2, "loss": 0.31, "grad_norm": {"1_dense": 0.52, "3_dense": 0.27},
     "update_ratio": {...}, "custom_vs_builtin": {...}, "dead_relu": {"2_relu": 0.0},
     "saturated": {}}
`step` counts the optimizer steps done before (0: the initial params); the gradient is that of
the batch of step `step + 1`, the update that step's. Metrics: see fnn.check.health. The run
directory's diagnostics.jsonl and .png: fnn.train.health_log.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fnn.check.health import METRICS, gradient_health
from fnn.train.hooks import Hook
from fnn.train.step import make_loss_fn

EVERY = 50  # steps between measurements when none is given (python -m fnn train --diagnostics)


def monitor_step(step, model, *, every: int, loss="softmax_cross_entropy",
                 l2: float = 0.0, rules=None):
    """step(params, state, (opt_state, count), batch, key) -> (..., (opt_state, count + 1),
    metrics), metrics["health"] = {"on", "step", "values"} (values: zeros when off).

    `step` is an uncompiled train step (make_train_step(..., jit=False)), measured every
    `every` steps (count % every == 0) with the same loss, l2 and rule overrides it trains
    with (rules: the gradient measured is the one the rules give, and "alignment" its angle
    to the true gradient per layer).
    """
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"diagnostics every N steps needs a positive int N, got {every!r}")
    loss_fn = make_loss_fn(model, loss, l2=l2)

    def wrapped(params, state, opt_and_count, batch, key):
        opt_state, count = opt_and_count
        new_params, new_state, opt_state, metrics = step(params, state, opt_state, batch, key)
        args = (params, state, batch, key, new_params)

        def on(args):
            p, s, b, k, new = args
            return gradient_health(loss_fn, model, p, s, b, key=k, rules=rules,
                                   updates=jax.tree_util.tree_map(jnp.subtract, new, p))

        def off(args):
            return jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype),
                                          jax.eval_shape(on, args))

        due = count % every == 0
        values = lax.cond(due, on, off, args)
        metrics = {**metrics, "health": {"on": due, "step": count, "values": values}}
        return new_params, new_state, (opt_state, count + 1), metrics

    return wrapped


def rows(health, epoch: int) -> list[dict]:
    """The measured steps of an epoch's stacked metrics["health"], as JSON-ready rows."""
    h = jax.device_get(health)
    out = []
    for i in np.flatnonzero(np.asarray(h["on"])):
        row = {"step": int(h["step"][i]), "epoch": epoch, "loss": float(h["values"]["loss"][i])}
        for metric in METRICS:
            row[metric] = {k: float(v[i]) for k, v in h["values"][metric].items()}
        out.append(row)
    return out


class HealthMonitor(Hook):
    """The fit hook of diagnostics=N: wraps the step, carries the step counter with the
    optimizer state through the epoch, and puts the epoch's rows in record["diagnostics"]."""

    def __init__(self, model, every: int, *, loss="softmax_cross_entropy", l2: float = 0.0,
                 rules=None):
        self.model, self.every, self.loss, self.l2, self.rules = model, every, loss, l2, rules

    def wrap_step(self, step):
        return monitor_step(step, self.model, every=self.every, loss=self.loss, l2=self.l2,
                            rules=self.rules)

    def carry_in(self, opt_state, ts):
        return opt_state, jnp.asarray(ts.step, jnp.int32)

    def carry_out(self, carried, metrics, record):
        record["diagnostics"] = rows(metrics["health"], record["epoch"])
        if self.rules:  # the difference from jax.grad is the rules' doing, not a wrong rule
            for row in record["diagnostics"]:
                row["rules"] = [f"{k if isinstance(k, str) else getattr(k, 'name', k)}: "
                                f"{getattr(v, 'name', None) or v!r}"
                                for k, v in self.rules.items()]
        return carried[0]
