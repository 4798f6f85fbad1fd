"""Shapes and linear algebra: matmul, affine, transpose, reshape, broadcast_to, concatenate,
take, index, stop_gradient.

The lecture's vector rule: for y = x @ w, dx = g @ w.T and dw = x.T @ g; the shapes alone fix
the order of the product, and no Jacobian is ever built.
"""

import jax.numpy as jnp
import numpy as np
from jax import lax

from fnn.autodiff.gate import Case, defgate, unbroadcast
from fnn.errors import GateError, describe
from fnn.ops._cases import normal


def _swap(a):
    return jnp.swapaxes(a, -1, -2)


# ---- matmul -----------------------------------------------------------------------------------
@defgate
def matmul(x, w):
    """x @ w with numpy's rules (1-D operands, batch dims broadcast).

    Local gradients (2-D): dx = g @ w.T (N,K), dw = x.T @ g (K,M) for x (N,K), w (K,M), g (N,M).

    Args:
        x: the left operand.
        w: the right operand.

    Returns:
        x @ w.

    Raises:
        fnn.GateError: an operand has no dims, or the inner dimensions differ.
    """
    xs, ws = np.shape(x), np.shape(w)
    if len(xs) == 0 or len(ws) == 0:
        raise GateError(f"gate 'matmul': operands must have at least 1 dim, got x {describe(x)}, "
                        f"w {describe(w)}")
    kx = xs[-1]
    kw = ws[0] if len(ws) == 1 else ws[-2]
    if kx != kw:
        raise GateError(f"gate 'matmul': inner dimensions differ: x {describe(x)} has {kx}, "
                        f"w {describe(w)} has {kw}")
    return jnp.matmul(x, w), (x, w)


@matmul.defvjp
def matmul_vjp(g, saved, *, needs):
    x, w = saved
    xd, wd = jnp.ndim(x), jnp.ndim(w)
    dx = dw = None
    if xd == 1 and wd == 1:  # inner product
        return ((g * w).astype(x.dtype) if needs[0] else None,
                (g * x).astype(w.dtype) if needs[1] else None)
    if xd == 1:  # (K,) @ (..., K, M) -> (..., M)
        if needs[0]:
            dx = unbroadcast(jnp.matmul(w, g[..., None])[..., 0], x)
        if needs[1]:
            dw = unbroadcast(x[:, None] * g[..., None, :], w)
        return dx, dw
    if wd == 1:  # (..., N, K) @ (K,) -> (..., N)
        if needs[0]:
            dx = unbroadcast(g[..., None] * w, x)
        if needs[1]:
            dw = unbroadcast(jnp.matmul(g[..., None, :], x)[..., 0, :], w)
        return dx, dw
    if needs[0]:
        dx = unbroadcast(jnp.matmul(g, _swap(w)), x)
    if needs[1]:
        if wd == 2:  # fold every batch dim of x into the contraction: one big matmul
            k, m = w.shape
            dw = (jnp.reshape(x, (-1, k)).T @ jnp.reshape(g, (-1, m))).astype(w.dtype)
        else:
            dw = unbroadcast(jnp.matmul(_swap(x), g), w)
    return dx, dw


@matmul.defcases
def _matmul_cases(rng, dtype):
    pairs = [((3, 4), (4, 5)), ((4,), (4, 2)), ((3, 4), (4,)), ((5,), (5,)),
             ((2, 3, 4), (4, 2)), ((2, 3, 4), (2, 4, 5)), ((1, 3, 4), (2, 4, 2))]
    return [Case((normal(rng, a, dtype), normal(rng, b, dtype)), label=f"{a}@{b}") for a, b in pairs]
matmul.defkinks(smooth=True)


# ---- affine -------------------------------------------------------------------------------------
@defgate
def affine(x, w, b):
    """Flatten x (N, d1..dk) to (N, D), then x @ w + b with w (D, M), b (M,) -> (N, M).

    Local gradients: dx = (g @ w.T).reshape(x.shape), dw = x.T @ g, db = sum_N g.

    Args:
        x: (N, d1..dk), flattened to (N, D).
        w: (D, M).
        b: (M,).

    Returns:
        (N, M).

    Raises:
        fnn.GateError: the shapes of x, w and b do not fit together.
    """
    if jnp.ndim(x) < 1 or jnp.ndim(w) != 2 or jnp.ndim(b) != 1:
        raise GateError(f"gate 'affine': expects x (N, ...), w (D, M), b (M,); got x {describe(x)}, "
                        f"w {describe(w)}, b {describe(b)}")
    n = x.shape[0]
    d = int(np.prod(x.shape[1:]))
    if d != w.shape[0] or w.shape[1] != b.shape[0]:
        raise GateError(f"gate 'affine': x {describe(x)} flattens to ({n}, {d}) which does not fit "
                        f"w {describe(w)} and b {describe(b)}")
    xf = jnp.reshape(x, (n, d))
    return xf @ w + b, (xf, w, x.shape, jnp.result_type(b))


@affine.defvjp
def affine_vjp(g, saved, *, needs):
    xf, w, x_shape, b_dtype = saved
    dx = jnp.reshape(g @ w.T, x_shape).astype(xf.dtype) if needs[0] else None
    dw = _xt_g(xf, g).astype(w.dtype) if needs[1] else None
    db = jnp.sum(g, axis=0) if needs[2] else None
    return dx, dw, (db.astype(b_dtype) if db is not None else None)


def _xt_g(xf, g):
    """xf.T @ g. For a g of few columns (a classifier layer's) on CPU, xf.T is first copied out:
    XLA's CPU dot runs the transposed operand 2-3x slower there (measured in
    docs/benchmarks.md); the barrier keeps XLA from folding the copy back into the dot. Wider g
    and other platforms take the transposed operand as it is (one dot_general): XLA fuses xf's
    producer into such a copy (a transformer MLP's whole exact GELU was computed again there,
    in transposed order: 1.75x the built-in step), and for wide g the copy saves little."""
    if g.shape[-1] > COPY_XT_COLUMNS:
        return xf.T @ g
    return lax.platform_dependent(
        xf, g, cpu=lambda a, b: lax.optimization_barrier(a.T) @ b, default=lambda a, b: a.T @ b)


COPY_XT_COLUMNS = 128  # _xt_g copies xf.T out on CPU for a g of at most this many columns


@affine.defcases
def _affine_cases(rng, dtype):
    shapes = [((4, 3), (3, 5)), ((2, 3, 2), (6, 4)), ((1, 2, 2, 2), (8, 3))]
    return [Case((normal(rng, xs, dtype), normal(rng, ws, dtype), normal(rng, ws[1:], dtype)),
                 label=f"{xs}") for xs, ws in shapes]
affine.defkinks(smooth=True)


# ---- shape gates ------------------------------------------------------------------------------
@defgate
def transpose(x, *, axes=None):
    """Permute axes (reverse them when axes is None).  Local gradient: the inverse permutation.

    Args:
        x: the input.
        axes: the permutation (None: reversed).

    Returns:
        x with its axes permuted.
    """
    return jnp.transpose(x, axes), None


@transpose.defvjp
def transpose_vjp(g, saved, *, axes=None):
    if axes is None:
        return (jnp.transpose(g),)
    inverse = tuple(int(i) for i in np.argsort([a % g.ndim for a in axes]))
    return (jnp.transpose(g, inverse),)


@transpose.defcases
def _transpose_cases(rng, dtype):
    return [Case((normal(rng, (3, 4), dtype),)), Case((normal(rng, (2, 3, 4), dtype),), {"axes": (1, 2, 0)}),
            Case((normal(rng, (5,), dtype),))]
transpose.defkinks(smooth=True)


@defgate
def reshape(x, *, shape):
    """x with a new shape (one entry may be -1).  Local gradient: g reshaped back to x's shape.

    Args:
        x: the input.
        shape: the new shape (one entry may be -1).

    Returns:
        x reshaped.

    Raises:
        fnn.GateError: x cannot take `shape`.
    """
    try:
        return jnp.reshape(x, shape), np.shape(x)
    except TypeError as e:
        raise GateError(f"gate 'reshape': cannot reshape x {describe(x)} to {tuple(shape)}: {e}") from e


@reshape.defvjp
def reshape_vjp(g, x_shape, *, shape):
    return (jnp.reshape(g, x_shape),)


@reshape.defcases
def _reshape_cases(rng, dtype):
    return [Case((normal(rng, (3, 4), dtype),), {"shape": (2, 6)}),
            Case((normal(rng, (2, 3, 2), dtype),), {"shape": (-1,)}),
            Case((normal(rng, (), dtype),), {"shape": (1, 1)})]
reshape.defkinks(smooth=True)


@defgate
def broadcast_to(x, *, shape):
    """x broadcast to `shape`.  Local gradient: g summed over the broadcast axes (unbroadcast).

    Args:
        x: the input.
        shape: the shape to broadcast to.

    Returns:
        x broadcast to `shape`.

    Raises:
        fnn.GateError: x cannot be broadcast to `shape`.
    """
    try:
        return jnp.broadcast_to(x, shape), x
    except ValueError as e:
        raise GateError(f"gate 'broadcast_to': cannot broadcast x {describe(x)} to {tuple(shape)}") from e


@broadcast_to.defvjp
def broadcast_to_vjp(g, x, *, shape):
    return (unbroadcast(g, x),)


@broadcast_to.defcases
def _broadcast_to_cases(rng, dtype):
    return [Case((normal(rng, (3, 1), dtype),), {"shape": (2, 3, 4)}),
            Case((normal(rng, (), dtype),), {"shape": (3,)}),
            Case((normal(rng, (4,), dtype),), {"shape": (2, 4)})]
broadcast_to.defkinks(smooth=True)


@defgate
def concatenate(*xs, axis=0):
    """Join arrays along `axis`: concatenate(a, b, c, axis=1) (arrays as separate arguments).

    Local gradient: g split back into pieces of the inputs' sizes along `axis`.

    Args:
        *xs: the arrays, as separate arguments.
        axis: the axis they are joined along.

    Returns:
        The joined array.

    Raises:
        fnn.GateError: no array, or the arrays passed as one list.
    """
    if len(xs) == 1 and isinstance(xs[0], (list, tuple)):
        raise GateError("gate 'concatenate': pass the arrays as separate arguments, "
                        "concatenate(a, b, axis=...), not a list")
    if not xs:
        raise GateError("gate 'concatenate': needs at least one array")
    return jnp.concatenate(xs, axis=axis), (tuple(np.shape(x)[axis] for x in xs),
                                             tuple(jnp.result_type(x) for x in xs))


@concatenate.defvjp
def concatenate_vjp(g, sizes, *, axis=0):
    sizes, dtypes = sizes
    bounds = np.cumsum(sizes)[:-1]
    return tuple(d.astype(t) for d, t in zip(jnp.split(g, bounds, axis=axis), dtypes))


@concatenate.defcases
def _concatenate_cases(rng, dtype):
    return [Case((normal(rng, (2, 3), dtype), normal(rng, (2, 1), dtype), normal(rng, (2, 2), dtype)),
                 {"axis": 1}),
            Case((normal(rng, (3,), dtype), normal(rng, (2,), dtype)))]
concatenate.defkinks(smooth=True)


# ---- indexing -----------------------------------------------------------------------------------
@defgate
def take(x, indices, *, axis=None):
    """jnp.take(x, indices, axis): gather along `axis` (x flattened when axis is None).

    Local gradient: g scattered-and-added back to the gathered positions (repeats add up).

    Args:
        x: the input.
        indices: integer indices.
        axis: the axis gathered along (None: x flattened).

    Returns:
        The gathered entries.
    """
    return jnp.take(x, indices, axis=axis), (np.shape(x), jnp.result_type(x), indices)


@take.defvjp
def take_vjp(g, saved, *, axis=None):
    x_shape, x_dtype, indices = saved
    if axis is None:
        flat = jnp.zeros(int(np.prod(x_shape)), x_dtype).at[indices].add(g)
        return jnp.reshape(flat, x_shape), None
    axis = axis % len(x_shape)
    where = (slice(None),) * axis + (indices,)
    return jnp.zeros(x_shape, x_dtype).at[where].add(g), None


@take.defcases
def _take_cases(rng, dtype):
    return [Case((normal(rng, (5, 3), dtype), np.array([0, 2, 2, 4])), {"axis": 0}),
            Case((normal(rng, (2, 4), dtype), np.array([[1, 3], [3, 0]])), {"axis": 1}),
            Case((normal(rng, (3, 2), dtype), np.array([5, 0, 5])))]
take.defkinks(smooth=True)


@defgate
def index(x, *, index):
    """x[index] for any numpy-style index (ints, slices, None, ..., integer arrays).

    Local gradient: g added into a zero array at the indexed positions (repeats add up).

    Args:
        x: the input.
        index: a numpy-style index.

    Returns:
        x[index].

    Raises:
        fnn.GateError: x cannot be indexed with `index`.
    """
    try:
        return x[index], (np.shape(x), jnp.result_type(x))
    except (IndexError, TypeError) as e:
        raise GateError(f"gate 'index': cannot index x {describe(x)} with {index!r}: {e}") from e


def _basic_index(index, shape):
    """For basic indexing (ints, slices, None, one ...): per axis of x (start, length, step)
    of the positions taken, an int axis being length 1. None for advanced (array) indexing."""
    idx = index if isinstance(index, tuple) else (index,)
    basic = (int, np.integer, slice, type(None), type(Ellipsis))
    if not all(isinstance(i, basic) and not isinstance(i, (bool, np.bool_)) for i in idx):
        return None
    n_axes = sum(i is not None and i is not Ellipsis for i in idx)
    if n_axes > len(shape) or sum(i is Ellipsis for i in idx) > 1:
        return None
    k = next((j for j, i in enumerate(idx) if i is Ellipsis), len(idx))
    idx = idx[:k] + (slice(None),) * (len(shape) - n_axes) + idx[k + 1:]
    spec = []
    for i, n in zip((i for i in idx if i is not None), shape):
        if isinstance(i, slice):
            r = range(*i.indices(n))
            spec.append((r.start, len(r), r.step))
        else:
            spec.append((min(max(int(i) + n * (int(i) < 0), 0), n - 1), 1, 1))  # clamp, as JAX
    return spec


def _clamp_scalars(index, shape):
    """The index with each scalar integer entry clamped into range, as JAX's x[i] reads it
    (the scatter of the backward would otherwise drop an out-of-range position)."""
    idx = index if isinstance(index, tuple) else (index,)
    n_axes = sum(i is not None and i is not Ellipsis for i in idx)
    out, axis = [], 0
    for i in idx:
        if i is None:
            out.append(i)
            continue
        if i is Ellipsis:
            out.append(i)
            axis += len(shape) - n_axes
            continue
        if (jnp.ndim(i) == 0 and not isinstance(i, slice) and not isinstance(i, (bool, np.bool_))
                and jnp.issubdtype(jnp.result_type(i), jnp.integer) and axis < len(shape)):
            n = shape[axis]
            i = jnp.clip(jnp.where(i < 0, i + n, i), 0, n - 1)
        out.append(i)
        axis += 1
    return tuple(out) if isinstance(index, tuple) else out[0]


@index.defvjp
def index_vjp(g, saved, *, index):
    x_shape, x_dtype = saved
    spec = _basic_index(index, x_shape)
    if spec is None or any(n == 0 for _, n, _ in spec):  # advanced indexing: scatter-add
        return (jnp.zeros(x_shape, x_dtype).at[_clamp_scalars(index, x_shape)].add(g),)
    # basic indexing: g padded back into place (interior padding for steps), no scatter
    g = jnp.reshape(g, tuple(n for _, n, _ in spec))
    g = lax.rev(g, tuple(a for a, (_, _, step) in enumerate(spec) if step < 0))
    pads = []
    for (start, n, step), size in zip(spec, x_shape):
        lo = start if step > 0 else start + (n - 1) * step  # the first position taken
        pads.append((lo, size - lo - (n - 1) * abs(step) - 1, abs(step) - 1))
    return (lax.pad(g, np.zeros((), g.dtype), pads),)


@index.defcases
def _index_cases(rng, dtype):
    return [Case((normal(rng, (4, 3), dtype),), {"index": 1}),
            Case((normal(rng, (4, 3), dtype),), {"index": (slice(1, 3), slice(None, None, -1))}),
            Case((normal(rng, (4, 3), dtype),), {"index": (np.array([0, 2, 0]), 1)}),
            Case((normal(rng, (2, 3), dtype),), {"index": (Ellipsis, None, 0)})]
index.defkinks(smooth=True)


@defgate
def stop_gradient(x):
    """x, with no gradient flowing back.  Local gradient: 0 (under JAX's grad too).

    Args:
        x: the input (any shape).

    Returns:
        x.
    """
    return lax.stop_gradient(x), None


@stop_gradient.defvjp
def stop_gradient_vjp(g, saved):
    return (None,)


@stop_gradient.defcases
def _stop_gradient_cases(rng, dtype):
    return [Case((normal(rng, (3, 2), dtype),), numeric=False)]  # not the derivative of its value
stop_gradient.defkinks(smooth=True)
