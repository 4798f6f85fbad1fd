"""Gates of JAX's indexing primitives: dynamic_slice, dynamic_update_slice, gather, scatter-add,
scatter, and the permutations sort, top_k and approx_top_k (scatter-max/min/mul:
fnn.ops.primitives.segments).

A read (slice, gather) sends g back to the positions it read, adding where one position was
read twice; a write (update, scatter) sends the written positions' g to the updates and the
rest to the operand. Index arrays carry no gradient. Sorting is a permutation, so its gradient
is g permuted back.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import primitives as P

from fnn.autodiff.case_values import cnormal, distinct, normal
from fnn.autodiff.gate import primitive_gate
from fnn.autodiff.primitive_cases import case


@primitive_gate(P.dynamic_slice_p, params=("slice_sizes",), complex=True)
def dynamic_slice(g, inputs, *, slice_sizes, **params):
    """x[start : start + size] per axis, start given at run time (clamped into range).
    Local gradient: g written back at the same (clamped) place in zeros."""
    x, *starts = inputs
    zeros = lax.full(x.shape, 0, x.dtype)
    # the primitives themselves: lax's wrappers would first wrap negative starts around
    return (P.dynamic_update_slice_p.bind(zeros, g, *starts),) + (None,) * len(starts)


dynamic_slice.defcases(
    lambda rng, dtype: [
        case(
            P.dynamic_slice_p,
            lambda x, i, j: lax.dynamic_slice(x, (i, j), (2, 2)),
            normal(rng, (4, 5), dtype),
            np.int32(1),
            np.int32(2),
        ),
        case(
            P.dynamic_slice_p,
            lambda x, i: lax.dynamic_slice(x, (i,), (3,)),
            normal(rng, (4,), dtype),
            np.int32(3),
            label="clamped start",
        ),
        case(
            P.dynamic_slice_p,
            lambda x, i: P.dynamic_slice_p.bind(x, i, slice_sizes=(2,)),
            normal(rng, (4,), dtype),
            np.int32(-1),
            label="negative start (clamped to 0)",
        ),
        case(
            P.dynamic_slice_p,
            lambda x, i: lax.dynamic_slice(x, (i,), (2,)),
            cnormal(rng, (4,), dtype),
            np.int32(1),
            label="complex",
        ),
    ]
)
dynamic_slice.defkinks(smooth=True)


@primitive_gate(P.dynamic_update_slice_p, params=(), complex=True)
def dynamic_update_slice(g, inputs, *, needs, **params):
    """x with `update` written at `start` (clamped).  Local gradients: g with the written
    block zeroed for x; the written block of g for the update."""
    x, update, *starts = inputs
    dx = (
        P.dynamic_update_slice_p.bind(g, lax.full(update.shape, 0, g.dtype), *starts)
        if needs[0]
        else None
    )
    du = P.dynamic_slice_p.bind(g, *starts, slice_sizes=tuple(update.shape)) if needs[1] else None
    return (dx, None if du is None else du.astype(update.dtype)) + (None,) * len(starts)


dynamic_update_slice.defcases(
    lambda rng, dtype: [
        case(
            P.dynamic_update_slice_p,
            lambda x, u, i: lax.dynamic_update_slice(x, u, (i, np.int32(0))),
            normal(rng, (4, 3), dtype),
            normal(rng, (2, 3), dtype),
            np.int32(1),
        ),
        case(
            P.dynamic_update_slice_p,
            lambda x, u, i: lax.dynamic_update_slice(x, u, (i,)),
            cnormal(rng, (4,), dtype),
            cnormal(rng, (2,), dtype),
            np.int32(1),
            label="complex",
        ),
    ]
)
dynamic_update_slice.defkinks(smooth=True)


def _gather_dnums_of(dnums):
    """The gather that reads what a scatter with `dnums` writes."""
    return lax.GatherDimensionNumbers(
        offset_dims=dnums.update_window_dims,
        collapsed_slice_dims=dnums.inserted_window_dims,
        start_index_map=dnums.scatter_dims_to_operand_dims,
        operand_batching_dims=dnums.operand_batching_dims,
        start_indices_batching_dims=dnums.scatter_indices_batching_dims,
    )


def _slice_sizes(operand_shape, updates_shape, dnums):
    sizes, pos = [], 0
    for i in range(len(operand_shape)):
        if i in dnums.inserted_window_dims or i in dnums.operand_batching_dims:
            sizes.append(1)
        else:
            sizes.append(updates_shape[dnums.update_window_dims[pos]])
            pos += 1
    return tuple(sizes)


def _read_back(g, indices, updates_shape, dnums, mode):
    """The positions a scatter with `dnums` wrote, read out of g (a gather)."""
    return lax.gather(
        g,
        indices,
        _gather_dnums_of(dnums),
        _slice_sizes(g.shape, updates_shape, dnums),
        mode=mode,
        fill_value=0,
    )


def _operand_shape_and_indices(args, out):
    """What a gather's or scatter's VJP needs: the operand's shape and dtype, and the indices
    (and the updates' shape and dtype, for a scatter)."""
    spec = lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a))
    return (spec(args[0]), args[1]) + tuple(spec(a) for a in args[2:])


@primitive_gate(
    P.gather_p,
    lecture="take",
    save=_operand_shape_and_indices,
    params=(
        "dimension_numbers",
        "slice_sizes",
        "unique_indices",
        "indices_are_sorted",
        "mode",
        "fill_value",
    ),
    complex=True,
)
def gather(
    g,
    saved,
    *,
    dimension_numbers,
    slice_sizes,
    unique_indices,
    indices_are_sorted,
    mode,
    fill_value,
    **params,
):
    """slices of x at run-time positions (fancy indexing, take).  Local gradient: g added
    into zeros at the positions read (a scatter-add; a position read twice gets both)."""
    x, indices = saved
    dnums = lax.ScatterDimensionNumbers(
        update_window_dims=dimension_numbers.offset_dims,
        inserted_window_dims=dimension_numbers.collapsed_slice_dims,
        scatter_dims_to_operand_dims=dimension_numbers.start_index_map,
        operand_batching_dims=dimension_numbers.operand_batching_dims,
        scatter_indices_batching_dims=dimension_numbers.start_indices_batching_dims,
    )
    zeros = lax.full(x.shape, 0, g.dtype)
    dx = lax.scatter_add(
        zeros,
        indices,
        g,
        dnums,
        indices_are_sorted=indices_are_sorted,
        unique_indices=unique_indices,
        mode=mode,
    )
    return dx.astype(x.dtype), None


@gather.defcases
def _gather_cases(rng, dtype):
    x = normal(rng, (5, 3), dtype)
    return [
        case(P.gather_p, lambda x, i: x[i], x, np.array([0, 2, 2, 4]), label="rows, repeats"),
        case(
            P.gather_p,
            lambda x, i: jnp.take_along_axis(x, i, axis=1, mode="clip"),
            x,
            rng.integers(0, 3, (5, 2)),
            label="take_along_axis",
        ),
        case(P.gather_p, lambda x, i: x[:, i], x, np.array([[1, 0], [2, 2]]), label="columns"),
        case(
            P.gather_p,
            lambda x, i: x.at[i].get(mode="fill", fill_value=0),
            x,
            np.array([1, 7]),
            label="fill out of range",
        ),
        case(
            P.gather_p,
            lambda x, i: x[i],
            cnormal(rng, (5, 3), dtype),
            np.array([0, 2, 2, 4]),
            label="complex",
        ),
    ]


# scatter-add's update_jaxpr is the addition (its consts none): the rule is for scatter-add
_SCATTER_PARAMS = (
    "dimension_numbers",
    "indices_are_sorted",
    "unique_indices",
    "mode",
    "update_jaxpr",
    "update_consts",
)


def scatter_row_cases(primitive, method, rng, dtype):
    """x (5, 3) and the two row cases of a scatter `x.at[i].<method>(u)`: an index repeated,
    and unique indices (declared so); also the cases of the segment scatters."""
    x = normal(rng, (5, 3), dtype)
    fn = lambda x, i, u: getattr(x.at[i], method)(u)
    unique = lambda x, i, u: getattr(x.at[i], method)(u, unique_indices=True)
    rows = np.array([0, 2, 2])
    return (
        x,
        fn,
        [
            case(primitive, fn, x, rows, normal(rng, (3, 3), dtype), label="rows, a repeat"),
            case(
                primitive,
                unique,
                x,
                np.array([4, 1]),
                normal(rng, (2, 3), dtype),
                label="rows, unique",
            ),
        ],
    )


def _scatter_cases(primitive, method, complex=False):  # noqa: A002
    def cases(rng, dtype):
        x, fn, rows = scatter_row_cases(primitive, method, rng, dtype)
        elements = (np.array([1, 3]), np.array([0, 2]))
        out = rows + [case(primitive, fn, x, elements, normal(rng, (2,), dtype), label="elements")]
        if complex:
            z, u = cnormal(rng, (5, 3), dtype), cnormal(rng, (3, 3), dtype)
            out.append(case(primitive, fn, z, np.array([0, 2, 2]), u, label="complex, a repeat"))
        return out

    return cases


@primitive_gate(
    P.scatter_add_p, save=_operand_shape_and_indices, params=_SCATTER_PARAMS, complex=True
)
def scatter_add(
    g, saved, *, dimension_numbers, indices_are_sorted, unique_indices, mode, needs, **params
):
    """x with updates added at run-time positions (.at[].add).  Local gradients: 1 for x;
    for each update, g read at the position it was added to (a gather)."""
    x, indices, updates = saved
    du = None
    if needs[2]:
        du = _read_back(g, indices, updates.shape, dimension_numbers, mode).astype(updates.dtype)
    return (g if needs[0] else None), None, du


scatter_add.defcases(_scatter_cases(P.scatter_add_p, "add", complex=True))
scatter_add.defkinks(smooth=True)


@primitive_gate(
    P.scatter_p,
    save=_operand_shape_and_indices,
    params=_SCATTER_PARAMS[:-2],
    only={"update_jaxpr": (None,), "update_consts": ((),)},
    complex=True,
)
def scatter(
    g, saved, *, dimension_numbers, indices_are_sorted, unique_indices, mode, needs, **params
):
    """x with updates written at run-time positions (.at[].set).  Local gradients: g where x
    was not overwritten; for each update, g at its position if it is the update that stayed
    (of several written to one position, one wins, as in the forward)."""
    x, indices, updates = saved
    dn = dimension_numbers
    if unique_indices:
        dx = (
            lax.scatter(
                g,
                indices,
                lax.full(updates.shape, 0, g.dtype),
                dn,
                indices_are_sorted=indices_are_sorted,
                unique_indices=True,
                mode=mode,
            )
            if needs[0]
            else None
        )
        du = (
            _read_back(g, indices, updates.shape, dn, mode).astype(updates.dtype)
            if needs[2]
            else None
        )
        return dx, None, du
    # which update stayed where: scatter each update's id, read the ids back (JAX's scheme)
    ids_shape = list(updates.shape)
    for d in dn.update_window_dims:
        ids_shape[d] = 1
    n = int(np.prod(ids_shape))
    id_dtype = np.uint32 if n < 2**32 - 1 else np.uint64
    ids = lax.add(lax.reshape(lax.iota(id_dtype, n), ids_shape), np.ones((), id_dtype))
    ids = jnp.broadcast_to(ids, updates.shape)
    written = lax.scatter(
        lax.full(x.shape, 0, id_dtype),
        indices,
        ids,
        dn,
        indices_are_sorted=indices_are_sorted,
        unique_indices=False,
        mode=mode,
    )
    dx = du = None
    if needs[0]:
        dx = lax.select(lax.eq(written, np.zeros((), id_dtype)), g, lax.full_like(g, 0))
    if needs[2]:
        # (read back as JAX's rule does, dropping out-of-range positions whatever the mode)
        stayed = lax.eq(
            ids, _read_back(written, indices, updates.shape, dn, lax.GatherScatterMode.FILL_OR_DROP)
        )
        read = _read_back(g, indices, updates.shape, dn, mode)
        du = lax.select(stayed, read, lax.full_like(read, 0)).astype(updates.dtype)
    return dx, None, du


scatter.defcases(_scatter_cases(P.scatter_p, "set", complex=True))


def _gather_kinks(dtype):
    # x[argmax(x)]: argmax picks the first of tied maxima, the gather reads that one
    x = np.asarray([1.0, 3.0, 3.0, 0.0], dtype)
    return [
        case(P.gather_p, lambda x: x[jnp.argmax(x)[None]], x, label="at argmax, tied"),
        case(
            P.gather_p,
            lambda x: x[jnp.argsort(x)],
            np.asarray([1.0, 0.0, 1.0, 1.0], dtype),
            label="by argsort, tied",
        ),
    ]


gather.defkinks(_gather_kinks)


def _scatter_kinks(dtype):
    # several updates written to one place (one of them stays, as in the forward), NaNs
    x = np.asarray([[1.0, np.nan], [2.0, 3.0], [np.inf, 0.0]], dtype)
    u = np.asarray([[4.0, 5.0], [6.0, np.nan], [7.0, 8.0]], dtype)
    return [
        case(
            P.scatter_p,
            lambda x, i, u: x.at[i].set(u),
            x,
            np.asarray([1, 1, 0]),
            u,
            label="repeated rows",
        ),
        case(
            P.scatter_p,
            lambda x, i, u: x.at[i].set(u, mode="clip"),
            x,
            np.asarray([5, 2, 2]),
            u,
            label="clipped, repeated",
        ),
    ]


scatter.defkinks(_scatter_kinks)


# ---- permutations ------------------------------------------------------------------------------
def _sort_forward(*operands, dimension, is_stable, num_keys):
    """sort with the permutation: the operands sorted together with an iota, so the VJP knows
    where each output came from."""
    iota = lax.broadcasted_iota(np.int32, np.shape(operands[0]), dimension)
    out = P.sort_p.bind(
        *operands, iota, dimension=dimension, is_stable=is_stable, num_keys=num_keys
    )
    return tuple(out[:-1]), out[-1]


def _unpermute(g, perm, dimension):
    """g moved back to the positions `perm` says its elements came from, along `dimension`."""
    grids = [lax.broadcasted_iota(np.int32, g.shape, d) for d in range(g.ndim)]
    grids[dimension] = perm
    return jnp.zeros_like(g).at[tuple(grids)].set(g, unique_indices=True)


@primitive_gate(
    P.sort_p, forward=_sort_forward, params=("dimension", "is_stable", "num_keys"), complex=True
)
def sort(g, perm, *, dimension, needs, **params):
    """operands sorted along `dimension` by their first `num_keys`.  Local gradient: a
    permutation, so each element's g goes back to where the element came from."""
    return tuple(_unpermute(gi, perm, dimension) if need else None for gi, need in zip(g, needs))


@sort.defcases
def _sort_cases(rng, dtype):
    x = distinct(rng, (3, 5), dtype)
    return [
        case(P.sort_p, lambda x: lax.sort(x, dimension=1), x, label="one operand"),
        case(
            P.sort_p,
            lambda k, v: lax.sort((k, v), dimension=0, num_keys=1),
            distinct(rng, (4, 2), dtype),
            normal(rng, (4, 2), dtype),
            label="key and value",
        ),
        case(
            P.sort_p,
            lambda k, v: lax.sort((k, v), dimension=0, num_keys=1),
            distinct(rng, (4, 2), dtype),
            cnormal(rng, (4, 2), dtype),
            label="complex values",
        ),
        case(
            P.sort_p,
            lambda z: lax.sort(z, dimension=0),
            cnormal(rng, (5,), dtype),
            label="complex keys (lexicographic)",
        ),
    ]


def _sort_kinks(dtype):
    x = np.asarray([[1.0, 1.0, 0.0, 1.0], [np.nan, 0.0, -0.0, np.inf]], dtype)
    return [
        case(P.sort_p, lambda x: lax.sort(x, dimension=1), x, label="ties, NaN, zeros"),
        case(
            P.sort_p,
            lambda k, v: lax.sort((k, v), dimension=1, num_keys=1),
            x,
            np.arange(8.0).reshape(2, 4).astype(dtype),
            label="tied keys and values",
        ),
    ]


sort.defkinks(_sort_kinks)


def _taken_back(g_values, x, indices, axis):
    """(dx,): each of g_values added back at the position along `axis` its value was taken from
    (`indices`), zero elsewhere: top_k's and approx_top_k's local gradient."""
    axis = axis % len(x.shape)
    grids = [lax.broadcasted_iota(np.int32, g_values.shape, d) for d in range(g_values.ndim)]
    grids[axis] = indices.astype(np.int32)
    return (jnp.zeros(x.shape, x.dtype).at[tuple(grids)].add(g_values),)


@primitive_gate(
    P.top_k_p,
    save=lambda args, out: (
        jax.ShapeDtypeStruct(np.shape(args[0]), jnp.result_type(args[0])),
        out[1],
    ),
    params=("k", "axis"),
)
def top_k(g, saved, *, k, axis=-1, **params):
    """the k largest entries along `axis` (the last by default) and their indices.  Local
    gradient: each value's g goes back to the position it was taken from."""
    return _taken_back(g[0], *saved, axis)


top_k.defcases(
    lambda rng, dtype: [
        case(P.top_k_p, lambda x: lax.top_k(x, 2), distinct(rng, (3, 5), dtype)),
        case(P.top_k_p, lambda x: lax.top_k(x, 3), distinct(rng, (6,), dtype), label="1-d"),
    ]
)


def _top_k_ties(dtype):
    return np.asarray([[1.0, 1.0, 0.0, 1.0], [np.nan, 0.0, -0.0, np.inf]], dtype)


def _top_k_kinks(dtype):
    return [
        case(P.top_k_p, lambda x: lax.top_k(x, 2), _top_k_ties(dtype), label="ties, NaN, zeros")
    ]


top_k.defkinks(_top_k_kinks)


@primitive_gate(
    P.approx_top_k_p,
    save=lambda args, out: (
        jax.ShapeDtypeStruct(np.shape(args[0]), jnp.result_type(args[0])),
        out[1],
    ),
    params=(
        "k",
        "reduction_dimension",
        "recall_target",
        "is_max_k",
        "reduction_input_size_override",
        "aggregate_to_topk",
    ),
)
def approx_top_k(g, saved, *, reduction_dimension, **params):
    """the (approximately) k largest or smallest entries along `reduction_dimension` and their
    indices (lax.approx_max_k, approx_min_k).  Local gradient: each value's g goes back to the
    position it was taken from (JAX's rule: the tangent read at the indices)."""
    return _taken_back(g[0], *saved, reduction_dimension)


approx_top_k.defcases(
    lambda rng, dtype: [
        case(P.approx_top_k_p, lambda x: lax.approx_max_k(x, 2), distinct(rng, (3, 5), dtype)),
        case(
            P.approx_top_k_p,
            lambda x: lax.approx_min_k(x, 3, reduction_dimension=0),
            distinct(rng, (6, 2), dtype),
            label="min, axis 0",
        ),
        case(
            P.approx_top_k_p,
            lambda x: lax.approx_max_k(x, 2, aggregate_to_topk=False),
            distinct(rng, (8,), dtype),
            label="not aggregated",
        ),
    ]
)
approx_top_k.defkinks(
    lambda dtype: [
        case(
            P.approx_top_k_p,
            lambda x: lax.approx_max_k(x, 2),
            _top_k_ties(dtype),
            label="ties, NaN, zeros",
        ),
        case(
            P.approx_top_k_p,
            lambda x: lax.approx_min_k(x, 2),
            _top_k_ties(dtype),
            label="min: ties, NaN, zeros",
        ),
    ]
)
