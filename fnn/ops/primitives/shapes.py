"""Gates of JAX's shape primitives: reshape, squeeze, broadcast_in_dim, transpose, rev, slice,
pad, concatenate, split, stack.

They move values without changing them, so each backward moves g back: a reshape reshapes it
back, a transpose applies the inverse permutation, a broadcast sums over the axes it added (a
value copied to many places collects all their gradients, like the copy gate), a slice pads g
back into place with zeros, a pad slices it out again. Complex values move the same way (JAX's
convention makes each of these its own transpose, with no conjugation).
"""

import numpy as np
from jax import lax
from jax.extend.core import primitives as P

from fnn.autodiff.case_values import cnormal, normal
from fnn.autodiff.gate import primitive_gate
from fnn.autodiff.primitive_cases import case, find


@primitive_gate(
    P.reshape_p,
    lecture="reshape",
    save="shapes",
    params=("new_sizes", "dimensions"),
    only={"sharding": (None,)},
    complex=True,
)
def reshape(g, shapes, *, dimensions=None, **params):
    """x with a new shape, its axes first permuted by `dimensions` when given (the reshape
    reads transpose(x, dimensions) in row-major order).  Local gradient: g reshaped back to
    the permuted shape, then permuted back."""
    (x,) = shapes
    if dimensions is None:
        return (lax.reshape(g, x.shape),)
    permuted = lax.reshape(g, tuple(x.shape[d] for d in dimensions))
    return (lax.transpose(permuted, tuple(int(i) for i in np.argsort(dimensions))),)


reshape.defcases(
    lambda rng, dtype: [
        case(P.reshape_p, lambda x: x.reshape(2, 6), normal(rng, (3, 4), dtype)),
        case(P.reshape_p, lambda x: x.reshape(-1), normal(rng, (2, 3, 2), dtype)),
        case(P.reshape_p, lambda x: x.reshape(1, 1), normal(rng, (), dtype)),
        case(
            P.reshape_p,
            lambda x: lax.reshape(x, (3, 8), dimensions=(2, 1, 0)),
            normal(rng, (3, 2, 4), dtype),
            label="dimensions (2, 1, 0)",
        ),
        case(P.reshape_p, lambda x: x.reshape(2, 6), cnormal(rng, (3, 4), dtype), label="complex"),
    ]
)
reshape.defkinks(smooth=True)


@primitive_gate(P.squeeze_p, save="shapes", params=("dimensions",), complex=True)
def squeeze(g, shapes, **params):
    """x without some size-1 axes.  Local gradient: g reshaped back."""
    return (lax.reshape(g, shapes[0].shape),)


squeeze.defcases(
    lambda rng, dtype: [
        case(P.squeeze_p, lambda x: lax.squeeze(x, (0, 2)), normal(rng, (1, 3, 1), dtype)),
        case(
            P.squeeze_p,
            lambda x: lax.squeeze(x, (0,)),
            cnormal(rng, (1, 3), dtype),
            label="complex",
        ),
    ]
)
squeeze.defkinks(smooth=True)


@primitive_gate(
    P.broadcast_in_dim_p,
    lecture="broadcast_to",
    save="shapes",
    params=("shape", "broadcast_dimensions"),
    only={"sharding": (None,)},
    complex=True,
)
def broadcast_in_dim(g, shapes, *, shape, broadcast_dimensions, **params):
    """x placed at `broadcast_dimensions` of a larger `shape`, copied along the others.
    Local gradient: g summed over the new axes and over x's size-1 axes that were stretched."""
    (x,) = shapes
    new = tuple(i for i in range(len(shape)) if i not in broadcast_dimensions)
    stretched = tuple(
        d for i, d in enumerate(broadcast_dimensions) if x.shape[i] == 1 and shape[d] != 1
    )
    summed = lax.reduce_sum_p.bind(g, axes=tuple(sorted(new + stretched)), out_sharding=None)
    return (lax.reshape(summed, x.shape),)


broadcast_in_dim.defcases(
    lambda rng, dtype: [
        case(
            P.broadcast_in_dim_p,
            lambda x: lax.broadcast_in_dim(x, (2, 3, 4), (1, 2)),
            normal(rng, (3, 1), dtype),
            label="stretch and new",
        ),
        case(
            P.broadcast_in_dim_p,
            lambda x: lax.broadcast_in_dim(x, (3,), ()),
            normal(rng, (), dtype),
            label="scalar",
        ),
        case(
            P.broadcast_in_dim_p,
            lambda x: lax.broadcast_in_dim(x, (4, 1, 2), (0, 1)),
            normal(rng, (4, 1), dtype),
            label="new last",
        ),
        case(
            P.broadcast_in_dim_p,
            lambda x: lax.broadcast_in_dim(x, (2, 3, 4), (1, 2)),
            cnormal(rng, (3, 1), dtype),
            label="complex",
        ),
    ]
)
broadcast_in_dim.defkinks(smooth=True)


@primitive_gate(
    P.transpose_p, lecture="transpose", save="none", params=("permutation",), complex=True
)
def transpose(g, saved, *, permutation, **params):
    """x with permuted axes.  Local gradient: the inverse permutation of g."""
    return (lax.transpose(g, tuple(int(i) for i in np.argsort(permutation))),)


transpose.defcases(
    lambda rng, dtype: [
        case(P.transpose_p, lambda x: lax.transpose(x, (1, 2, 0)), normal(rng, (2, 3, 4), dtype)),
        case(P.transpose_p, lambda x: x.T, normal(rng, (3, 2), dtype)),
        case(P.transpose_p, lambda x: x.T, cnormal(rng, (3, 2), dtype), label="complex"),
    ]
)
transpose.defkinks(smooth=True)


@primitive_gate(P.rev_p, save="none", params=("dimensions",), complex=True)
def rev(g, saved, *, dimensions, **params):
    """x reversed along `dimensions`.  Local gradient: g reversed the same way."""
    return (lax.rev(g, dimensions),)


rev.defcases(
    lambda rng, dtype: [
        case(P.rev_p, lambda x: lax.rev(x, (0, 2)), normal(rng, (2, 3, 4), dtype)),
        case(P.rev_p, lambda x: lax.rev(x, (1,)), cnormal(rng, (2, 3), dtype), label="complex"),
    ]
)
rev.defkinks(smooth=True)


@primitive_gate(
    P.slice_p, save="shapes", params=("start_indices", "limit_indices", "strides"), complex=True
)
def slice(g, shapes, *, start_indices, limit_indices, strides=None, **params):  # noqa: A001
    """x[start:limit:stride] per axis.  Local gradient: g padded back into place with zeros
    (interior padding for strides)."""
    (x,) = shapes
    strides = strides or (1,) * len(start_indices)
    pads = []
    for start, n_out, step, size in zip(start_indices, g.shape, strides, x.shape):
        last = start + (n_out - 1) * step if n_out else start - 1
        pads.append((start, size - last - 1, step - 1) if n_out else (0, size, 0))
    if any(n == 0 for n in g.shape):
        return (lax.full(x.shape, 0, x.dtype),)
    return (lax.pad(g, np.zeros((), g.dtype), pads),)


slice.defcases(
    lambda rng, dtype: [
        case(P.slice_p, lambda x: x[1:3, ::2], normal(rng, (4, 6), dtype), label="strided"),
        case(P.slice_p, lambda x: lax.slice(x, (1,), (2,)), normal(rng, (3,), dtype), label="one"),
        case(P.slice_p, lambda x: x[1:3, ::2], cnormal(rng, (4, 6), dtype), label="complex"),
    ]
)
slice.defkinks(smooth=True)


@primitive_gate(P.pad_p, save="shapes", params=("padding_config",), complex=True)
def pad(g, shapes, *, padding_config, **params):
    """x padded with a value (lo, hi, interior per axis; negative lo/hi crop).  Local
    gradients: x's positions read back out of g; the padding value gets the sum of the rest."""
    x, _ = shapes
    lo, hi, interior = zip(*padding_config)
    unpadded = lax.pad(g, np.zeros((), g.dtype), tuple((-a, -b, 0) for a, b in zip(lo, hi)))
    dx = lax.slice(unpadded, (0,) * len(lo), unpadded.shape, tuple(i + 1 for i in interior))
    total = lambda a: lax.reduce_sum_p.bind(a, axes=tuple(range(a.ndim)), out_sharding=None)
    return dx, lax.sub(total(g), total(dx))


@pad.defcases
def _pad_cases(rng, dtype):
    v = np.asarray(0.5, dtype)
    return [
        case(
            P.pad_p,
            lambda x, v: lax.pad(x, v, [(1, 2, 1), (0, 1, 0)]),
            normal(rng, (3, 4), dtype),
            v,
            label="lo hi interior",
        ),
        case(
            P.pad_p,
            lambda x, v: lax.pad(x, v, [(-1, 2, 0)]),
            normal(rng, (5,), dtype),
            v,
            label="negative lo",
        ),
        case(
            P.pad_p,
            lambda x, v: lax.pad(x, v, [(1, 2, 1), (0, 1, 0)]),
            cnormal(rng, (3, 4), dtype),
            cnormal(rng, (), dtype),
            label="complex",
        ),
    ]


pad.defkinks(smooth=True)


@primitive_gate(
    P.concatenate_p, lecture="concatenate", save="shapes", params=("dimension",), complex=True
)
def concatenate(g, shapes, *, dimension, **params):
    """arrays joined along `dimension`.  Local gradient: g split back into the pieces."""
    out, start = [], 0
    for s in shapes:
        n = s.shape[dimension]
        out.append(lax.slice_in_dim(g, start, start + n, axis=dimension))
        start += n
    return tuple(out)


concatenate.defcases(
    lambda rng, dtype: [
        case(
            P.concatenate_p,
            lambda a, b, c: lax.concatenate([a, b, c], 1),
            normal(rng, (2, 3), dtype),
            normal(rng, (2, 1), dtype),
            normal(rng, (2, 2), dtype),
        ),
        case(
            P.concatenate_p,
            lambda a, b: lax.concatenate([a, b], 0),
            cnormal(rng, (2, 3), dtype),
            cnormal(rng, (1, 3), dtype),
            label="complex",
        ),
    ]
)
concatenate.defkinks(smooth=True)


split_p = find("split", lambda x: lax.split(x, (1, 2), axis=0), np.ones(3, np.float32))


@primitive_gate(split_p, save="none", params=("sizes", "axis"), complex=True)
def split(g, saved, *, axis, **params):
    """x cut into pieces along `axis`.  Local gradient: the pieces' gradients joined again."""
    return (lax.concatenate(list(g), axis),)


split.defcases(
    lambda rng, dtype: [
        case(split_p, lambda x: lax.split(x, (1, 3), axis=1), normal(rng, (2, 4), dtype)),
        case(
            split_p,
            lambda x: lax.split(x, (1, 3), axis=1),
            cnormal(rng, (2, 4), dtype),
            label="complex",
        ),
    ]
)
split.defkinks(smooth=True)


stack_p = find("stack", lambda x: __import__("jax").numpy.stack([x, x]), np.ones(3, np.float32))


@primitive_gate(stack_p, save="none", params=("axis",), complex=True)
def stack(g, saved, *, axis, **params):
    """arrays stacked along a new `axis`.  Local gradient: g cut along it, one slice each."""
    n = g.shape[axis]
    return tuple(lax.index_in_dim(g, i, axis=axis, keepdims=False) for i in range(n))


stack.defcases(
    lambda rng, dtype: [
        case(
            stack_p,
            lambda a, b: __import__("jax").numpy.stack([a, b], axis=1),
            normal(rng, (2, 3), dtype),
            normal(rng, (2, 3), dtype),
        ),
        case(
            stack_p,
            lambda a, b: __import__("jax").numpy.stack([a, b]),
            cnormal(rng, (3,), dtype),
            cnormal(rng, (3,), dtype),
            label="complex",
        ),
    ]
)
stack.defkinks(smooth=True)


# ---- identities: values passed through unchanged ------------------------------------------------
@primitive_gate(P.stop_gradient_p, lecture="stop_gradient", save="none", params=(), complex=True)
def stop_gradient(g, saved, **params):
    """x, with no gradient flowing back.  Local gradient: 0 (by definition, not the derivative
    of the value)."""
    return (None,)


stop_gradient.defcases(
    lambda rng, dtype: [
        case(P.stop_gradient_p, lax.stop_gradient, normal(rng, (2, 3), dtype), numeric=False),
        case(
            P.stop_gradient_p,
            lax.stop_gradient,
            cnormal(rng, (2, 3), dtype),
            numeric=False,
            label="complex",
        ),
    ]
)
stop_gradient.defkinks(smooth=True)


optimization_barrier_p = find(
    "optimization_barrier", lambda x: lax.optimization_barrier(x), np.ones(2, np.float32)
)


@primitive_gate(optimization_barrier_p, save="none", params=(), complex=True)
def optimization_barrier(g, saved, **params):
    """its operands, unchanged (XLA may not move computation across it).  Local gradient: 1,
    the gradients behind a barrier of their own."""
    return tuple(lax.optimization_barrier(tuple(g)))


optimization_barrier.defcases(
    lambda rng, dtype: [
        case(
            optimization_barrier_p,
            lambda a, b: lax.optimization_barrier((a, b)),
            normal(rng, (2, 3), dtype),
            normal(rng, (3,), dtype),
        ),
        case(
            optimization_barrier_p,
            lambda a, b: lax.optimization_barrier((a, b)),
            cnormal(rng, (2, 3), dtype),
            normal(rng, (3,), dtype),
            label="complex and real",
        ),
    ]
)
optimization_barrier.defkinks(smooth=True)


@primitive_gate(
    P.sharding_constraint_p,
    save="none",
    params=("sharding", "layout", "context_mesh", "unconstrained_dims"),
    complex=True,
)
def sharding_constraint(g, saved, **params):
    """x with a sharding asked of XLA.  Local gradient: 1, g constrained the same way."""
    return (P.sharding_constraint_p.bind(g, **params),)


@sharding_constraint.defcases
def _sharding_constraint_cases(rng, dtype):
    import jax

    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("d",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return [
        case(
            P.sharding_constraint_p,
            lambda x: lax.with_sharding_constraint(x, sharding),
            normal(rng, (2, 3), dtype),
        ),
        case(
            P.sharding_constraint_p,
            lambda x: lax.with_sharding_constraint(x, sharding),
            cnormal(rng, (2, 3), dtype),
            label="complex",
        ),
    ]


sharding_constraint.defkinks(smooth=True)


@primitive_gate(
    P.device_put_p, save="none", params=("devices", "srcs", "copy_semantics"), complex=True
)
def device_put(g, saved, **params):
    """its operands placed on devices.  Local gradient: 1."""
    return tuple(g)


@device_put.defcases
def _device_put_cases(rng, dtype):
    import jax

    return [
        case(
            P.device_put_p,
            lambda x: jax.device_put(x, jax.devices()[0]),
            normal(rng, (2, 3), dtype),
        ),
        case(
            P.device_put_p,
            lambda x: jax.device_put(x, jax.devices()[0]),
            cnormal(rng, (2, 3), dtype),
            label="complex",
        ),
    ]


device_put.defkinks(smooth=True)
