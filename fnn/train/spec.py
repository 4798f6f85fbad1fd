"""TrainSpec: what a training run computes, made and validated once.

    spec = fnn.train.TrainSpec(model, optimizer, data, batch_size=64, grad="custom")
    ts, history = fnn.train.fit(spec, epochs=10, hooks=[fnn.train.EarlyStopping(3)])

A spec holds the model, the optimizer, the data, the batch size, the loss, who differentiates
(grad="custom": fnn's hand-written rules; "builtin": jax.grad), the backward-rule overrides, the
seed, the devices and the sharding of the parameters, remat, the evaluation's batch size and
the learning-rate schedule (to report `lr`). Making one checks all of it (the data against the
model and the loss: fnn.train.validate; the options; the devices against the batch size) and
works out what follows from it: the mesh (`dp`: a fnn.train.parallel.DataParallel, None on one
device), the steps of an epoch (`n_steps`) and the number of processes. fit and its hooks read
the spec and check nothing of it again.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import optax

from fnn.train.epoch import steps_per_epoch
from fnn.train.memory import init_out_of_memory, is_out_of_memory
from fnn.train.parallel import data_parallel
from fnn.train.state import TrainState, init_train_state
from fnn.train.step import GRADS, make_train_step, remat_model
from fnn.train.validate import check_fit_inputs, check_position, check_start_state


def mesh(devices=None, shard: str | None = None):
    """The DataParallel of `devices` (a count, a device list, a Mesh; fnn.train.parallel) and
    `shard`, None for one device; several processes: devices None means every device of every
    process."""
    if devices is None and jax.process_count() > 1:
        devices = jax.device_count()
    return data_parallel(devices, shard)


@dataclasses.dataclass(frozen=True, eq=False)
class TrainSpec:
    """What a training run computes (see the module docstring); validated when made.

    Attributes:
        model: the model (a fnn.nn Layer).
        optimizer: the optax optimizer.
        data: a Dataset (or anything with x_train, y_train, x_val, y_val arrays and input_shape;
            x_test, y_test are checked too when present).
        batch_size: the training batch size.
        loss: a name, a fnn.train.Loss or a function loss(scores, labels) -> scalar
            (fnn.train.step.get_loss).
        grad: "custom" (fnn's hand-written gradients) or "builtin" (jax.grad).
        l2: the lecture's l2 * sum(w**2) over the weights.
        rules: backward-rule overrides for grad="custom" ({gate: rule}, fnn.grad's rules=; from
            text specs: fnn.train.rule_specs.make_rules).
        seed: of the initial parameters, the shuffling and dropout (an int in [0, 2**64-1]).
        devices: data parallel over N devices (or a device list, a Mesh); several processes:
            None means every device of every process.
        shard: "params": the large parameters and their optimizer state split across the
            devices (FSDP).
        remat: recompute the activations in the backward (make_train_step's remat).
        eval_batch_size: the batch size of evaluation.
        schedule: the learning-rate schedule, only to report `lr` per epoch.

    Raises:
        ValueError: `grad` is unknown, `rules` are given with grad="builtin", `remat`, the
            devices or the batch size do not fit, or the model, data and loss do not agree
            (check_fit_inputs; fnn.train.DataError for bad data).
        OutOfMemoryError: initializing the model runs out of device memory.
    """

    model: Any
    optimizer: optax.GradientTransformation
    data: Any
    batch_size: int = 64
    loss: Any = "softmax_cross_entropy"
    grad: str = "custom"
    l2: float = 0.0
    rules: Any = None
    seed: int = 0
    devices: Any = None
    shard: str | None = None
    remat: Any = False
    eval_batch_size: int = 1000
    schedule: Callable | None = None
    dp: Any = dataclasses.field(init=False, repr=False)  # the mesh, None on one device
    n_steps: int = dataclasses.field(init=False)  # steps of one epoch (full batches)
    processes: int = dataclasses.field(init=False)  # jax.process_count() when made

    def __post_init__(self):
        if self.grad not in GRADS:
            raise ValueError(f"grad must be one of {', '.join(GRADS)}, got {self.grad!r}")
        if self.rules and self.grad != "custom":
            raise ValueError(
                f"rules replace fnn's hand-written backward: they need "
                f"grad='custom', not jax.grad (got rules for "
                f"{', '.join(map(str, self.rules))})"
            )
        remat_model(self.model, self.remat)  # a bad remat fails here
        check_fit_inputs(
            self.model,
            self.data,
            loss=self.loss,
            batch_size=self.batch_size,
            eval_batch_size=self.eval_batch_size,
        )
        dp = mesh(self.devices, self.shard)
        if dp is not None:
            dp.check_batch_size(self.batch_size)
        set_ = object.__setattr__  # frozen: what follows from the fields, set once here
        set_(self, "dp", dp)
        set_(self, "processes", jax.process_count())
        set_(self, "n_steps", steps_per_epoch(len(self.data.x_train), self.batch_size))

    @property
    def has_validation(self) -> bool:
        x = getattr(self.data, "x_val", None)
        return x is not None and len(x) > 0

    def train_step(self):
        """The uncompiled train step of this spec (make_train_step(..., jit=False))."""
        return make_train_step(
            self.model,
            self.optimizer,
            loss=self.loss,
            grad=self.grad,
            l2=self.l2,
            jit=False,
            rules=self.rules,
            remat=self.remat,
        )

    def init_state(self, init: Callable = init_train_state) -> TrainState:
        """A fresh TrainState from `seed`, placed on the mesh (sharded parameters made split,
        never whole on one device); XLA running out of memory explained
        (fnn.train.OutOfMemoryError). init: init_train_state, or one that stands in for it."""
        try:
            return init(self.model, self.optimizer, self.data.input_shape, self.seed, place=self.dp)
        except jax.errors.JaxRuntimeError as e:
            if is_out_of_memory(e):
                raise init_out_of_memory(
                    e,
                    self.model,
                    self.optimizer,
                    self.data.input_shape,
                    "while initializing the parameters",
                ) from None
            raise

    def check_start(self, start: TrainState) -> None:
        """`start` (a TrainState to continue from) must fit this spec: its parameters, model
        state and optimizer state, and its position inside an epoch (ValueError naming what
        differs)."""
        check_start_state(self.model, self.data, start, optimizer=self.optimizer)
        check_position(start, self.n_steps, self.batch_size)
