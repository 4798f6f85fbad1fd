"""NaN origin: `with fnn.debug_nans(): ...` names the first gate whose forward or backward made a
NaN or inf, with its call site and the ranges of its inputs.

The checks look at concrete values, so they run eagerly (outside `jax.jit`); inside a jitted
function they are skipped. `python -m fnn train --check-nans` re-runs a step that produced a
non-finite loss eagerly under this context to find its origin.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp
import numpy as np

from fnn.errors import FnnError, describe

_ACTIVE = contextvars.ContextVar("fnn_debug_nans", default=False)


class NanOriginError(FnnError, FloatingPointError):
    """A gate produced a NaN or inf while fnn.debug_nans() was active.

    An `FnnError` and a `FloatingPointError`. The message names the gate, the phase, the call
    site and the ranges of the gate's inputs and bad outputs.

    Args:
        message: the error message.
        gate: the name of the gate, kept as `.gate`.
        phase: "forward" or "backward (VJP)", kept as `.phase`.
        site: where the gate was called (file:line), kept as `.site`.
    """

    def __init__(self, message, *, gate, phase, site):
        super().__init__(message)
        self.gate, self.phase, self.site = gate, phase, site


@contextlib.contextmanager
def debug_nans():
    """Within this block, raise NanOriginError at the first gate that makes a NaN or inf.

        with fnn.debug_nans():
            fnn.grad(loss)(params, batch)

    The checks look at concrete values, so they run eagerly (outside `jax.jit`); inside a jitted
    function they are skipped. The block holds for the thread (or asyncio task) that entered it.

    Returns:
        A context manager; inside its `with` block every gate's forward and backward outputs are
        checked.

    Raises:
        NanOriginError: (inside the block) a gate's forward or backward produced a NaN or inf.
    """
    token = _ACTIVE.set(True)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active() -> bool:
    return _ACTIVE.get()


def _concrete_float(x) -> bool:
    return (
        x is not None
        and not isinstance(x, jax.core.Tracer)
        and hasattr(x, "dtype")
        and jnp.issubdtype(x.dtype, jnp.inexact)
    )


def _bad(x) -> bool:
    return _concrete_float(x) and not bool(np.all(np.isfinite(np.asarray(x))))


def _range(x) -> str:
    if not _concrete_float(x):
        return describe(x)
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        return f"{describe(x)} (empty)"
    finite = a[np.isfinite(a)]
    span = f"[{finite.min():.4g}, {finite.max():.4g}]" if finite.size else "no finite values"
    extra = ", ".join(
        f"{n} {name}"
        for n, name in (
            (int(np.isnan(a).sum()), "nan"),
            (int(np.isposinf(a).sum()), "+inf"),
            (int(np.isneginf(a).sum()), "-inf"),
        )
        if n
    )
    return f"{describe(x)} in {span}" + (f" with {extra}" if extra else "")


def check(
    gate_name: str,
    phase: str,
    site: str,
    inputs,
    outputs,
    labels=("input", "output"),
    scope: str = "",
):
    """Raise NanOriginError if any of `outputs` is non-finite (only while debug_nans is active)."""
    outs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    if not any(_bad(o) for o in outs):
        return
    ins = "; ".join(f"{labels[0]} {k}: {_range(x)}" for k, x in enumerate(inputs))
    bad = "; ".join(f"{labels[1]} {k}: {_range(o)}" for k, o in enumerate(outs) if _bad(o))
    already = any(_bad(x) for x in inputs)
    note = (
        " (its inputs already held non-finite values: the NaN came from upstream data)"
        if already
        else ""
    )
    where = f"in layer {scope}: " if scope else ""
    raise NanOriginError(
        f"{where}debug_nans: gate '{gate_name}' {phase} produced a NaN/inf at {site}{note}. {bad}. {ins}",
        gate=gate_name,
        phase=phase,
        site=site,
    )
