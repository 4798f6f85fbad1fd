"""Numerical gradients (central differences) and the error measures the checkers report."""

from __future__ import annotations

import numpy as np

from fnn.autodiff import is_float


def rel_error(a, b) -> float:
    """CS231n-style relative error over whole arrays: max|a - b| / max(|a|) + max(|b|).

    Normalising by the arrays' magnitudes (not elementwise) keeps entries that are both ~0
    from reporting rounding noise as a 100% error. Two all-zero arrays have error 0.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ, {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    scale = np.max(np.abs(a)) + np.max(np.abs(b))
    diff = np.max(np.abs(a - b))
    return float(diff / scale) if scale > 0 else float(diff)


def numerical_vjp(f, args, ct, diff=None, h=1e-6):
    """Central-difference gradient of `sum(f(*args) * ct)` wrt each float arg (float64).

    `f` takes and returns numpy-compatible arrays (a tuple of outputs is allowed, with `ct` a
    tuple of the same length). `diff` lists which positions to differentiate (default: all
    float args). Returns a list with an array per position (None where not differentiated).
    """
    args = [np.array(a, dtype=np.float64) if is_float(a) else a for a in args]
    if diff is None:
        diff = [i for i, a in enumerate(args) if is_float(a)]
    cts = ct if isinstance(ct, (tuple, list)) else (ct,)

    def scalar(a):
        out = f(*a)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return sum(float(np.sum(np.asarray(o, np.float64) * np.asarray(c, np.float64)))
                   for o, c in zip(outs, cts) if c is not None)

    grads = [None] * len(args)
    for i in diff:
        x = args[i]
        g = np.zeros_like(x)
        flat, gflat = x.reshape(-1), g.reshape(-1)
        for k in range(flat.size):
            old = flat[k]
            flat[k] = old + h
            up = scalar(args)
            flat[k] = old - h
            down = scalar(args)
            flat[k] = old
            gflat[k] = (up - down) / (2 * h)
        grads[i] = g
    return grads
