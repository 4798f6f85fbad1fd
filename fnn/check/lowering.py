"""Lowering for accelerators, checked on a machine without one: `jax.export` of a jitted function
for CUDA, ROCm and TPU (lowering only: no compilation, no device), and the exported module
searched for what only a CPU can run.

    report = check_lowering(jax.jit(step), *args)        # args: arrays or ShapeDtypeStructs
    report.ok, report.problems, report.targets, report.error, report.devices
    reports = check_lowerings({"mlp step": (step, args), ...})   # many, in one export

A function fails the check when
  - it does not lower for one of the platforms (all lowered in one export, so multi-platform
    lowering is checked too): a primitive without a rule there, a `lax.platform_dependent`
    with neither a branch for the platform nor a default;
  - it holds a host callback (jax.debug.callback, pure_callback, io_callback: the step would
    stop for the CPU, and export cannot serialize them; `host_callbacks` finds them);
  - its module calls a CPU-only custom call (LAPACK, DUCC's FFT, XLA's CPU callbacks, ...);
  - its module calls a custom call target not known to run on the platforms (PORTABLE_TARGETS,
    ACCELERATOR_TARGETS): a new target is a finding to look at, not silently accepted.

`check_lowerings` exports many functions as one program (each a nested jit: one lowering for
all, a fraction of the time of one export each) and exports them one at a time only when that
program fails, to name which of them do. `target_problems` is the same judgement on a list of
custom call targets alone, and `custom_call_targets` reads them from a module's text
(`jax.export.Exported.mlir_module()`).
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Mapping, Sequence

import jax

ACCELERATORS = ("cuda", "rocm", "tpu")
# targets every XLA backend knows: sharding annotations, shape checks, XLA's own expanders
PORTABLE_TARGETS = frozenset(
    {
        "Sharding",
        "SPMDFullToShardShape",
        "SPMDShardToFullShape",
        "annotate_device_placement",
        "shape_assertion",
        "AllocateBuffer",
        "ApproxTopK",
        "Eigh",
        "Qr",
        "LuDecomposition",
        "ProductOfElementaryHouseholderReflectors",
        "stablehlo.dynamic_approx_top_k",
        "stablehlo.dynamic_reduce_window",
        "stablehlo.dynamic_rng_bit_generator",
        "stablehlo.dynamic_top_k",
    }
)
# platform -> target name prefixes of its own libraries (a module exported for several
# platforms holds each one's branch of a platform-dependent lowering)
ACCELERATOR_TARGETS = {
    "cuda": ("cu_", "cusolver_", "cusparse_", "cublas", "cudnn", "mosaic_gpu"),
    "rocm": ("hip_", "hipsolver_", "hipsparse_", "hipblas", "miopen"),
    "tpu": ("tpu_custom_call",),
}
# name fragments of targets only XLA's CPU backend has
CPU_ONLY_FRAGMENTS = ("lapack", "ducc", "cpu", "eigen", "mkl", "onednn", "ynn")

_GENERIC = re.compile(r'call_target_name\s*=\s*"([^"]+)"')
_PRETTY = re.compile(r'stablehlo\.custom_call\s+@("(?:[^"\\]|\\.)+"|[\w.$-]+)')


@dataclasses.dataclass
class LoweringCheck:
    """One function exported for `platforms`: the custom call targets of its module, what is
    wrong (empty: it lowers for every platform and calls nothing CPU-only), the lowering error
    ('Type: message') if it did not lower, the seconds the export took and the number of
    devices the exported program runs on (None if it did not lower)."""

    platforms: tuple
    targets: list
    problems: list
    error: str | None
    seconds: float
    devices: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def custom_call_targets(module_text: str) -> list[str]:
    """The custom call targets named in a StableHLO module's text, sorted, each once (both the
    `stablehlo.custom_call @name(...)` and the generic `call_target_name = "name"` forms)."""
    found = set(_GENERIC.findall(module_text))
    found |= {name.strip('"') for name in _PRETTY.findall(module_text)}
    return sorted(found)


def target_problems(targets: Sequence[str], platforms: Sequence[str] = ACCELERATORS) -> list[str]:
    """What is wrong with calling these custom call targets on `platforms`: one line per target
    that is CPU-only, a host callback, or not known to run there (none: an empty list)."""
    problems = []
    for t in targets:
        low = t.lower()
        if "callback" in low:
            problems.append(
                f"custom call {t!r} is a host callback (the step must stay on the "
                "device; export cannot serialize it)"
            )
        elif any(f in low for f in CPU_ONLY_FRAGMENTS):
            problems.append(
                f"custom call {t!r} is CPU-only: it does not exist on {'/'.join(platforms)}"
            )
        elif t not in PORTABLE_TARGETS and not any(
            t.startswith(ACCELERATOR_TARGETS.get(p, ())) for p in platforms
        ):
            problems.append(
                f"custom call {t!r} is not known to run on {'/'.join(platforms)} "
                "(if it does, add it to fnn.check.lowering.PORTABLE_TARGETS or "
                "ACCELERATOR_TARGETS)"
            )
    return problems


def check_lowering(fn, *args, platforms: Sequence[str] = ACCELERATORS, **kwargs) -> LoweringCheck:
    """Export `fn` for `platforms` in one jax.export and judge its module (fnn.check.lowering).

    No device of those platforms is needed. Never raises for the function's faults: a lowering
    error becomes the report's `error` and a problem.

    Args:
        fn: the function (jitted here if it is not already).
        *args: its arguments: arrays or jax.ShapeDtypeStructs, shardings included.
        platforms: the platforms to export for (default ("cuda", "rocm", "tpu")).
        **kwargs: its keyword arguments.

    Returns:
        The LoweringCheck: custom call targets, problems (host callbacks, CPU-only custom calls,
        a lowering error), the error, the seconds the export took.

    Raises:
        ValueError: `platforms` is empty.
    """
    platforms = tuple(platforms)
    if not platforms:
        raise ValueError("check_lowering: platforms must name at least one platform")
    jitted = fn if hasattr(fn, "trace") else jax.jit(fn)
    t0 = time.perf_counter()
    problems = []
    try:  # host callbacks first: export refuses them, with a message that does not say so
        problems += [
            f"host callback {name!r} in the program (jax.debug.callback, "
            "pure_callback, io_callback): it runs on the CPU and export cannot "
            "serialize it"
            for name in host_callbacks(jitted.trace(*args, **kwargs).jaxpr)
        ]
        exported = jax.export.export(jitted, platforms=platforms)(*args, **kwargs)
        text = exported.mlir_module()
    except Exception as e:  # a function that does not lower is the finding: keep why
        message = f"{type(e).__name__}: {e}"
        problems.append(
            f"does not lower for {'/'.join(platforms)}: {message.splitlines()[0][:300]}"
        )
        return LoweringCheck(platforms, [], problems, message, time.perf_counter() - t0)
    targets = custom_call_targets(text)
    return LoweringCheck(
        platforms,
        targets,
        problems + target_problems(targets, platforms),
        None,
        time.perf_counter() - t0,
        int(exported.nr_devices),
    )


CALLBACK_PRIMITIVES = ("debug_callback", "pure_callback", "io_callback")


def host_callbacks(jaxpr) -> list[str]:
    """The names of the host-callback primitives in a (closed) jaxpr and the jaxprs nested in
    its equations (loops, conditionals, inner jits), in order of appearance."""
    found = []

    def walk(j):
        j = getattr(j, "jaxpr", j)  # a ClosedJaxpr's Jaxpr
        for eqn in j.eqns:
            if eqn.primitive.name in CALLBACK_PRIMITIVES:
                found.append(eqn.primitive.name)
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                        walk(sub)

    walk(jaxpr)
    return found


def check_lowerings(programs: Mapping, *, platforms: Sequence[str] = ACCELERATORS) -> dict:
    """Export several programs as one and judge them (check_lowering), each alone when that fails.

    All of them are exported as one program (each fn called as a nested jit, on its own
    arguments); when that program does not pass, each is exported alone, so the reports name
    the ones at fault. When it passes (or only the whole fails), every report is the shared one
    (its targets: those of the whole program). The functions must agree on the devices they run
    on (one mesh, or none).

    Args:
        programs: name -> (fn, args).
        platforms: as for check_lowering.

    Returns:
        name -> LoweringCheck ({} for no programs).

    Raises:
        ValueError: `platforms` is empty.
    """
    names = list(programs)
    if not names:
        return {}
    fns = [fn if hasattr(fn, "trace") else jax.jit(fn) for fn, _ in programs.values()]
    inputs = [tuple(args) for _, args in programs.values()]

    def together(inputs):
        return [fn(*args) for fn, args in zip(fns, inputs)]

    shared = check_lowering(jax.jit(together), inputs, platforms=platforms)
    if shared.ok:
        return {name: shared for name in names}
    alone = {
        name: check_lowering(fn, *args, platforms=platforms)
        for name, fn, args in zip(names, fns, inputs)
    }
    if all(r.ok for r in alone.values()):  # only the whole fails: do not hide it
        return {name: shared for name in names}
    return alone
