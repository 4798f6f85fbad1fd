"""Process-wide settings that make XLA's CPU backend run training steps faster.

`tune_cpu()` is what `python -m fnn ...` (and the `fnn` script, scripts/train_*.py) call before
JAX starts its backend; programs that `import fnn` may call it first thing themselves. It changes
nothing about the values computed by either gradient (fnn's or jax.grad's); it changes which CPU
kernels run the convolutions and how the step's scratch memory is allocated:

1. XLA flag `--xla_cpu_experimental_ynn_fusion_type=reduce,individual_dot`: matrix products
   and reductions stay with YNNPACK, convolutions go to XLA's Eigen kernels, which run the
   convolutions of the CNN and ResNet steps faster on CPU; steps without convolutions (the
   MLPs) are unchanged, for fnn's rules and jax.grad alike (the measurements are in
   docs/benchmarks.md). Added to XLA_FLAGS only when jaxlib knows the flag and the user's
   XLA_FLAGS do not already set it (an unknown flag would abort JAX at start-up).
2. glibc malloc (Linux): one arena, allocations up to 1 GiB served from the heap and the heap
   never trimmed below 2 GiB. XLA allocates a step's scratch memory (tens to hundreds of MiB)
   at every call; by default glibc serves each such block with a fresh mmap, so every page of
   it is faulted in again at every step (docs/benchmarks.md counts the page faults per step
   and what they cost). With these settings the blocks are reused, with no page faults per
   step. The cost is that
   up to 2 GiB of freed memory stays with the process instead of going back to the system.
   Left alone when JAX may run on an accelerator (a CUDA/ROCm/TPU plugin is installed and
   JAX_PLATFORMS does not say cpu), and when glibc refuses the 1 GiB mmap threshold (then
   nothing is changed: older glibc caps it at 32 MiB).

Neither changes the mathematics: no precision, fast-math or algorithm setting is touched, the
same operations run, only in other convolution kernels and with memory allocated otherwise. The
one visible effect on values: a convolution kernel may add its float32 products in another order,
so some results differ in their last bits (a CNN's gradients: most leaves bit-identical, the
others within 5e-7 absolute), as between any two XLA kernels or versions. The malloc settings
change no bit.

Both must happen before the backend starts (the first computation, jax.devices(), ...): after
that XLA has read its flags and its threads have their malloc arenas, so `tune_cpu` then changes
nothing and says so. Set FNN_NO_TUNE=1 (or pass --no-tune to the command line) to keep JAX's
defaults, e.g. to compare.

`import fnn` applies them itself (`tune_on_import`, the first thing fnn/__init__.py does), so a
script that imports fnn gets the fast path without a call, as `python -m fnn` does. When JAX's
CPU backend had already started before `import fnn`, it warns once (FnnTuningWarning) with
what to do; FNN_NO_TUNE=1 opts out of both. What the import did is kept in `AT_IMPORT` (written
once, read by the command line and the benchmarks to report the settings).
"""

from __future__ import annotations

import ctypes
import importlib.util
import mmap
import os
import pkgutil
import sys
import warnings
from pathlib import Path

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
YNN_VALUE = "reduce,individual_dot"
# the flag's name and the names of its two values, as jaxlib's binary spells them
_YNN_NEEDS = (
    YNN_FLAG[2:].encode(),
    b"LIBRARY_FUSION_TYPE_REDUCE",
    b"LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters
# in this order: the mmap threshold first, so that a glibc refusing it is left as it was
# (mallopt takes a C int: 2**31 - 1 is the largest trim threshold it can be given)
MALLOC_SETTINGS = ((M_MMAP_THRESHOLD, 1 << 30), (M_ARENA_MAX, 1), (M_TRIM_THRESHOLD, 2**31 - 1))
OFF = ("", "0", "false", "no", "off")  # FNN_NO_TUNE values that do not opt out


def backend_started() -> bool:
    """Whether JAX has started its backends (after which XLA flags no longer take effect)."""
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # another JAX: assume the worst
        return True


def jaxlib_knows_ynn_flag() -> bool:
    """Whether the installed jaxlib has the YNNPACK fusion flag and its values (searched for in
    its shared library: an unknown flag in XLA_FLAGS would abort JAX)."""
    try:
        import jaxlib
    except ImportError:
        return False
    for lib in sorted(Path(jaxlib.__file__).parent.glob("*.so")):
        try:
            with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if all(m.find(s) >= 0 for s in _YNN_NEEDS):
                    return True
        except (OSError, ValueError):
            continue
    return False


def accelerator_plugin(environ=None) -> str | None:
    """The name of an installed JAX accelerator plugin (CUDA, ROCm, TPU) that JAX may use, found
    without starting JAX; None when there is none or JAX_PLATFORMS names only the CPU."""
    environ = os.environ if environ is None else environ
    platforms = {p.strip() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()}
    if platforms and platforms <= {"cpu"}:
        return None
    names = []
    try:
        import jax_plugins

        names = [m.name for m in pkgutil.iter_modules(jax_plugins.__path__)]
    except ImportError:
        pass
    names += [
        n
        for n in ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu")
        if importlib.util.find_spec(n) is not None
    ]
    return next((n for n in names if any(k in n for k in ("cuda", "rocm", "tpu"))), None)


def _tune_malloc() -> str | None:
    """Apply MALLOC_SETTINGS through glibc's mallopt; None, or why it was not done."""
    if not sys.platform.startswith("linux"):
        return f"malloc: left alone ({sys.platform} is not Linux)"
    try:
        libc_version = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        libc_version = ""
    if not libc_version.startswith("glibc"):
        return "malloc: left alone (not glibc)"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "malloc: left alone (no mallopt in this process)"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    for i, (param, value) in enumerate(MALLOC_SETTINGS):
        if mallopt(param, value) != 1:
            return f"malloc: mallopt refused parameter {param} = {value}" + (
                " (nothing changed)" if i == 0 else ""
            )
    return None


def tune_cpu(*, xla: bool = True, malloc: bool = True, environ=None) -> dict:
    """Apply fnn's faster XLA CPU settings (fnn.runtime's docstring); return what was done.

    The XLA flag that sends convolutions to XLA's Eigen kernels and glibc malloc settings that
    reuse a step's scratch memory. Neither changes the mathematics. Both must happen before JAX's
    backend starts; after that nothing is changed and the notes say so. `import fnn` already calls
    it (FNN_NO_TUNE=1 keeps JAX's defaults).

    Args:
        xla: add the XLA flag to XLA_FLAGS (when jaxlib knows it and XLA_FLAGS does not set it).
        malloc: apply the malloc settings (Linux glibc; left alone when JAX may run on an
            accelerator).
        environ: where XLA_FLAGS and FNN_NO_TUNE are read and written (default os.environ).

    Returns:
        `{"xla_flags": the XLA flag added or None, "malloc": whether the malloc settings were
        applied, "notes": [why something was not done, ...]}`.
    """
    environ = os.environ if environ is None else environ
    done = {"xla_flags": None, "malloc": False, "notes": []}
    if environ.get("FNN_NO_TUNE", "").strip().lower() not in OFF:
        done["notes"].append("FNN_NO_TUNE is set: JAX's defaults kept")
        return done
    if backend_started():
        done["notes"].append(
            "JAX's backend has already started: settings unchanged (call "
            "fnn.tune_cpu() before the first computation)"
        )
        return done
    if xla:
        flags = environ.get("XLA_FLAGS", "")
        if YNN_FLAG in flags:
            done["notes"].append(f"XLA_FLAGS already sets {YNN_FLAG}: kept")
        elif not jaxlib_knows_ynn_flag():
            done["notes"].append(f"this jaxlib has no {YNN_FLAG}: XLA_FLAGS unchanged")
        else:
            flag = f"{YNN_FLAG}={YNN_VALUE}"
            environ["XLA_FLAGS"] = f"{flags} {flag}".strip()
            done["xla_flags"] = flag
    plugin = accelerator_plugin(environ) if malloc else None
    if plugin:
        done["notes"].append(f"malloc: left alone (JAX may run on an accelerator: {plugin})")
    elif malloc:
        why = _tune_malloc()
        done["malloc"] = why is None
        if why:
            done["notes"].append(why)
    return done


class FnnTuningWarning(UserWarning):
    """fnn's CPU settings could not be applied at import (JAX's backend had already started)."""


AT_IMPORT: dict | None = None  # what tune_on_import did (None: not run); written once, at import


def _opted_out_on_command_line(argv=None) -> bool:
    """`python -m fnn ... --no-tune` or `fnn ... --no-tune`: the package is imported before the
    command line is parsed, so its --no-tune is looked for here (and only for fnn's own entry
    points: while `python -m fnn` locates its module, sys.argv[0] is "-m")."""
    argv = sys.argv if argv is None else argv
    if not argv or "--no-tune" not in argv[1:]:
        return False
    return argv[0] == "-m" or os.path.basename(argv[0]) in ("fnn", "__main__.py")


def tune_on_import(environ=None, argv=None) -> dict:
    """What `import fnn` does first: tune_cpu() while JAX's backend has not started (a plain
    `import fnn` script then runs as fast as `python -m fnn`); when it has, nothing is changed and
    a FnnTuningWarning says what to do, once, and only when the backend is the CPU (the settings
    concern the CPU alone). FNN_NO_TUNE=1 or the command line's --no-tune: nothing at all."""
    global AT_IMPORT
    environ = os.environ if environ is None else environ
    if AT_IMPORT is not None:  # once per process
        return AT_IMPORT
    if environ.get("FNN_NO_TUNE", "").strip().lower() not in OFF or _opted_out_on_command_line(
        argv
    ):
        done = {"xla_flags": None, "malloc": False, "notes": ["opted out: JAX's defaults kept"]}
    elif backend_started():
        done = {
            "xla_flags": None,
            "malloc": False,
            "notes": ["JAX's backend started before `import fnn`: settings unchanged"],
        }
        if _default_backend_is_cpu():
            warnings.warn(
                "JAX's backend started before `import fnn`, so fnn's faster CPU settings (XLA's "
                "Eigen convolutions, malloc that keeps XLA's scratch memory; see fnn.runtime) "
                "were not applied and CNN steps may run ~2x slower. Import fnn before the first "
                "JAX computation (jax.devices(), any array), or set FNN_NO_TUNE=1 to keep JAX's "
                "defaults and silence this.",
                FnnTuningWarning,
                stacklevel=3,
            )
    else:
        done = tune_cpu(environ=environ)
    AT_IMPORT = done
    return done


def _default_backend_is_cpu() -> bool:
    try:
        import jax

        return jax.default_backend() == "cpu"
    except Exception:  # noqa: BLE001  (a broken backend: nothing to tune either way)
        return False


# ---- rematerialization (fnn.checkpoint) on XLA CPU -----------------------------------------------
# XLA's CPU pipeline removes optimization barriers early ("cse_barrier_expander"), before CSE and
# scheduling; the recomputation a checkpoint asks for is then merged back into the forward (CSE)
# or scheduled at the start of the program, and no memory is saved (docs/benchmarks.md measures
# it). Keeping the barriers makes the recomputation wait for the backward, as on GPU and TPU.
REMAT_CPU_OPTIONS = {"xla_disable_hlo_passes": "cse_barrier_expander"}


def remat_compiler_options(backend: str | None = None) -> dict:
    """The per-program XLA options a program using fnn.checkpoint / jax.checkpoint needs for its
    rematerialization to save memory: REMAT_CPU_OPTIONS on the CPU backend, {} elsewhere (other
    backends keep the barriers already). Pass them to `jax.jit(f, compiler_options=...)` or
    `.lower(...).compile(compiler_options=...)`; they change no value, only what XLA may move.
    backend: 'cpu', 'gpu', ... (default: JAX's default backend, which this starts)."""
    if backend is None:
        import jax  # the backend starts here, at the first program, as it would anyway

        backend = jax.default_backend()
    return dict(REMAT_CPU_OPTIONS) if backend == "cpu" else {}
