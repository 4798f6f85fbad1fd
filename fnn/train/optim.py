"""Optimizers (from optax) and learning-rate schedules by name.

optimizers  sgd, momentum (heavy ball, 0.9), nesterov, adam, adamw, rmsprop
schedules   constant; cosine (decays to 0 over the whole run); step (x `decay` every
            `step_every` steps, by default at 1/3 and 2/3 of the run)
weight decay  decoupled for adamw; for the others added to the gradient (L2 regularization),
            applied to weight matrices and kernels only (ndim >= 2), never to biases or norms
clip        gradient clipping by global norm, before everything else
"""

from __future__ import annotations

from typing import Callable

import jax
import optax

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")
"""The optimizers make_optimizer (and `--optimizer`) accepts, by name."""
SCHEDULES = ("constant", "cosine", "step")
"""The learning-rate schedules (`schedule=`, `--schedule`)."""


def make_schedule(
    name: str = "constant",
    lr: float = 1e-3,
    *,
    total_steps: int | None = None,
    step_every: int | None = None,
    decay: float = 0.1,
) -> Callable:
    """A schedule `step -> learning rate` by name (see the module docstring).

    Args:
        name: the schedule (SCHEDULES).
        lr: the base learning rate.
        total_steps: the length of the run (needed by the schedules that decay over it).
        step_every: the steps between two decays (step schedules).
        decay: the factor of each decay.

    Returns:
        The schedule function.

    Raises:
        ValueError: an unknown schedule, or one that needs total_steps without it.
    """
    if name == "constant":
        return optax.constant_schedule(lr)
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if not total_steps and not (name == "step" and step_every):
        raise ValueError(f"the {name!r} schedule needs total_steps (the length of the run)")
    if name == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=total_steps)
    step_every = step_every or max(1, total_steps // 3)
    return optax.exponential_decay(
        lr, transition_steps=step_every, decay_rate=decay, staircase=True
    )


def _finite_nonneg(v) -> bool:
    try:
        return 0 <= float(v) < float("inf")
    except (TypeError, ValueError):
        return False


def decay_mask(params):
    """True for the leaves weight decay applies to: kernels and weight matrices (ndim >= 2)."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def make_optimizer(
    name: str = "adam",
    lr: float | Callable = 1e-3,
    *,
    schedule: str = "constant",
    total_steps: int | None = None,
    weight_decay: float = 0.0,
    clip: float | None = None,
    momentum: float = 0.9,
) -> optax.GradientTransformation:
    """An optax optimizer by name, with a schedule, weight decay and gradient clipping.

    Args:
        name: the optimizer (OPTIMIZERS).
        lr: a number (shaped by `schedule`) or a schedule function itself.
        schedule: the schedule's name (SCHEDULES), when `lr` is a number.
        total_steps: the length of the run (the schedules that need it).
        weight_decay: the weight decay of kernels (a finite number >= 0).
        clip: clip gradients to this global norm (None or 0: off).
        momentum: the momentum of the optimizers that have one.

    Returns:
        The optax.GradientTransformation.

    Raises:
        ValueError: an unknown optimizer or schedule, or a value out of range.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if not callable(lr) and not _finite_nonneg(lr):
        raise ValueError(f"learning rate must be a finite number >= 0 or a schedule, got {lr!r}")
    for what, v in (("weight_decay", weight_decay), ("momentum", momentum)):
        if not _finite_nonneg(v) or isinstance(v, bool):
            raise ValueError(f"{what} must be a finite number >= 0, got {v!r}")
    if clip is not None and (not _finite_nonneg(clip) or isinstance(clip, bool)):
        raise ValueError(
            f"clip must be a finite number > 0 (the largest global gradient norm) "
            f"or None/0 for no clipping, got {clip!r}"
        )
    rate = lr if callable(lr) else make_schedule(schedule, lr, total_steps=total_steps)
    if name == "adamw":
        opt = optax.adamw(rate, weight_decay=weight_decay, mask=decay_mask)
    else:
        opt = {
            "sgd": lambda: optax.sgd(rate),
            "momentum": lambda: optax.sgd(rate, momentum=momentum),
            "nesterov": lambda: optax.sgd(rate, momentum=momentum, nesterov=True),
            "adam": lambda: optax.adam(rate),
            "rmsprop": lambda: optax.rmsprop(rate),
        }[name]()
        if weight_decay:
            opt = optax.chain(optax.add_decayed_weights(weight_decay, mask=decay_mask), opt)
    if clip:
        opt = optax.chain(optax.clip_by_global_norm(clip), opt)
    return opt
