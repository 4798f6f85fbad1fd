"""Memory of a training run: what it needs, what the device has, and a clear error when it
does not fit, before the first step (`check_fits`) or when XLA runs out (`out_of_memory`).

    Footprint: parameters, optimizer state, model state (BatchNorm statistics), the training
    data placed on the device, the activations of one batch (every layer's output, from
    shapes alone, through the combinators' observe hook) and XLA's working memory for the
    compiled epoch (its memory analysis, where the backend reports one). With data
    parallelism every figure is what one device holds: its slice of the split parameters and
    optimizer state (shard="params"), its share of each batch, the replicated rest whole.

The remedies named are the options that shrink each part.
"""

from __future__ import annotations

import dataclasses
import resource
from typing import Callable

import jax
import numpy as np

from fnn.errors import FnnError

REMEDIES = (
    "a smaller --batch-size (batch_size=; activations grow with it), a smaller model "
    "(--hidden, --channels), fewer examples on the device (--limit), or data parallel "
    "--devices N on a machine with several devices (each holds 1/N of a batch), with "
    "--shard params when the parameters and optimizer state are what does not fit "
    "(each device then holds about 1/N of them)"
)


class OutOfMemoryError(FnnError, MemoryError):
    """Training needs more memory than the device has.

    The message gives the sizes and the options that reduce them.
    """


def tree_bytes(tree, per_device: bool = False) -> int:
    """Bytes of every array leaf of a pytree (arrays or ShapeDtypeStructs). per_device: the
    bytes one device holds, a leaf split by its sharding counted by its shard's shape (a
    replicated or unsharded leaf whole)."""
    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        dtype = getattr(leaf, "dtype", None)
        if dtype is None:
            continue
        shape = tuple(leaf.shape)
        sharding = getattr(leaf, "sharding", None) if per_device else None
        if sharding is not None:
            shape = tuple(sharding.shard_shape(shape))
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            total += 8 * int(np.prod(shape))
            continue
        total += int(np.prod(shape)) * np.dtype(dtype).itemsize
    return total


def activation_bytes(model, params, state, input_shape, batch_size: int) -> int:
    """Bytes of every layer's output for one batch in training mode (shapes only: the model is
    traced with jax.eval_shape on one example, nothing is computed)."""
    outs = []

    def run(params, state, x):
        def observe(path, layer, y):
            if not layer.children:
                outs.append(jax.ShapeDtypeStruct(y.shape, y.dtype))

        y, _ = model.apply(
            params,
            state,
            x,
            key=jax.random.PRNGKey(0),
            train=True,
            observe=observe if model.children else None,
        )
        return y

    x = jax.ShapeDtypeStruct((1, *input_shape), np.float32)
    try:
        y = jax.eval_shape(run, params, state, x)
    except Exception:  # a model that cannot be traced here says so in fit, not in an estimate
        return 0
    if not outs:
        outs.append(y)
    return tree_bytes(outs) * batch_size


@dataclasses.dataclass
class Footprint:
    """Bytes a training run needs, by part (see the module docstring)."""

    params: int
    opt_state: int
    state: int
    data: int
    measure_activations: Callable[[], int] | int  # bytes, or how to measure them when asked
    batch_size: int
    xla_temp: int | None = None
    devices: int = 1  # >1: every figure is one device's (data parallel over this many)

    @property
    def activations(self) -> int:
        """The activations of one batch (activation_bytes): the model is traced for them only
        when they are asked for (XLA's own figure, xla_temp, is what a run is checked with)."""
        if callable(self.measure_activations):
            self.measure_activations = self.measure_activations()
        return self.measure_activations

    @property
    def working(self) -> int:
        """Memory a training step needs beyond its inputs: XLA's figure for the compiled
        program, or (a backend that reports none) the activations and their gradients."""
        return self.xla_temp if self.xla_temp else 2 * self.activations

    @property
    def total(self) -> int:
        return self.params + self.opt_state + self.state + self.data + self.working

    def describe(self) -> str:
        share = "" if self.devices == 1 else f" (its {self.batch_size // self.devices} examples)"
        parts = [
            f"parameters {_size(self.params)}",
            f"optimizer state {_size(self.opt_state)}",
            f"model state {_size(self.state)}",
            f"training data {_size(self.data)}",
            f"activations of one batch of {self.batch_size}{share} "
            f"{_size(self.activations)} (about twice that with their gradients)",
        ]
        if self.xla_temp:
            parts.append(f"XLA's working memory for the compiled steps {_size(self.xla_temp)}")
        text = ", ".join(parts)
        return text if self.devices == 1 else f"per device, of {self.devices}: {text}"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def footprint(
    model, ts, input_shape, batch_size: int, data_bytes: int, compiled=None, devices: int = 1
) -> Footprint:
    """The Footprint of training `ts` (a TrainState) on batches of `batch_size`; devices > 1:
    data parallel over that many devices, each figure one device's (ts placed as it trains:
    split leaves counted by their slice; data_bytes is what each device holds)."""
    temp = xla_temp_bytes(compiled) if compiled is not None else None
    one = devices > 1
    params, state = (
        jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), t)
        for t in (ts.params, ts.state)
    )  # shapes: the arrays may be donated since

    def activations() -> int:
        return activation_bytes(model, params, state, input_shape, max(1, batch_size // devices))

    return Footprint(
        tree_bytes(ts.params, one),
        tree_bytes(ts.opt_state, one),
        tree_bytes(ts.state, one),
        data_bytes,
        activations,
        batch_size,
        temp,
        devices,
    )


def xla_temp_bytes(compiled) -> int | None:
    """XLA's working memory (temporary buffers) for a compiled program; None when the backend
    reports none."""
    try:
        return int(compiled.memory_analysis().temp_size_in_bytes) or None
    except Exception:  # a backend without a memory analysis: the estimate alone
        return None


def available_bytes(device) -> tuple[int | None, str]:
    """(bytes this process can still allocate on `device`, what that figure is); None when
    unknown. An accelerator reports its own (memory_stats); on the CPU it is the system's
    available memory, or less where an address-space limit (ulimit -v) leaves less."""
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # backends without memory statistics
        stats = None
    if stats and stats.get("bytes_limit"):
        free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return free, f"free memory of {device.device_kind}"
    if device.platform != "cpu":
        return None, "unknown"
    free, what = None, "unknown"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free, what = int(line.split()[1]) * 1024, "available system memory"
    except OSError:
        pass
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        used = _address_space()
        if used is not None and (free is None or limit - used < free):
            free, what = max(0, limit - used), "address space left under ulimit -v"
    return free, what


def _address_space() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits(fp: Footprint, device) -> None:
    """OutOfMemoryError before training when one step's working memory is more than the
    device has left (the parameters and data are already placed, so they are counted in it)."""
    free, what = available_bytes(device)
    if free is not None and fp.working > free:
        raise OutOfMemoryError(
            f"this training run does not fit in memory: a step needs about "
            f"{_size(fp.working)} of working memory but the {what} is {_size(free)} "
            f"({fp.describe()}). Reduce it with {REMEDIES}"
        )


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is XLA failing to allocate. JAX raises every runtime failure of XLA as
    jax.errors.JaxRuntimeError, with XLA's status code only as the first word of its message
    (jaxlib has no subclass or attribute for it), so that word is read; nothing else is."""
    if not isinstance(error, jax.errors.JaxRuntimeError):
        return False
    return str(error).lstrip().startswith("RESOURCE_EXHAUSTED")


def out_of_memory(error: BaseException, fp: Footprint | None, where: str) -> OutOfMemoryError:
    """The OutOfMemoryError explaining XLA's RESOURCE_EXHAUSTED `error` met in `where`."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else "RESOURCE_EXHAUSTED"
    sizes = f" The run needs {fp.describe()}." if fp is not None else ""
    return OutOfMemoryError(
        f"out of memory {where} (XLA: {first[:200]}).{sizes} Reduce it "
        f"with {REMEDIES}; the last checkpoint, if any, is unchanged"
    )


def init_out_of_memory(
    error: BaseException, model, optimizer, input_shape, where: str
) -> OutOfMemoryError:
    """The OutOfMemoryError of XLA's RESOURCE_EXHAUSTED `error` while the training state of
    `model` and `optimizer` was made (`where`): with the sizes of its parameters and optimizer
    state (from shapes alone)."""
    from fnn.train.state import init_train_state

    try:

        def make():
            ts = init_train_state(model, optimizer, tuple(input_shape), 0)
            return ts.params, ts.opt_state, ts.state

        params, opt_state, state = jax.eval_shape(make)
        sizes = (
            f" The run needs parameters {_size(tree_bytes(params))}, optimizer state "
            f"{_size(tree_bytes(opt_state))} and model state {_size(tree_bytes(state))}."
        )
    except Exception:  # no sizes: the message without them
        sizes = ""
    first = str(error).strip().splitlines()[0] if str(error).strip() else "RESOURCE_EXHAUSTED"
    return OutOfMemoryError(
        f"out of memory {where} (XLA: {first[:200]}).{sizes} Reduce it "
        f"with {REMEDIES}; the last checkpoint, if any, is unchanged"
    )
