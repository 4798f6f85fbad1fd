"""The array operators of values traced by fnn: each operator and method is a gate.

`ArrayTraced` is the core's `Traced` box with `+ - * / @ **`, unary `-`, `abs`, indexing,
iteration, `.T`, `.reshape`, `.sum`, `.mean`, `.max` and `.transpose` (after autograd's
`ArrayBox`, kept apart from its core `Box`). Comparisons return plain boolean arrays: they
carry no gradient.
"""

from __future__ import annotations

from fnn.autodiff.tape import Traced
from fnn.errors import describe
from fnn.ops import elementwise as ew
from fnn.ops import linalg, reductions


class ArrayTraced(Traced):
    """A traced value that behaves like an array; every operator is an fnn gate."""

    __slots__ = ()

    T = property(lambda self: linalg.transpose(self))

    def __iter__(self):
        # without this Python would iterate by indexing until IndexError, which JAX's clamped
        # indexing never raises
        if self.ndim == 0:
            raise TypeError(f"iteration over a 0-d value traced by fnn ({describe(self.value)})")
        return (linalg.index(self, index=i) for i in range(len(self.value)))

    # arithmetic
    def __add__(self, o): return ew.add(self, o)
    def __radd__(self, o): return ew.add(o, self)
    def __sub__(self, o): return ew.subtract(self, o)
    def __rsub__(self, o): return ew.subtract(o, self)
    def __mul__(self, o): return ew.multiply(self, o)
    def __rmul__(self, o): return ew.multiply(o, self)
    def __truediv__(self, o): return ew.divide(self, o)
    def __rtruediv__(self, o): return ew.divide(o, self)
    def __pow__(self, o): return ew.power(self, o)
    def __rpow__(self, o): return ew.power(o, self)
    def __matmul__(self, o): return linalg.matmul(self, o)
    def __rmatmul__(self, o): return linalg.matmul(o, self)
    def __neg__(self): return ew.negative(self)
    def __pos__(self): return self
    def __abs__(self): return ew.abs(self)
    def __getitem__(self, index): return linalg.index(self, index=index)

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
        return linalg.reshape(self, shape=tuple(shape))

    def sum(self, axis=None, keepdims=False, **numpy_only):
        _no_numpy_options("sum", numpy_only)
        return reductions.sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False, **numpy_only):
        _no_numpy_options("mean", numpy_only)
        return reductions.mean(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False, **numpy_only):
        _no_numpy_options("max", numpy_only)
        return reductions.max(self, axis=axis, keepdims=keepdims)

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return linalg.transpose(self, axes=tuple(axes) if axes else None)


def _no_numpy_options(name, options):
    """np.sum(x) etc. call x.sum(axis, dtype=None, out=None): accept those, refuse the rest."""
    given = {k: v for k, v in options.items() if v is not None}
    if given:
        raise TypeError(f"{name}() of a value traced by fnn takes axis and keepdims only, got "
                        f"{sorted(given)}; use fnn.ops.{name} (and fnn.ops.astype for dtypes)")


def _raw(x):
    return x.value if isinstance(x, Traced) else x
