"""Several processes, one run (multi-host JAX): joining it, and deciding things together.

    from fnn.train import distributed
    distributed.initialize()        # first of all: before anything starts JAX's backend
    ts, history = fnn.train.fit(model, opt, data, epochs=5, batch_size=256)  # every device

`initialize` calls `jax.distributed.initialize`. Its three values come from its arguments
(`python -m fnn train --coordinator HOST:PORT --num-processes N --process-id I`), else from
the environment: JAX_COORDINATOR_ADDRESS (JAX's own variable), FNN_NUM_PROCESSES and
FNN_PROCESS_ID (what `python -m fnn launch` sets), else from a cluster JAX detects itself
(SLURM's srun, Open MPI's mpirun, a Kubernetes indexed job, a Cloud TPU pod), where nothing
needs to be given. When none of these says anything, or the count is 1, it does nothing: one
process. CPU collectives run over gloo (`jax_cpu_collectives_implementation`), so processes of
host CPU devices train together as processes of accelerators do.

Joining is bounded by `timeout` seconds. JAX ends a process that cannot join with an abort
Python cannot catch, so fnn says why first, on stderr, and ends the process with status 1
(JOIN_FAILED): nothing answered at the coordinator's address (process 0 not started, or an
address this host cannot reach), or it answered but not every process joined.

Once joined, every process runs the same program and must take the same decisions, or they
wait for one another in a collective forever. `together(what)` makes an error of one process
an error of all (the others raise DistributedError naming it and its message, instead of
waiting for it); `same(what, value)` checks that every process has the same value of
something (the options of the run, the checkpoint it resumes from); `agree_stop` makes every
process stop at the same chunk of an epoch when any of them is asked to (Ctrl-C, SIGTERM).
They use JAX's collectives (multihost_utils.process_allgather) and cost nothing with one
process.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import threading

import jax
import numpy as np

from fnn.errors import FnnError
from fnn.runtime import backend_started

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"  # read by jax.distributed.initialize itself too
ENV_NUM_PROCESSES = "FNN_NUM_PROCESSES"
ENV_PROCESS_ID = "FNN_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "JAX_LOCAL_DEVICE_IDS"  # JAX's: the accelerators a process may use
JOIN_TIMEOUT = 300.0  # seconds (jax.distributed.initialize's default)
JOIN_FAILED = 1  # the exit status of a process that could not join
_JAX_GRACE = 10  # JAX's own timeout is this much longer, so that fnn's message comes first
_MESSAGE_BYTES = 2048  # what together() and same() send of each process's text


class DistributedError(FnnError, RuntimeError):
    """Several processes could not join or agree: a process failed, or they differ."""


def parse_address(text: str, what: str = "coordinator") -> str:
    """`text` if it is HOST:PORT (an IPv6 host in brackets, [::1]:1234), else a ValueError
    naming `what` and the value."""
    host, sep, port = str(text).rpartition(":")
    ok = sep and host and port.isdigit() and 1 <= int(port) <= 65535
    if ok and host.startswith("["):
        ok = host.endswith("]") and len(host) > 2
    if not ok:
        raise ValueError(
            f"{what} must be HOST:PORT with a port from 1 to 65535 (e.g. "
            f"10.0.0.1:1234), got {text!r}"
        )
    return str(text)


def _env_count(name: str, low: int) -> int | None:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return None
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low:
        raise DistributedError(
            f"the environment variable {name}={text!r} must be an integer >= {low}"
        )
    return value


def cluster_name() -> str | None:
    """The name of the cluster environment JAX's detection finds (SlurmCluster,
    OmpiCluster, K8sCluster, GkeTpuCluster, ...), or None. (JAX keeps the list in a private
    module; another JAX without it: None, and jax.distributed.initialize still detects.)"""
    try:
        from jax._src.clusters import ClusterEnv

        kinds = list(ClusterEnv._cluster_types)
    except (ImportError, AttributeError):
        return None
    for kind in kinds:
        if getattr(kind, "opt_in_only_method", False):
            continue
        with contextlib.suppress(Exception):  # a detector that cannot tell: not present
            if kind.is_env_present():
                return kind.__name__
    return None


def _detect(coordinator, num_processes, process_id, timeout):
    """The values JAX's cluster detection gives those that are None (its private helper; the
    values it fills are what jax.distributed.initialize would find itself)."""
    from jax._src.clusters import ClusterEnv

    found = ClusterEnv.auto_detect_unset_distributed_params(
        coordinator, num_processes, process_id, None, None, int(timeout)
    )
    return found[0], found[1], found[2], found[3]


def _given(coordinator, num_processes, process_id, timeout):
    """((coordinator, num_processes, process_id), where they came from): initialize's
    arguments checked (ValueError naming one), those not given from the environment."""
    if coordinator is not None:
        coordinator = parse_address(coordinator)
    for name, v, low in (("num_processes", num_processes, 1), ("process_id", process_id, 0)):
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low
        ):
            raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not 0 < timeout < math.inf
    ):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    source = "the arguments"
    if coordinator is None and os.environ.get(ENV_COORDINATOR):
        coordinator, source = (
            parse_address(os.environ[ENV_COORDINATOR], ENV_COORDINATOR),
            "the environment",
        )
    if num_processes is None:
        num_processes = _env_count(ENV_NUM_PROCESSES, 1)
    if process_id is None:
        process_id = _env_count(ENV_PROCESS_ID, 0)
    return (coordinator, num_processes, process_id), source


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout: float = JOIN_TIMEOUT,
) -> bool:
    """Join a run of several processes (jax.distributed.initialize); True when it did, False
    for one process (nothing given anywhere, or a count of 1). See the module docstring for
    where the values come from. Must run before anything starts JAX's backend (an array,
    jax.devices()). A process that cannot join within `timeout` seconds is ended (status
    JOIN_FAILED) after saying why on stderr. Calling it again once joined checks the values
    and returns True."""
    given, source = _given(coordinator, num_processes, process_id, timeout)
    coordinator, num_processes, process_id = given
    if jax.distributed.is_initialized():
        return _check_joined(num_processes, process_id)
    cluster = cluster_name() if None in given else None
    if cluster is None and all(v is None for v in given):
        return False  # one process
    if num_processes == 1 and cluster is None:
        return False
    if cluster is not None:
        coordinator, num_processes, process_id, local = _detect(*given, timeout)
        source = f"the {cluster} environment"
    else:
        local = None
        _require_given(given)
    _check_can_join(coordinator, num_processes, process_id, source)
    _join(coordinator, num_processes, process_id, local, timeout)
    return _check_joined(num_processes, process_id)


def _require_given(given) -> None:
    """DistributedError naming those of (coordinator, num_processes, process_id) not given,
    when no cluster that JAX detects gives them."""
    missing = [
        n
        for n, v in zip(
            (
                "--coordinator (JAX_COORDINATOR_ADDRESS)",
                f"--num-processes ({ENV_NUM_PROCESSES})",
                f"--process-id ({ENV_PROCESS_ID})",
            ),
            given,
        )
        if v is None
    ]
    if missing:
        raise DistributedError(
            f"joining a run of several processes needs a coordinator address, a process "
            f"count and a process id; {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not given, and no cluster that JAX "
            f"detects (SLURM, Open MPI, Kubernetes, Cloud TPU) is found"
        )


def _check_can_join(coordinator, num_processes, process_id, source: str) -> None:
    """DistributedError unless the values (from `source`) are all there, the id is in range
    and JAX's backend is not started yet."""
    if None in (coordinator, num_processes, process_id):
        raise DistributedError(
            f"{source} did not give a coordinator address, a process count "
            f"and a process id (got {coordinator!r}, {num_processes!r}, "
            f"{process_id!r})"
        )
    if not 0 <= process_id < num_processes:
        raise DistributedError(
            f"process id {process_id} is out of range for {num_processes} "
            f"processes (0 to {num_processes - 1}; from {source})"
        )
    if backend_started():
        raise DistributedError(
            "fnn.train.distributed.initialize (jax.distributed.initialize) "
            "must run before anything starts JAX's backend (an array, "
            "jax.devices(), a jitted call): call it first"
        )


def _join(coordinator, num_processes, process_id, local, timeout) -> None:
    """jax.distributed.initialize over gloo's CPU collectives, under the watchdog that ends
    the process with a reason when joining takes longer than `timeout` seconds."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    watchdog = threading.Timer(timeout, _give_up, (coordinator, num_processes, process_id, timeout))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=local,
            initialization_timeout=int(math.ceil(timeout)) + _JAX_GRACE,
        )
    except (ValueError, TypeError, RuntimeError) as e:  # refused before connecting
        raise DistributedError(
            f"process {process_id} of {num_processes} could not join the run at {coordinator}: {e}"
        ) from None
    finally:
        watchdog.cancel()


def _check_joined(num_processes, process_id) -> bool:
    """True once joined, if the run is the one asked for (DistributedError otherwise)."""
    if num_processes not in (None, jax.process_count()) or process_id not in (
        None,
        jax.process_index(),
    ):
        raise DistributedError(
            f"this process already joined a run as process "
            f"{jax.process_index()} of {jax.process_count()}, not as "
            f"process {process_id} of {num_processes}"
        )
    return True


def _answers(coordinator: str) -> bool:
    """Whether something accepts a TCP connection at the coordinator's address (only to say
    why joining failed; nothing is sent)."""
    host, _, port = coordinator.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
            return True
    except OSError:
        return False


def _give_up(coordinator, num_processes, process_id, timeout) -> None:
    """The watchdog of initialize: say why joining failed and end the process (JAX would
    abort it a moment later, without a word Python can catch)."""
    same = (
        f"each of the {num_processes} processes must start with the same coordinator and "
        f"process count and its own process id, 0 to {num_processes - 1}"
    )
    if process_id == 0:
        why = (
            f"process 0 started the coordinator at {coordinator}, but not every one of the "
            f"{num_processes} processes joined within {timeout:g} s ({same})"
        )
    elif not _answers(coordinator):
        why = (
            f"process {process_id} of {num_processes} found no coordinator at {coordinator} "
            f"within {timeout:g} s: it runs in process 0; is process 0 started, and is "
            f"that an address of its host that this host can reach?"
        )
    else:
        why = (
            f"process {process_id} of {num_processes} reached the coordinator at "
            f"{coordinator}, but not every process joined within {timeout:g} s ({same})"
        )
    sys.stderr.write(f"fnn: error: could not join the run: {why}\n")
    sys.stderr.flush()
    os._exit(JOIN_FAILED)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (the system's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def process_env(
    coordinator: str, num_processes: int, process_id: int, devices_per_process: int, environ=None
) -> dict:
    """The environment of process `process_id` of a run launched on one machine: the
    coordinator, count and id initialize reads, the accelerators it may use
    (JAX_LOCAL_DEVICE_IDS: devices_per_process of them, after those of the processes before
    it) and as many host CPU devices (XLA's --xla_force_host_platform_device_count)."""
    env = dict(os.environ if environ is None else environ)
    first = process_id * devices_per_process
    flags = [
        f
        for f in env.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    env.update(
        {
            ENV_COORDINATOR: coordinator,
            ENV_NUM_PROCESSES: str(num_processes),
            ENV_PROCESS_ID: str(process_id),
            ENV_LOCAL_DEVICE_IDS: ",".join(str(first + k) for k in range(devices_per_process)),
            "XLA_FLAGS": " ".join(
                [*flags, f"--xla_force_host_platform_device_count={devices_per_process}"]
            ),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


# ---- deciding together: each a collective of every process; nothing with one process -------
def _allgather_text(text: str) -> list[str]:
    """`text` of every process (each cut to _MESSAGE_BYTES of UTF-8), by process index."""
    from jax.experimental import multihost_utils

    data = text.encode()[: _MESSAGE_BYTES - 4]
    buf = np.zeros(_MESSAGE_BYTES, np.uint8)
    buf[:4] = np.frombuffer(np.uint32(len(data)).tobytes(), np.uint8)
    buf[4 : 4 + len(data)] = np.frombuffer(data, np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(buf))
    out = []
    for row in rows:
        n = int(np.frombuffer(row[:4].tobytes(), np.uint32)[0])
        out.append(row[4 : 4 + n].tobytes().decode(errors="replace"))
    return out


@contextlib.contextmanager
def together(what: str):
    """A block every process runs; an error in any of them ends it in all: the process that
    failed raises its own error, the others a DistributedError naming the process, `what`
    it was doing and its error (instead of waiting for it in the next collective)."""
    if jax.process_count() == 1:
        yield
        return
    try:
        yield
    except BaseException as e:
        text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        with contextlib.suppress(Exception):  # its own error matters more than the others'
            _allgather_text(text)
        raise
    failed = [(i, m) for i, m in enumerate(_allgather_text("")) if m]
    if failed:
        i, message = failed[0]
        raise DistributedError(f"process {i} of {jax.process_count()} failed {what}: {message}")


def same(what: str, value: dict) -> None:
    """DistributedError unless every process has the same `value` (a JSON-able dict), naming
    the keys where a process differs from process 0."""
    if jax.process_count() == 1:
        return
    text = json.dumps(value, sort_keys=True, default=str)
    texts = _allgather_text(text)
    if len(set(texts)) == 1:
        return
    mine = json.loads(texts[0]) if texts[0] else {}
    for i, other in enumerate(texts[1:], 1):
        if other == texts[0]:
            continue
        theirs = json.loads(other) if other else {}
        keys = sorted(k for k in {*mine, *theirs} if mine.get(k) != theirs.get(k))
        said = "; ".join(
            f"{k}: {mine.get(k)!r} in process 0, {theirs.get(k)!r} in process {i}" for k in keys[:6]
        )
        raise DistributedError(
            f"the processes of this run differ in {what} ({said}): every "
            "process must run the same command on the same files"
        )


def agree_stop(requested: bool, steps: int = 0) -> tuple[bool, int]:
    """(whether any process was asked to stop, the fewest `steps` of any): what every process
    of a run does next, the same in all. One process: (requested, steps)."""
    if jax.process_count() == 1:
        return bool(requested), steps
    from jax.experimental import multihost_utils

    rows = np.asarray(
        multihost_utils.process_allgather(np.array([int(bool(requested)), steps], np.int32))
    )
    return bool(rows[:, 0].any()), int(rows[:, 1].min())
