"""Data parallelism with jax.sharding: each batch is split across N devices, parameters are
replicated, and XLA inserts the gradient all-reduce. One jitted program, as on one device.

    dp = data_parallel(8)                     # a 1-D Mesh over the first 8 devices, axis "data"
    dp.batch                                  # NamedSharding(mesh, P("data")): batch axis split
    dp.replicated                             # NamedSharding(mesh, P()): a copy on every device
    ts, history = fit(model, opt, data, epochs=5, batch_size=64, devices=8)

How it works: the training set and the TrainState are replicated on every device; inside the
compiled epoch (one `lax.scan`) each step gathers its batch and constrains it to `dp.batch`
(`lax.with_sharding_constraint`), so the SPMD partitioner runs the forward and the hand-written
(or JAX's) backward on each device's slice and sums the parameter gradients across devices
before the optimizer update. Batch means (the loss, BatchNorm statistics) are over the whole
global batch, so N devices compute what one device computes, up to the order of float sums.
Dropout masks are the same too (JAX's threefry PRNG is partitionable).

Multi-host: call `jax.distributed.initialize()` in every process first; `jax.devices()` then
lists the devices of all hosts and `data_parallel(jax.device_count())` spans them. Arrays are
placed with `jax.make_array_from_callback`, which only touches each process's own devices, so
every process must load the same dataset (the same files and split seed).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """A mesh and the two shardings data parallelism needs."""

    mesh: Mesh

    @property
    def size(self) -> int:
        """Number of devices the batch is split across."""
        return int(self.mesh.devices.size)

    @property
    def batch(self) -> NamedSharding:
        """The leading (batch) axis split over every axis of the mesh, the rest replicated."""
        return NamedSharding(self.mesh, P(tuple(self.mesh.axis_names)))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def check_batch_size(self, batch_size: int, what: str = "batch size") -> None:
        if batch_size % self.size:
            raise ValueError(f"{what} {batch_size} is not divisible by the {self.size} devices "
                             f"it is split across; use a multiple of {self.size} (e.g. "
                             f"{max(self.size, batch_size // self.size * self.size)})")

    def replicate(self, tree):
        """Every leaf of `tree` as a global array with a full copy on each device."""
        return jax.tree_util.tree_map(lambda a: _place(a, self.replicated), tree)

    def shard(self, tree):
        """Every leaf of `tree` split along its leading axis across the devices."""
        return jax.tree_util.tree_map(lambda a: _place(a, self.batch), tree)

    def __repr__(self):
        kinds = sorted({d.platform for d in self.mesh.devices.flat})
        return f"DataParallel({self.size} {'/'.join(kinds)} devices, mesh {dict(self.mesh.shape)})"


def _place(a, sharding: NamedSharding):
    if isinstance(a, jax.Array) and a.sharding == sharding:
        return a
    if isinstance(a, jax.Array) and (jax.process_count() == 1 or
                                     jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)):
        return jax.device_put(a, sharding)  # resharded on the devices, no trip through the host
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def data_parallel(devices: int | Sequence | Mesh | DataParallel | None = None,
                  ) -> DataParallel | None:
    """A DataParallel from a device count (the first N of jax.devices()), a list of devices, or
    a Mesh (the batch is split over all its axes). None gives None (no sharding at all)."""
    if devices is None or isinstance(devices, DataParallel):
        return devices
    if isinstance(devices, Mesh):
        return DataParallel(devices)
    available = jax.devices()
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        n = int(devices)
        if n < 1:
            raise ValueError(f"devices must be a positive number of devices, got {n}")
        if n > len(available):
            hint = ("; on CPU, ask XLA for more host devices before JAX starts: "
                    f"XLA_FLAGS=--xla_force_host_platform_device_count={n}"
                    if available[0].platform == "cpu" else "")
            raise ValueError(f"devices={n} but JAX sees {len(available)} device(s) "
                             f"({available[0].platform}){hint}")
        chosen = available[:n]
    else:
        chosen = list(devices)
        if not chosen or not all(isinstance(d, jax.Device) for d in chosen):
            raise TypeError(f"devices must be an int, a list of jax devices or a Mesh, "
                            f"got {devices!r}")
    return DataParallel(Mesh(np.array(chosen), (BATCH_AXIS,)))


def constrain_batch(step, dp: DataParallel):
    """The step with its batch split across dp's devices (for tracing inside jit/scan)."""

    def sharded_step(params, state, opt_state, batch, key):
        batch = jax.lax.with_sharding_constraint(batch, dp.batch)
        return step(params, state, opt_state, batch, key)

    return sharded_step


def jit_step(step, dp: DataParallel, *, donate: bool = True):
    """step(params, state, opt_state, batch, key), jitted with the batch split across dp's
    devices and everything else replicated. Arguments are placed before each call (a no-op
    when they already are), so the first call may take plain single-device arrays."""
    rep, bat = dp.replicated, dp.batch
    compiled = jax.jit(constrain_batch(step, dp), in_shardings=(rep, rep, rep, bat, rep),
                       out_shardings=rep, donate_argnums=(0, 1, 2) if donate else ())

    def call(params, state, opt_state, batch, key):
        dp.check_batch_size(len(jax.tree_util.tree_leaves(batch)[0]))
        params, state, opt_state, key = dp.replicate((params, state, opt_state, key))
        return compiled(params, state, opt_state, dp.shard(batch), key)

    return call
