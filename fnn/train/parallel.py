"""Data parallelism with jax.sharding: each batch is split across N devices, parameters are
replicated (or sharded, shard="params"), and XLA inserts the collectives. One jitted program,
as on one device.

    dp = data_parallel(8)                     # a 1-D Mesh over the first 8 devices, axis "data"
    dp.batch                                  # NamedSharding(mesh, P("data")): batch axis split
    dp.replicated                             # NamedSharding(mesh, P()): a copy on every device
    ts, history = fit(model, opt, data, epochs=5, batch_size=64, devices=8)

    dp = data_parallel(8, shard="params")     # axis "fsdp": batch AND large weights split
    dp.param_sharding(w)                      # e.g. NamedSharding(mesh, P(None, "fsdp"))
    ts, history = fit(model, opt, data, epochs=5, batch_size=64, devices=8, shard="params")

Sharded parameters (FSDP, ZeRO-3 style): the mesh's axis is named "fsdp" and still splits the
batch, so it is data parallelism on the same devices, but every parameter leaf of at least
MIN_SHARD_SIZE elements is also split along one of its dimensions (the largest one divisible
by the number of devices; ties: the leading one); smaller leaves (biases, BatchNorm scales)
and leaves with no such dimension stay replicated. The optimizer state gets the same rule by
shape, so Adam's mu and nu are split like their parameters and its step count is replicated;
model state (BatchNorm statistics) and the PRNG key are replicated. The step constrains the
parameters and optimizer state it returns to those shardings (`lax.with_sharding_constraint`,
also inside the epoch's compiled loop, so they stay split from step to step) and XLA's SPMD
partitioner places the collectives, by its cost model: for small batches it gathers the
activations and runs a layer split along the weight's dimension; for large batches it gathers
the weight where the forward and backward use it and sums the gradient, and each device
updates only its slice (on the CPU as an all-reduce; docs/benchmarks.md lists what it chose).
XLA decides how long a gathered weight lives: it may be whole for the step, so the saving is
the resident parameters and optimizer state (about 1/N of them per device) and the update's
work, not the peak of one layer's weights. A Mesh with an "fsdp" axis and other axes (say
("data", "fsdp"): hybrid sharding) splits the parameters over "fsdp" only, the batch over all
axes.

How it works: the training set and the TrainState are replicated on every device (sharded:
the TrainState as place_train_state places it); inside the compiled epoch each step gathers its
batch and constrains it to `dp.batch` (`lax.with_sharding_constraint`), so the SPMD
partitioner runs the forward and the hand-written
(or JAX's) backward on each device's slice and sums the parameter gradients across devices
before the optimizer update. Batch means (the loss, BatchNorm statistics) are over the whole
global batch, so N devices compute what one device computes, up to the order of float sums.
Dropout masks are the same too (JAX's threefry PRNG is partitionable).

Multi-host: call `jax.distributed.initialize()` in every process first; `jax.devices()` then
lists the devices of all hosts and `data_parallel(jax.device_count())` spans them. Arrays are
placed with `jax.make_array_from_callback`, which only touches each process's own devices, so
every process must load the same dataset (the same files and split seed). Sharded parameters
span processes: `gather` collects them whole into every process (a collective) before one
process writes a checkpoint (fnn.train.run does).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXIS = "data"
FSDP_AXIS = "fsdp"
SHARD = ("none", "params")  # replicated parameters; parameters and optimizer state sharded
MIN_SHARD_SIZE = 2**14  # leaves with fewer elements (64 KiB of float32) stay replicated


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """A mesh and the shardings data parallelism needs.

    shard_params (data_parallel's shard="params"): parameters and optimizer state split along the
    mesh's "fsdp" axis (param_sharding), the leaves of at least `min_shard_size` elements.

    Attributes:
        mesh: the jax.sharding.Mesh the batch is split over (all its axes).
        shard_params: split the parameters and optimizer state along the "fsdp" axis too.
        min_shard_size: the smallest leaf (in elements) that is split when shard_params.
    """

    mesh: Mesh
    shard_params: bool = False
    min_shard_size: int = MIN_SHARD_SIZE

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
            raise ValueError(
                f"{what} {batch_size} is not divisible by the {self.size} devices "
                f"it is split across; use a multiple of {self.size} (e.g. "
                f"{max(self.size, batch_size // self.size * self.size)})"
            )

    def param_sharding(self, leaf) -> NamedSharding:
        """The sharding of a parameter or optimizer-state leaf (an array or anything with a
        shape): split along its largest dimension divisible by the "fsdp" axis (ties: the
        leading one) when sharded and it has at least min_shard_size elements; else
        replicated. By shape alone, so Adam's mu/nu get their parameter's sharding."""
        shape = tuple(getattr(leaf, "shape", ()))
        if not self.shard_params or int(np.prod(shape, dtype=np.int64)) < self.min_shard_size:
            return self.replicated
        n = int(self.mesh.shape[FSDP_AXIS])
        dims = [i for i, d in enumerate(shape) if d % n == 0]
        if not dims:
            return self.replicated
        dim = max(dims, key=lambda i: (shape[i], -i))
        return NamedSharding(self.mesh, P(*(None,) * dim, FSDP_AXIS))

    def param_shardings(self, tree):
        """param_sharding of every leaf of `tree` (a tree of NamedShardings)."""
        return jax.tree_util.tree_map(self.param_sharding, tree)

    def place_params(self, tree):
        """Every leaf of `tree` (parameters, optimizer state) placed per param_sharding:
        split across the devices, or replicated (shard="none", small leaves)."""
        return jax.tree_util.tree_map(lambda a: _place(a, self.param_sharding(a)), tree)

    def constrain_params(self, tree):
        """Inside jit: `tree` constrained to param_sharding (a no-op unless sharded)."""
        if not self.shard_params:
            return tree
        return jax.lax.with_sharding_constraint(tree, self.param_shardings(tree))

    def constrain_carry(self, params, state, opt_state):
        """Inside jit: (params, state, opt_state) constrained as place_train_state places
        them (a no-op unless sharded): what a compiled loop over steps returns, so that its
        outputs have the shardings its inputs had and the next call takes them as they are."""
        if not self.shard_params:
            return params, state, opt_state
        params, opt_state = self.constrain_params((params, opt_state))
        return params, jax.lax.with_sharding_constraint(state, self.replicated), opt_state

    def place_train_state(self, ts):
        """A TrainState on the mesh: params and opt_state per param_sharding, model state and
        key replicated; epoch, step, position and partial kept as they are."""
        return dataclasses.replace(
            ts,
            params=self.place_params(ts.params),
            opt_state=self.place_params(ts.opt_state),
            state=self.replicate(ts.state),
            key=self.replicate(ts.key),
        )

    def replicate(self, tree):
        """Every leaf of `tree` as a global array with a full copy on each device."""
        return jax.tree_util.tree_map(lambda a: _place(a, self.replicated), tree)

    def shard(self, tree):
        """Every leaf of `tree` split along its leading axis across the devices."""
        return jax.tree_util.tree_map(lambda a: _place(a, self.batch), tree)

    def __repr__(self):
        kinds = sorted({d.platform for d in self.mesh.devices.flat})
        sharded = ", parameters sharded" if self.shard_params else ""
        return (
            f"DataParallel({self.size} {'/'.join(kinds)} devices, mesh "
            f"{dict(self.mesh.shape)}{sharded})"
        )


def _place(a, sharding: NamedSharding):
    if isinstance(a, jax.Array) and a.sharding == sharding:
        return a
    if isinstance(a, jax.Array) and (
        jax.process_count() == 1 or jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)
    ):
        return jax.device_put(a, sharding)  # resharded on the devices, no trip through the host
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def gather(tree):
    """`tree` with every array leaf that spans devices of other processes (sharded parameters
    on several hosts) gathered whole into each process (multihost_utils.process_allgather, a
    collective: every process must call it). Other leaves are returned as they are, so with one
    process it changes nothing; np.asarray (a checkpoint) can then read every leaf."""

    def one(a):
        if (
            isinstance(a, jax.Array)
            and not a.is_fully_addressable
            and not a.sharding.is_fully_replicated
        ):
            from jax.experimental import multihost_utils

            return multihost_utils.process_allgather(a, tiled=True)
        return a

    return jax.tree_util.tree_map(one, tree)


def data_parallel(
    devices: int | Sequence | Mesh | DataParallel | None = None,
    shard: str | None = None,
    *,
    min_shard_size: int = MIN_SHARD_SIZE,
) -> DataParallel | None:
    """A DataParallel from a device count, a list of devices or a Mesh.

    A count: the first N of jax.devices(); a Mesh: the batch is split over all its axes.

    Args:
        devices: a device count, a list of devices, a Mesh or a DataParallel. None gives None
            (no sharding at all), unless shard="params" (then every device JAX sees).
        shard: None or "none": parameters replicated (a 1-D mesh, axis "data"); "params":
            parameters and optimizer state split across the devices too (a 1-D mesh, axis
            "fsdp"; a Mesh given must have an "fsdp" axis of more than one device). A
            DataParallel given is returned as it is when shard is None or says what it does.
        min_shard_size: the smallest leaf (in elements) that is split.

    Returns:
        The DataParallel, or None.

    Raises:
        ValueError: the count is not positive, exceeds the devices JAX sees, does not fit the
            processes of a multi-process run, or the shard or Mesh is not valid.
        TypeError: `devices` is none of the accepted kinds.
    """
    given, shard = shard, check_shard(shard)
    if isinstance(devices, DataParallel):
        if given is None or (shard == "params") == devices.shard_params:
            return devices
        return _sharded(devices.mesh, shard, min_shard_size)
    if devices is None and shard == "none":
        return None
    if isinstance(devices, Mesh):
        return _sharded(devices, shard, min_shard_size)
    chosen = _chosen_devices(devices)
    axis = FSDP_AXIS if shard == "params" else BATCH_AXIS
    return _sharded(Mesh(np.array(chosen), (axis,)), shard, min_shard_size)


def _chosen_devices(devices) -> list:
    """The devices of data_parallel's `devices` given as a count (the first N of jax.devices()),
    a list of devices, or None (every device JAX sees)."""
    available = jax.devices()
    if devices is None:
        return available
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        n = int(devices)
        if n < 1:
            raise ValueError(f"devices must be a positive number of devices, got {n}")
        if n > len(available):
            raise ValueError(
                f"devices={n} but JAX sees {len(available)} device(s) "
                f"({available[0].platform}){_more_devices_hint(n)}"
            )
        if jax.process_count() > 1 and n != len(available):
            raise ValueError(
                f"devices={n}, but a run of {jax.process_count()} processes "
                f"trains on every device of every process: "
                f"{len(available)} ({jax.local_device_count()} in this one); "
                f"leave devices out (--devices) or give {len(available)}"
            )
        return available[:n]
    chosen = list(devices)
    if not chosen or not all(isinstance(d, jax.Device) for d in chosen):
        raise TypeError(f"devices must be an int, a list of jax devices or a Mesh, got {devices!r}")
    return chosen


def check_shard(shard) -> str:
    """shard as one of SHARD ("none" for None), or a ValueError naming the choices."""
    if shard is None:
        return "none"
    if not isinstance(shard, str) or shard not in SHARD:
        raise ValueError(
            f"shard must be one of {', '.join(map(repr, SHARD))} (or None), got {shard!r}"
        )
    return shard


def _more_devices_hint(n: int) -> str:
    if jax.devices()[0].platform != "cpu":
        return ""
    return (
        "; on CPU, ask XLA for more host devices before JAX starts: "
        f"XLA_FLAGS=--xla_force_host_platform_device_count={n}"
    )


def _sharded(mesh: Mesh, shard: str, min_shard_size: int) -> DataParallel:
    """The DataParallel of `mesh` with `shard`, checked: sharded parameters need an "fsdp"
    axis of several devices."""
    if shard == "params":
        if FSDP_AXIS not in mesh.axis_names:
            raise ValueError(
                f"shard='params' splits parameters along the mesh axis "
                f"{FSDP_AXIS!r}, but this mesh has axes {tuple(mesh.axis_names)}: "
                f"name one axis {FSDP_AXIS!r}, or pass a device count"
            )
        if mesh.shape[FSDP_AXIS] < 2:
            seen = jax.device_count()
            hint = (
                f"; use devices=N (--devices N) with N from 2 to {seen}"
                if seen > 1
                else _more_devices_hint(8)
            )
            raise ValueError(
                f"shard='params' splits parameters across several devices, but "
                f"the mesh's {FSDP_AXIS!r} axis has {mesh.shape[FSDP_AXIS]} "
                f"(JAX sees {seen} {jax.devices()[0].platform} device(s)){hint}"
            )
    if (
        isinstance(min_shard_size, bool)
        or not isinstance(min_shard_size, (int, np.integer))
        or min_shard_size < 1
    ):
        raise ValueError(
            f"min_shard_size must be a positive number of elements, got {min_shard_size!r}"
        )
    return DataParallel(mesh, shard == "params", int(min_shard_size))


def constrain_batch(step, dp: DataParallel):
    """The step with its batch split across dp's devices (for tracing inside jit/scan); with
    sharded parameters (dp.shard_params) also what it returns constrained as
    dp.place_train_state places it, so that params and opt_state stay split from step to
    step."""

    def sharded_step(params, state, opt_state, batch, key):
        batch = jax.lax.with_sharding_constraint(batch, dp.batch)
        params, state, opt_state, metrics = step(params, state, opt_state, batch, key)
        return (*dp.constrain_carry(params, state, opt_state), metrics)

    return sharded_step


def jit_step(step, dp: DataParallel, *, donate: bool = True, compiler_options=None):
    """step(params, state, opt_state, batch, key), jitted with the batch split across dp's
    devices and everything else replicated (sharded parameters: params and opt_state split per
    dp.param_sharding, in and out). Arguments are placed before each call (a no-op when they
    already are), so the first call may take plain single-device arrays. `.lower(*args)`
    lowers it for those arguments (.compile().memory_analysis(): per-device bytes).
    compiler_options: XLA's per-program options (remat: fnn.runtime.remat_compiler_options)."""
    rep, bat = dp.replicated, dp.batch
    donate_argnums = (0, 1, 2) if donate else ()
    if dp.shard_params:  # in: as placed below; out: as constrain_batch constrains them
        compiled = jax.jit(
            constrain_batch(step, dp),
            donate_argnums=donate_argnums,
            compiler_options=compiler_options,
        )
    else:
        compiled = jax.jit(
            constrain_batch(step, dp),
            in_shardings=(rep, rep, rep, bat, rep),
            out_shardings=rep,
            donate_argnums=donate_argnums,
            compiler_options=compiler_options,
        )

    def place(params, state, opt_state, batch, key):
        dp.check_batch_size(len(jax.tree_util.tree_leaves(batch)[0]))
        params, opt_state = dp.place_params((params, opt_state))
        state, key = dp.replicate((state, key))
        return params, state, opt_state, dp.shard(batch), key

    def call(params, state, opt_state, batch, key):
        return compiled(*place(params, state, opt_state, batch, key))

    call.lower = lambda *args: compiled.lower(*place(*args))  # for memory_analysis, HLO
    return call
