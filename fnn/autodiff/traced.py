"""The graph recorded in the forward pass: a tape of gate applications and the values on it.

A `Traced` wraps one value (a jax array, or a JAX tracer under jit/vmap) that depends on the
inputs being differentiated. Calling a gate on it runs the forward on the raw values and
appends a `Record` to the value's `Tape`; the result is wrapped again. The tape belongs to one
`fnn.vjp` call: nothing is global, and everything happens at trace time, so under `jax.jit`
only the forward and the hand-written backward reach XLA.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import jax.numpy as jnp

from fnn.autodiff import nans
from fnn.errors import NestingError, describe

_SKIP_DIRS = tuple(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), d) + os.sep
    for d in ("autodiff", "ops")
)


def call_site() -> str:
    """'file:line' of the innermost frame outside fnn's engine and gates."""
    f = sys._getframe(1)
    while f is not None and f.f_code.co_filename.startswith(_SKIP_DIRS):
        f = f.f_back
    return f"{f.f_code.co_filename}:{f.f_lineno}" if f is not None else "?"


@dataclasses.dataclass
class Record:
    """One gate application: what the backward pass and the debuggers need to replay it."""

    gate: Any
    static: dict
    parents: tuple  # node id of each positional input, or None for a constant
    inputs: tuple  # raw input values
    out_ids: tuple  # node id of each output (None: output carries no gradient)
    outs: tuple  # raw output values
    saved: Any
    multi: bool  # the gate returns a tuple of outputs
    site: str


class Tape:
    """The records of one forward pass, in execution order, and a counter for node ids."""

    def __init__(self):
        self.records: list[Record] = []
        self.n_nodes = 0

    def new_node(self) -> int:
        self.n_nodes += 1
        return self.n_nodes - 1

    def input(self, value) -> "Traced":
        return Traced(value, self, self.new_node())


def is_float(x) -> bool:
    """Whether x (an array, scalar or Traced) has a float dtype: what fnn differentiates."""
    return bool(jnp.issubdtype(jnp.result_type(x.value if isinstance(x, Traced) else x), jnp.inexact))


def dispatch(gate, args, static):
    """Run `gate` on args of which some are Traced: forward on raw values, then record."""
    tapes = {id(a.tape): a.tape for a in args if isinstance(a, Traced)}
    if len(tapes) > 1:
        raise NestingError(
            f"gate '{gate.name}' received values from two nested fnn.grad/fnn.vjp calls. fnn's "
            "hand-written backward cannot be differentiated by fnn again; for higher derivatives "
            "use JAX on the outside, e.g. jacfwd(fnn.grad(f)) or grad(fnn.grad(f)) from jax."
        )
    (tape,) = tapes.values()
    raw = tuple(a.value if isinstance(a, Traced) else a for a in args)
    out, saved = gate.run_forward(raw, static)
    multi = isinstance(out, tuple)
    outs = out if multi else (out,)
    site = call_site()
    if nans.active():
        nans.check(gate.name, "forward", site, raw, outs)
    out_ids = tuple(tape.new_node() if is_float(o) else None for o in outs)
    parents = tuple(a.node if isinstance(a, Traced) else None for a in args)
    tape.records.append(Record(gate, static, parents, raw, out_ids, outs, saved, multi, site))
    wrapped = tuple(o if i is None else Traced(o, tape, i) for o, i in zip(outs, out_ids))
    return wrapped if multi else wrapped[0]


def _ops():
    import fnn.ops

    return fnn.ops


class Traced:
    """A value being differentiated by fnn. Behaves like an array; every op is an fnn gate."""

    __slots__ = ("value", "tape", "node")
    __array_priority__ = 1000  # numpy defers `ndarray op Traced` to our reflected methods

    def __init__(self, value, tape: Tape, node: int):
        self.value = value
        self.tape = tape
        self.node = node

    # metadata
    shape = property(lambda self: self.value.shape)
    ndim = property(lambda self: self.value.ndim)
    dtype = property(lambda self: self.value.dtype)
    size = property(lambda self: self.value.size)
    T = property(lambda self: _ops().transpose(self))

    def __len__(self):
        return len(self.value)

    def __iter__(self):
        # without this Python would iterate by indexing until IndexError, which JAX's clamped
        # indexing never raises
        if self.ndim == 0:
            raise TypeError(f"iteration over a 0-d value traced by fnn ({describe(self.value)})")
        return (_ops().index(self, index=i) for i in range(len(self.value)))

    def __repr__(self):
        return f"Traced({describe(self.value)})"

    # arithmetic
    def __add__(self, o): return _ops().add(self, o)
    def __radd__(self, o): return _ops().add(o, self)
    def __sub__(self, o): return _ops().subtract(self, o)
    def __rsub__(self, o): return _ops().subtract(o, self)
    def __mul__(self, o): return _ops().multiply(self, o)
    def __rmul__(self, o): return _ops().multiply(o, self)
    def __truediv__(self, o): return _ops().divide(self, o)
    def __rtruediv__(self, o): return _ops().divide(o, self)
    def __pow__(self, o): return _ops().power(self, o)
    def __rpow__(self, o): return _ops().power(o, self)
    def __matmul__(self, o): return _ops().matmul(self, o)
    def __rmatmul__(self, o): return _ops().matmul(o, self)
    def __neg__(self): return _ops().negative(self)
    def __pos__(self): return self
    def __abs__(self): return _ops().abs(self)
    def __getitem__(self, index): return _ops().index(self, index=index)

    # comparisons carry no gradient: they return plain boolean arrays
    def __lt__(self, o): return self.value < _raw(o)
    def __le__(self, o): return self.value <= _raw(o)
    def __gt__(self, o): return self.value > _raw(o)
    def __ge__(self, o): return self.value >= _raw(o)
    def __eq__(self, o): return self.value == _raw(o)
    def __ne__(self, o): return self.value != _raw(o)
    __hash__ = None

    def __bool__(self):
        return bool(self.value)

    # array methods
    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return _ops().reshape(self, shape=tuple(shape))

    def sum(self, axis=None, keepdims=False, **numpy_only):
        _no_numpy_options("sum", numpy_only)
        return _ops().sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False, **numpy_only):
        _no_numpy_options("mean", numpy_only)
        return _ops().mean(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False, **numpy_only):
        _no_numpy_options("max", numpy_only)
        return _ops().max(self, axis=axis, keepdims=keepdims)

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return _ops().transpose(self, axes=tuple(axes) if axes else None)

    def __array__(self, *a, **k):
        raise TypeError(
            f"a value traced by fnn ({describe(self.value)}) was converted to a NumPy array, "
            "which would drop its gradient; keep it inside fnn's gates (fnn.ops)."
        )


def _no_numpy_options(name, options):
    """np.sum(x) etc. call x.sum(axis, dtype=None, out=None): accept those, refuse the rest."""
    given = {k: v for k, v in options.items() if v is not None}
    if given:
        raise TypeError(f"{name}() of a value traced by fnn takes axis and keepdims only, got "
                        f"{sorted(given)}; use fnn.ops.{name} (and fnn.ops.astype for dtypes)")


def _raw(x):
    return x.value if isinstance(x, Traced) else x


def is_traced(x) -> bool:
    return isinstance(x, Traced)

