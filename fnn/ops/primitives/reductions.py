"""Gates of JAX's reductions: sum, max, min, prod over axes, the cumulative ones along an
axis (cumsum, cumprod, cummax, cummin, cumlogsumexp), and lax.reduce with any computation of
one or several operands (reduce).

The lecture's patterns again: a sum distributes g back over what it summed; a max routes it to
the maximum (ties share it evenly, as JAX's rule does); a product sends each factor the product
of the others (computed without dividing, so zeros are handled). JAX differentiates the
cumulative max, min, product and logsumexp as a parallel prefix scan of max, min, mul and
logaddexp, whose tree decides how ties share g: their rules run fnn's own rules over the same
scan, so they give JAX's values exactly, ties, zeros, NaNs and infinities included. A general
lax.reduce is differentiated the same way, as the tree of its computation JAX differentiates.
All take complex values as JAX does (max and min of complex numbers
in JAX's lexicographic order: real part, then imaginary part).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore
from jax.extend.core import primitives as P

from fnn.autodiff.api import make_transforms
from fnn.autodiff.case_values import cdistinct, cnormal, distinct, normal, uniform
from fnn.autodiff.gate import primitive_gate
from fnn.autodiff.interpret import default_rules
from fnn.autodiff.primitive_cases import case
from fnn.errors import JAX_REFUSES_TOO, GateError, describe


def _expand(g, shape, axes):
    """g, which lacks `axes` of `shape`, broadcast back to `shape`."""
    kept = tuple(i for i in range(len(shape)) if i not in axes)
    return lax.broadcast_in_dim(g, shape, kept)


def _reduce_cases(primitive, fn, make=normal, complex_make=None):
    """Cases over several axes; with complex_make (a rule that takes complex values), one
    complex case more."""

    def cases(rng, dtype):
        out = [
            case(primitive, lambda x: fn(x, (1,)), make(rng, (3, 4), dtype), label="axis 1"),
            case(primitive, lambda x: fn(x, (0, 2)), make(rng, (2, 3, 4), dtype), label="axes 0,2"),
            case(primitive, lambda x: fn(x, (0,)), make(rng, (5,), dtype), label="to 0-d"),
            case(primitive, lambda x: fn(x, ()), make(rng, (2, 2), dtype), label="no axes"),
        ]
        if complex_make is not None:
            out.append(
                case(
                    primitive,
                    lambda x: fn(x, (1,)),
                    complex_make(rng, (3, 4), dtype),
                    label="complex",
                )
            )
        return out

    return cases


# ties, a NaN, infinities and zeros: where max, min and prod's rules choose
_SPECIAL_ROWS = np.array(
    [
        [1.0, 1.0, 0.0, 1.0],
        [0.0, 0.0, 2.0, 2.0],
        [np.nan, 1.0, 1.0, 0.0],
        [np.inf, np.inf, -np.inf, 0.0],
        [0.0, 2.0, 0.0, -1.0],
    ]
)


def _reduce_kinks(primitive, fn):
    def kinks(dtype):
        x = _SPECIAL_ROWS.astype(dtype)
        return [
            case(primitive, lambda x: fn(x, (1,)), x, label="rows: ties, NaN, inf, zeros"),
            case(primitive, lambda x: fn(x, (0, 1)), x, label="all"),
        ]

    return kinks


def _cum_kinks(primitive, fn):
    def kinks(dtype):
        x = _SPECIAL_ROWS.astype(dtype)
        return [
            case(primitive, lambda x: fn(x, axis=1), x, label="rows: ties, NaN, inf, zeros"),
            case(primitive, lambda x: fn(x, axis=1, reverse=True), x, label="reverse"),
            case(
                primitive,
                lambda x: fn(x, axis=0),
                np.asarray([1.0, 1.0, 0.0, 2.0], dtype),
                label="[1, 1, 0, 2]",
            ),
        ]

    return kinks


@primitive_gate(
    P.reduce_sum_p,
    lecture="sum",
    save="shapes",
    params=("axes",),
    only={"out_sharding": (None,)},
    complex=True,
)
def reduce_sum(g, shapes, *, axes, **params):
    """sum of x over `axes`.  Local gradient: 1 for every summed element (g broadcast back)."""
    (x,) = shapes
    return (_expand(g, x.shape, axes),)


reduce_sum.defcases(
    _reduce_cases(P.reduce_sum_p, lambda x, a: jnp.sum(x, axis=a), complex_make=cnormal)
)
reduce_sum.defkinks(smooth=True)


def _chooser(g, saved, axes):
    (x,), y = saved
    at = lax.convert_element_type(lax.eq(x, _expand(y, x.shape, axes)), g.dtype)
    counts = lax.reduce_sum_p.bind(at, axes=tuple(axes), out_sharding=None)
    return (lax.mul(at, _expand(lax.div(g, counts), x.shape, axes)),)


@primitive_gate(
    P.reduce_max_p,
    lecture="max",
    save="both",
    params=("axes",),
    only={"out_sharding": (None,)},
    complex=True,
)
def reduce_max(g, saved, *, axes, **params):
    """max of x over `axes`.  Local gradient: 1 at the maximum (the max gate routes); tied
    maxima share g evenly, as JAX's rule does."""
    return _chooser(g, saved, axes)


reduce_max.defcases(
    _reduce_cases(P.reduce_max_p, lambda x, a: jnp.max(x, axis=a), distinct, complex_make=cdistinct)
)
reduce_max.defkinks(_reduce_kinks(P.reduce_max_p, lambda x, a: jnp.max(x, axis=a)))


@primitive_gate(
    P.reduce_min_p, save="both", params=("axes",), only={"out_sharding": (None,)}, complex=True
)
def reduce_min(g, saved, *, axes, **params):
    """min of x over `axes`.  Local gradient: 1 at the minimum; ties share g evenly."""
    return _chooser(g, saved, axes)


reduce_min.defcases(
    _reduce_cases(P.reduce_min_p, lambda x, a: jnp.min(x, axis=a), distinct, complex_make=cdistinct)
)
reduce_min.defkinks(_reduce_kinks(P.reduce_min_p, lambda x, a: jnp.min(x, axis=a)))


def _exclusive_products(x, axis):
    """prod of x's other elements along `axis`, for each element, without dividing:
    (cumprod before it) * (cumprod after it)."""
    before = lax.cumprod(x, axis=axis)
    after = lax.cumprod(x, axis=axis, reverse=True)
    n = x.shape[axis]
    one = lax.full_like(lax.slice_in_dim(x, 0, 1, axis=axis), 1)
    before = lax.concatenate([one, lax.slice_in_dim(before, 0, n - 1, axis=axis)], axis)
    after = lax.concatenate([lax.slice_in_dim(after, 1, n, axis=axis), one], axis)
    return lax.mul(before, after)


@primitive_gate(P.reduce_prod_p, params=("axes",), only={"out_sharding": (None,)}, complex=True)
def reduce_prod(g, inputs, *, axes, **params):
    """product of x over `axes`.  Local gradient: the product of the other factors (exact at
    zeros: prefix products times suffix products, no division)."""
    (x,) = inputs
    if not axes or x.size == 0:
        return (_expand(g, x.shape, axes) if not axes else lax.full_like(x, 0),)
    kept = [i for i in range(x.ndim) if i not in axes]
    perm = list(axes) + kept
    moved = lax.transpose(x, perm)
    flat = lax.reshape(
        moved, (int(np.prod([x.shape[a] for a in axes])),) + moved.shape[len(axes) :]
    )
    others = lax.reshape(_exclusive_products(flat, 0), moved.shape)
    others = lax.transpose(others, tuple(np.argsort(perm)))
    return (lax.mul(others, _expand(g, x.shape, axes)),)


@reduce_prod.defcases
def _reduce_prod_cases(rng, dtype):
    cases = _reduce_cases(
        P.reduce_prod_p,
        lambda x, a: jnp.prod(x, axis=a),
        lambda r, s, d: uniform(r, s, d, 0.5, 1.5),
    )(rng, dtype)
    x = uniform(rng, (3, 4), dtype, 0.5, 1.5)
    x[1, 2] = 0
    z = cnormal(rng, (3, 4), dtype)
    z[1, 2] = 0
    return cases + [
        case(P.reduce_prod_p, lambda x: jnp.prod(x, axis=1), x, label="a zero"),
        case(P.reduce_prod_p, lambda x: jnp.prod(x, axis=1), z, label="complex, a zero"),
    ]


reduce_prod.defkinks(_reduce_kinks(P.reduce_prod_p, lambda x, a: jnp.prod(x, axis=a)))


# ---- cumulative reductions ----------------------------------------------------------------------
def _cum_cases(primitive, fn, make=normal, complex_make=None):
    """As _reduce_cases, along one axis."""

    def cases(rng, dtype):
        out = [
            case(primitive, lambda x: fn(x, 1, False), make(rng, (3, 5), dtype), label="axis 1"),
            case(
                primitive,
                lambda x: fn(x, 0, True),
                make(rng, (4, 2), dtype),
                label="axis 0 reverse",
            ),
            case(primitive, lambda x: fn(x, 0, False), make(rng, (6,), dtype), label="1-d"),
        ]
        if complex_make is not None:
            out.append(
                case(
                    primitive,
                    lambda x: fn(x, 1, True),
                    complex_make(rng, (3, 5), dtype),
                    label="complex",
                )
            )
        return out

    return cases


@primitive_gate(P.cumsum_p, save="none", params=("axis", "reverse"), complex=True)
def cumsum(g, saved, *, axis, reverse, **params):
    """running sum along `axis`.  Local gradient: each element reaches every later sum, so
    dx is the running sum of g in the other direction."""
    return (lax.cumsum(g, axis=axis, reverse=not reverse),)


cumsum.defcases(
    _cum_cases(P.cumsum_p, lambda x, a, r: lax.cumsum(x, axis=a, reverse=r), complex_make=cnormal)
)
cumsum.defkinks(smooth=True)


@primitive_gate(P.cumprod_p, save="inputs", params=("axis", "reverse"), complex=True)
def cumprod(g, inputs, *, axis, reverse, **params):
    """running product y_i = y_(i-1) x_i along `axis`.  Local gradient: dx_k = sum over the
    later products i of g_i y_i / x_k, the product of the other factors (exact at zeros),
    computed as JAX computes it: backward through the parallel prefix scan of multiplies JAX
    differentiates (so also NaNs and infinities land where JAX's do)."""
    return _through_scan(g, inputs[0], lax.mul, axis, reverse)


cumprod.defcases(
    _cum_cases(
        P.cumprod_p,
        lambda x, a, r: lax.cumprod(x, axis=a, reverse=r),
        lambda r, s, d: uniform(r, s, d, 0.5, 1.5),
        complex_make=cnormal,
    )
)
cumprod.defkinks(_cum_kinks(P.cumprod_p, lax.cumprod))


@primitive_gate(P.cumlogsumexp_p, save="inputs", params=("axis", "reverse"), complex=True)
def cumlogsumexp(g, inputs, *, axis, reverse, **params):
    """running log(sum(exp(x))) along `axis`.  Local gradient: dx_k = sum over the later sums i
    of g_i exp(x_k - y_i), computed as JAX computes it: backward through the parallel prefix
    scan of logaddexp JAX differentiates (logaddexp's own rule, exp(x - out), at each step)."""
    return _through_scan(g, inputs[0], _logaddexp, axis, reverse)


cumlogsumexp.defcases(
    _cum_cases(
        P.cumlogsumexp_p,
        lambda x, a, r: lax.cumlogsumexp(x, axis=a, reverse=r),
        # (small imaginary parts: the sums stay off log's branch cut)
        complex_make=lambda r, s, d: cnormal(r, s, d, 0.3),
    )
)
cumlogsumexp.defkinks(_cum_kinks(P.cumlogsumexp_p, lax.cumlogsumexp))


def _logaddexp(a, b):
    return jnp.logaddexp(a, b)  # (JAX's cumlogsumexp scan combines with this function)


def _through_scan(g, x, combine, axis, reverse):
    """The gradient of lax.associative_scan(combine, x) along `axis`, by fnn's own rules for
    the scan's equations (slices, `combine`, concatenations, pads).

    JAX differentiates cummax, cummin (and the other cumulative reductions) as that parallel
    prefix scan (jax/_src/lax/control_flow/loops.py, _cumulative_jvp_rule), so how tied
    values share g is decided by the scan's tree of max/min gates, each of which splits a tie
    evenly: running the same tree backward gives JAX's gradient exactly, ties included."""
    scan = lambda x: lax.associative_scan(combine, x, reverse=reverse, axis=axis)
    return make_transforms(default_rules()).vjp(scan, x)[1](g)


@primitive_gate(P.cummax_p, save="inputs", params=("axis", "reverse"), complex=True)
def cummax(g, inputs, *, axis, reverse, **params):
    """running maximum along `axis`.  Local gradient: each g_i routed to the element holding
    the maximum so far (the max gate, at every step). Ties are split as JAX splits them: by
    the max gates of the parallel prefix scan JAX differentiates (at [1, 1, 0, 2], g_2 goes
    half to each 1)."""
    return _through_scan(g, inputs[0], lax.max, axis, reverse)


cummax.defcases(
    _cum_cases(
        P.cummax_p,
        lambda x, a, r: lax.cummax(x, axis=a, reverse=r),
        distinct,
        complex_make=cdistinct,
    )
)
cummax.defkinks(_cum_kinks(P.cummax_p, lax.cummax))


@primitive_gate(P.cummin_p, save="inputs", params=("axis", "reverse"), complex=True)
def cummin(g, inputs, *, axis, reverse, **params):
    """running minimum along `axis`.  Local gradient: each g_i routed to the element holding
    the minimum so far; ties split as JAX's prefix scan of min gates splits them."""
    return _through_scan(g, inputs[0], lax.min, axis, reverse)


cummin.defcases(
    _cum_cases(
        P.cummin_p,
        lambda x, a, r: lax.cummin(x, axis=a, reverse=r),
        distinct,
        complex_make=cdistinct,
    )
)
cummin.defkinks(_cum_kinks(P.cummin_p, lax.cummin))


# ---- variadic reduce ----------------------------------------------------------------------------
def _reduce_tree(reducer, inits, axes, *xs):
    """lax.reduce of `xs` over `axes` as JAX differentiates it (jax/_src/lax/lax.py,
    _reduce_jvp): the reduced axes moved to the front and flattened, then halved again and
    again, the halves combined elementwise by the reducer (odd lengths padded with the initial
    values)."""
    shape = np.shape(xs[0])
    kept = [i for i in range(len(shape)) if i not in axes]
    n = int(np.prod([shape[a] for a in axes]))
    xs = [
        lax.reshape(x, (n,) + tuple(shape[i] for i in kept), tuple(axes) + tuple(kept)) for x in xs
    ]
    for _ in range(len(kept) + 1):
        reducer = jax.vmap(reducer)
    while xs[0].shape[0] > 1:
        half = (xs[0].shape[0] + 1) // 2
        first = [lax.slice_in_dim(x, 0, half) for x in xs]
        second = [lax.slice_in_dim(x, half, None) for x in xs]
        if xs[0].shape[0] - half != half:
            pads = [(0, 0, 0)] * xs[0].ndim
            pads[0] = (0, 1, 0)
            second = [lax.pad(x, i, pads) for x, i in zip(second, inits)]
        xs = reducer(*(first + second))
    if xs[0].shape[0] == 0:
        return tuple(lax.full(tuple(shape[i] for i in kept), i) for i in inits)
    return tuple(lax.squeeze(x, (0,)) for x in xs)


@primitive_gate(
    P.reduce_p, save="inputs", params=("computation", "jaxpr", "dimensions"), complex=True
)
def reduce(g, inputs, *, jaxpr, dimensions, needs, **params):  # noqa: A001 (the primitive's name)
    """lax.reduce with any computation, of one or several operands together (argmax with its
    value, a max with its index).  Local gradient: that of the reduction as a tree of the
    computation's applications (JAX's rule), by fnn's own rules for the computation's
    primitives (a max gate's tie splits g, a select routes it). None for the initial values:
    JAX refuses to differentiate them, and so does fnn. Complex operands as far as the
    computation's own rules take them."""
    n = len(inputs) // 2
    xs, inits = inputs[:n], inputs[n:]
    if any(needs[n:]):
        raise GateError(
            "rule 'lax.reduce': no gradient with respect to the initial values "
            f"({', '.join(describe(i) for i, need in zip(inits, needs[n:]) if need)}) of a "
            f"general lax.reduce: JAX does not define one either {JAX_REFUSES_TOO}. "
            "Pass them as constants."
        )
    tree = functools.partial(_reduce_tree, jcore.jaxpr_as_fun(jaxpr), inits, tuple(dimensions))
    grads = make_transforms(default_rules()).vjp(tree, *xs)[1](tuple(g))
    return tuple(d if need else None for d, need in zip(grads, needs[:n])) + (None,) * n


def _max_with(x, other, axis):
    """(max of x, `other` where x is largest; the first on ties) along `axis`, with one
    lax.reduce over the pair (as argmax-with-value is written)."""

    def pick(a, b):
        (va, oa), (vb, ob) = a, b
        take_a = lax.bitwise_or(lax.gt(va, vb), lax.ne(vb, vb))  # a NaN b loses
        return lax.select(take_a, va, vb), lax.select(take_a, oa, ob)

    inits = (np.asarray(-np.inf, x.dtype), np.zeros((), other.dtype))
    return lax.reduce((x, other), inits, pick, (axis,))


def _product(x, axes):
    """A one-operand lax.reduce that JAX does not turn into reduce_prod (its computation is a
    function of its own)."""
    return lax.reduce(x, np.asarray(1.0, x.dtype), lambda a, b: a * b, axes)


@reduce.defcases
def _variadic_reduce_cases(rng, dtype):
    x = distinct(rng, (3, 5), dtype)
    index = lambda x: _max_with(x, lax.broadcasted_iota(np.int32, x.shape, 1), 1)
    return [
        case(
            P.reduce_p,
            lambda x, w: _max_with(x, w, 1),
            x,
            normal(rng, (3, 5), dtype),
            fixed=(2, 3),
            label="max and a weight where it is",
        ),
        # JAX cannot differentiate a reduce with an integer operand (its rule reshapes the
        # integer's symbolic zero tangent): central differences judge
        case(P.reduce_p, index, x, fixed=(2, 3), reference=False, label="max with its index"),
        case(
            P.reduce_p,
            lambda x: _product(x, (0,)),
            uniform(rng, (5, 2), dtype, 0.5, 1.5),
            fixed=(1,),
            label="a product, odd length",
        ),
        case(
            P.reduce_p,
            lambda x: _product(x, (0, 2)),
            uniform(rng, (2, 3, 2), dtype, 0.5, 1.5),
            fixed=(1,),
            label="two axes",
        ),
        case(
            P.reduce_p,
            lambda x: _product(x, (0,)),
            cnormal(rng, (5, 2), dtype),
            fixed=(1,),
            label="complex, a product",
        ),
    ]


reduce.defkinks(
    lambda dtype: [
        case(
            P.reduce_p,
            lambda x, w: _max_with(x, w, 1),
            _SPECIAL_ROWS.astype(dtype),
            np.arange(20.0).reshape(5, 4).astype(dtype),
            fixed=(2, 3),
            label="max and a weight: ties, NaN, inf",
        ),
        case(
            P.reduce_p,
            lambda x: _product(x, (1,)),
            _SPECIAL_ROWS.astype(dtype),
            fixed=(1,),
            label="a product: zeros, NaN, inf",
        ),
    ]
)
