"""Gradient health while training: fnn.check.gradient_health every N steps, inside the epoch,
as a fit hook (HealthMonitor).

    ts, history = fnn.train.fit(model, opt, data, epochs=5, diagnostics=20)
    history[0]["diagnostics"]      # rows of epoch 1, at steps 0, 20 (and 40, ...)

How it runs: the whole epoch stays one compiled loop. After each step, inside it, the hook
(`HealthMonitor.in_step`) measures under `lax.cond(count % every == 0, ...)`, so the measuring
(two backward passes, fnn's and JAX's, and a forward that keeps the activations) costs only on
those steps. The step counter is the hook's carry slot ("diagnostics") in the compiled loop.
The measurement uses the step's own batch, dropout key and params before the update; the update
is new params - params. Training itself is unchanged: same batches, same updates.

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


def _check_every(every) -> int:
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"diagnostics every N steps needs a positive int N, got {every!r}")
    return every


def measure(loss_fn, model, every: int, count, before, new_params, batch, key, rules=None):
    """metrics["health"] of one step: {"on": count % every == 0, "step": count, "values":
    gradient_health of the step (its batch, key and params before it; the update: new_params
    - params), zeros when off}. The same loss, l2 and rule overrides as the training (rules:
    the gradient measured is the one the rules give, and "alignment" its angle to the true
    gradient per layer)."""
    params, state = before[0], before[1]

    def on(args):
        p, s, b, k, new = args
        return gradient_health(
            loss_fn,
            model,
            p,
            s,
            b,
            key=k,
            rules=rules,
            updates=jax.tree_util.tree_map(jnp.subtract, new, p),
        )

    def off(args):
        return jax.tree_util.tree_map(
            lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(on, args)
        )

    due = count % every == 0
    values = lax.cond(due, on, off, (params, state, batch, key, new_params))
    return {"on": due, "step": count, "values": values}


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
    """The fit hook of diagnostics=N: measures every N steps inside the compiled epoch, its step
    counter in its carry slot, and puts the epoch's rows in record["diagnostics"]. The model,
    loss, l2 and rules are the spec's (on_fit_start)."""

    slot = "diagnostics"

    def __init__(self, every: int):
        self.every = _check_every(every)

    def on_fit_start(self, spec, ts):
        self.model, self.rules = spec.model, spec.rules
        self.loss_fn = make_loss_fn(spec.model, spec.loss, l2=spec.l2)

    def init_carry(self, ts):
        return jnp.asarray(ts.step, jnp.int32)  # optimizer steps done before the next one

    def in_step(self, count, before, after, batch, key):
        health = measure(
            self.loss_fn, self.model, self.every, count, before, after[0], batch, key, self.rules
        )
        return count + 1, {"health": health}

    def on_metrics(self, metrics, record):
        record["diagnostics"] = rows(metrics["health"], record["epoch"])
        if self.rules:  # the difference from jax.grad is the rules' doing, not a wrong rule
            for row in record["diagnostics"]:
                row["rules"] = [
                    f"{k if isinstance(k, str) else getattr(k, 'name', k)}: "
                    f"{getattr(v, 'name', None) or v!r}"
                    for k, v in self.rules.items()
                ]
