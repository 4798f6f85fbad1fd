"""Everything that changes during training, in one place: what a checkpoint holds."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax


@dataclasses.dataclass
class TrainState:
    """params, model state (BatchNorm statistics), optimizer state, the run's PRNG key (which
    never changes: epoch e uses fold_in(key, e)), completed epochs and optimizer steps."""

    params: Any
    state: Any
    opt_state: Any
    key: Any
    epoch: int = 0
    step: int = 0


def init_train_state(model, optimizer, input_shape, seed: int = 0) -> TrainState:
    """Initialize model and optimizer from `seed`: one key for init, one for training."""
    init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
    params, state, _ = model.init(init_key, tuple(input_shape))
    return TrainState(params, state, optimizer.init(params), train_key)
