"""The whole run: every case asked for, its rows and issue 5's targets (`python -m fnn bench`,
whose command line is fnn.cli.bench)."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

from fnn.bench.cases import CASES, STEP_CASES, gate_inputs, model_specs
from fnn.bench.report import fmt_row, targets
from fnn.bench.steps import bench_epoch, bench_gate, bench_step
from fnn.bench.timing import ATTEMPTS, LOAD_TOLERANCE, bench_matmul, gemm, load_average, machine


def _asked(only) -> tuple[set, list]:
    """(the cases asked for, the gates among them): a case unknown is a ValueError."""
    from fnn.ops import aliases, registry

    named = set(registry.named) | set(aliases.__all__)  # gates, and the lecture's names
    only = set(only or CASES)
    models = {c for c in only if c.startswith("jax:")}  # one plain JAX model: jax:fno
    unknown = only - set(CASES) - named - models
    if models:
        from fnn.bench import jax_models

        unknown |= models - {f"jax:{m}" for m in jax_models.MODELS}
    if unknown:
        raise ValueError(
            f"unknown bench case(s) {', '.join(sorted(unknown))}; choose from "
            f"{', '.join(CASES)}, gate names or jax:MODEL (a model of 'jax')"
        )
    return only, (sorted(named) if "gates" in only else sorted(only & named))


def plan(
    *,
    only=None,
    reps: int = 50,
    dtype="float32",
    quick: bool = False,
    torch: bool = True,
    torch_path: str | None = None,
    load_tolerance: float = LOAD_TOLERANCE,
    attempts: int = ATTEMPTS,
    eager: bool = True,
    profile_top: int = 0,
    tuning=None,
) -> tuple[dict, list]:
    """(result, steps): what `run` does, not yet done. `result` is the run's record without its
    rows (result["rows"] is empty; result["missing"] lists the gates asked for that declare no
    benchmark size); `steps` is a list of (label, measure), measure() returning the rows of
    that step (a list of dicts), to be added to result["rows"] in order, then `finish(result)`.
    A caller that runs them one by one can show progress, print each row as it comes and stop
    between two (fnn.cli.bench)."""
    only, gates = _asked(only)
    dtype = jnp.dtype(dtype)
    result = _record(dtype, reps, quick, tuning, load_tolerance, attempts)
    cases = [c for c in STEP_CASES if c in only]
    n = 256 if quick else 2048 if jax.default_backend() == "cpu" else 8192  # the gemm's size
    steps = _gemm_steps(n, dtype, reps) if cases or "gemm" in only else []
    steps += _step_case_steps(
        cases,
        model_specs(quick),
        functools.cache(lambda: gemm(n, dtype)),  # built once, timed beside every step case
        reps=reps,
        dtype=dtype,
        eager_reps=(1 if quick else max(3, reps // 10)) if eager else 0,
        compile_reps=1 if quick else 3,
        torch=torch,
        torch_path=torch_path,
        load_tolerance=load_tolerance,
        attempts=attempts,
        profile_top=profile_top,
    )
    if "epoch" in only:
        steps.append(
            ("epoch", lambda: [bench_epoch(reps=max(3, reps // 5), limit=200 if quick else None)])
        )
    inputs = gate_inputs(quick)
    steps += _gate_steps(gates, inputs, reps, dtype, quick)
    result["missing"] = [name for name in gates if name not in inputs]
    steps += _jax_model_steps(only, reps, quick)
    return result, steps


def _record(dtype, reps: int, quick: bool, tuning, load_tolerance: float, attempts: int) -> dict:
    """The run's record before any row is measured: the machine, the settings, the load now."""
    return {
        "device": machine(),
        "dtype": dtype.name,
        "reps": reps,
        "quick": quick,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "tuning": tuning,
        "load": [load_average()],
        "load_tolerance": load_tolerance,
        "attempts": attempts,
        "rows": [],
    }


def _gemm_steps(n: int, dtype, reps: int) -> list:
    """The steps timing the reference n x n matmul, in float32 and in `dtype`."""
    return [
        (f"gemm {d.name}", lambda d=d: [bench_matmul(n, max(3, reps // 3), d)])
        for d in sorted({jnp.dtype(jnp.float32), dtype}, key=str)
    ]


def _step_case_steps(cases: list, specs: dict, reference, **options) -> list:
    """The step of each step case of `cases`: bench_step of its spec, with the reference matmul
    `reference()` and bench_step's keyword `options`."""
    return [
        (case, lambda case=case: [bench_step(case, specs[case], reference=reference(), **options)])
        for case in cases
    ]


def _gate_steps(gates: list, inputs: dict, reps: int, dtype, quick: bool) -> list:
    """A step per benchmark size that `inputs` (gate_inputs) declares for each of `gates`."""
    return [
        (
            f"{name} {label}",
            lambda name=name, label=label, make=make: [
                bench_gate(
                    name, label, make, reps=reps, dtype=dtype, budget_s=0.05 if quick else 1.0
                )
            ],
        )
        for name in gates
        for label, make in inputs.get(name, ())
    ]


def _jax_model_steps(only: set, reps: int, quick: bool) -> list:
    """The steps of the Flax/Equinox models through the primitive front-end (issue 11): all
    with "jax" (and the trace rows), or those named "jax:<model>"."""
    if not ("jax" in only or any(c.startswith("jax:") for c in only)):
        return []
    from fnn.bench import jax_models

    steps = [
        (name, lambda name=name: [jax_models.model_row(name, reps=reps, quick=quick)])
        for name in jax_models.MODELS
        if "jax" in only or f"jax:{name}" in only
    ]
    if "jax" in only:
        steps.append(
            ("trace", lambda: jax_models.bench_trace((50, 100) if quick else (250, 500, 1000)))
        )
    return steps


def finish(result: dict) -> dict:
    """The result of a planned run whose rows are in: the load after it, issue 5's targets."""
    result["load"].append(load_average())
    result["targets"] = targets(result["rows"])
    return result


def run(
    *,
    only=None,
    reps: int = 50,
    dtype="float32",
    quick: bool = False,
    torch: bool = True,
    torch_path: str | None = None,
    load_tolerance: float = LOAD_TOLERANCE,
    attempts: int = ATTEMPTS,
    eager: bool = True,
    profile_top: int = 0,
    tuning=None,
    log=None,
) -> dict:
    """Run the cases named in `only` (default all; gate names select single gates).
    torch: time PyTorch's step of each step case too, in a process of its own after fnn's
    (torch_path: a folder holding torch, put on that process's path only). Each side of a step
    row is timed again while the 1-min load average moves by more than `load_tolerance` across
    it, `attempts` times at most (fnn.bench.timing.steady).
    `tuning`: what fnn.runtime.tune_cpu did before JAX started (recorded with the results).
    log(line) gets a line per row as it is measured (None: silent). The same as `plan`, every
    step measured in turn, and `finish`."""
    log = log or (lambda line: None)
    result, steps = plan(
        only=only,
        reps=reps,
        dtype=dtype,
        quick=quick,
        torch=torch,
        torch_path=torch_path,
        load_tolerance=load_tolerance,
        attempts=attempts,
        eager=eager,
        profile_top=profile_top,
        tuning=tuning,
    )
    for name in result["missing"]:
        log(f"gate {name}: no benchmark size declared in fnn.bench.cases.gate_inputs")
    for _, measure in steps:
        for row in measure():
            result["rows"].append(row)
            log(fmt_row(row))
    return finish(result)
