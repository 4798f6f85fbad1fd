"""Everything that changes during training, in one place: what a checkpoint holds."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

MAX_SEED = 2**64 - 1  # a seed fills both 32-bit words of a threefry key


@dataclasses.dataclass
class TrainState:
    """A run's state: parameters, model state, optimizer state, PRNG key, epochs and steps done.

    A state saved in the middle of an epoch (an interrupted run) also has `position` and
    `partial`, so that fit finishes the epoch exactly as an uninterrupted run would have.

    Attributes:
        params: the parameters.
        state: the model state (BatchNorm statistics).
        opt_state: the optimizer state.
        key: the run's PRNG key (which never changes: epoch e uses fold_in(key, e)).
        epoch: the completed epochs.
        step: the optimizer steps done.
        position: the steps of epoch `epoch + 1` already done (step = epoch * steps_per_epoch +
            position).
        partial: {"order": the epoch's batches (steps, batch) as drawn, "metrics": {name: the
            per-step metrics of the steps done}}, or None.
    """

    params: Any
    state: Any
    opt_state: Any
    key: Any
    epoch: int = 0
    step: int = 0
    position: int = 0
    partial: Any = None


def make_key(seed: int):
    """The PRNG key (a raw threefry key, uint32[2]) of `seed`.

    Its high 32 bits are in the first word and its low 32 bits in the second, so distinct seeds
    give distinct keys. For seeds below 2**32 it is jax.random.PRNGKey(seed).

    Args:
        seed: any int in [0, 2**64 - 1].

    Returns:
        The key.

    Raises:
        TypeError: `seed` is not an integer.
        ValueError: `seed` is outside [0, 2**64 - 1].
    """
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(
            f"seed must be an integer in [0, 2**64-1], got {seed!r} ({type(seed).__name__})"
        )
    seed = int(seed)
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(
            f"seed must be an integer in [0, 2**64-1], got {seed}: a PRNG key "
            "holds 64 bits, so larger or negative seeds would collide with others"
        )
    return jnp.array([seed >> 32, seed & 0xFFFFFFFF], dtype=jnp.uint32)


def init_train_state(model, optimizer, input_shape, seed: int = 0, *, place=None) -> TrainState:
    """Initialize model and optimizer from `seed`: one key for init, one for training.

    Args:
        model: the model (a fnn.nn Layer).
        optimizer: the optax optimizer.
        input_shape: the shape of one example (no batch axis).
        seed: the run's seed (make_key).
        place: a DataParallel with sharded parameters (fnn.train.parallel, shard="params"): the
            state is made on its mesh by one jitted program whose outputs are already split per
            place.param_sharding, so the parameters and optimizer state are never whole on one
            device (a model larger than one device can start). The same values as without it.

    Returns:
        The TrainState at epoch 0.
    """

    def make():
        init_key, train_key = jax.random.split(make_key(seed))
        params, state, _ = model.init(init_key, tuple(input_shape))
        return params, state, optimizer.init(params), train_key

    if place is None or not getattr(place, "shard_params", False):
        return TrainState(*make())
    params, state, opt_state, key = jax.eval_shape(make)
    replicated = jax.tree_util.tree_map(lambda _: place.replicated, (state, key))
    shardings = (
        place.param_shardings(params),
        replicated[0],
        place.param_shardings(opt_state),
        replicated[1],
    )
    return TrainState(*jax.jit(make, out_shardings=shardings)())
