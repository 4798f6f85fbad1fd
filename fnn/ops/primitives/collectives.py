"""Gates of JAX's collectives: psum, pmax, pmin, all_gather (to a varying or an invariant
value), psum_scatter, ppermute, all_to_all, and shard_map's casts pvary and psum_invariant.

Each rule is the transpose JAX itself uses (jax/_src/lax/parallel.py), so a function using them
inside `vmap(axis_name=)`, `pmap` or `shard_map` gets JAX's own gradients:

  psum            over positional axes (what vmap(axis_name=) makes of a named one): g broadcast
                  back over them; over named axes: psum of g (each device's output is a copy of
                  the sum, and the copies' cotangents add up)
  pmax, pmin      g routed to the devices (and positions) holding the maximum, ties sharing it
                  evenly, as jnp.max's rule does (JAX has no rule for them)
  all_gather      psum_scatter of g; psum_scatter's: all_gather of g
  ppermute        ppermute of g by the inverse permutation
  all_to_all      all_to_all of g with the split and concat axes swapped (also untiled with
                  different axes, where JAX's rule fails)
  pvary           psum of g (shard_map's use of one invariant value on every device)
  psum_invariant  pvary of g (shard_map's psum with check_vma: varying summands, one invariant
                  sum); all_gather to an invariant value: the device's own slice of g

Inside shard_map with check_vma=True the axes a value varies over are part of its type
(`jax.typeof(x).mat.varying`): pmax and pmin read it to know whether their output is one value
for all devices (g is that value's cotangent) or one per device (pmap, vmap, check_vma=False:
the cotangent is g summed over the devices), as JAX's transposes of psum and psum_invariant
differ. The gates whose primitive exists only with named axes (`NAMED`) have no case the
registry's gate checker can run (it has no named axis): they are rules, not registry gates, and
tests/test_collectives.py checks every rule here (`ALL`) under vmap(axis_name=), pmap and
shard_map on 4 and 8 devices. psum, pmax and pmin are in the registry too, with the positional
cases vmap makes of them. shard_map's own rule (pmap's too: JAX stages a pmap as a jit of a
shard_map) is a structural rule of the core, fnn.autodiff.structural.shard_map (with
`varying`). Not here: pbroadcast (no CPU lowering, and JAX's vmap rule for it fails: it cannot
be checked on CPU), ragged_all_to_all, the asynchronous *_start/*_done collectives, and the
unreduced/reduced casts of explicit sharding.

All but pmax and pmin take complex values as JAX does (they are linear: their transposes need
no conjugation); pmax and pmin, which JAX does not differentiate at all, refuse them.
"""

import jax
import numpy as np
from jax import lax
from jax.extend.core import primitives as P
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as Spec

from fnn.autodiff.case_values import cnormal, distinct, normal
from fnn.autodiff.gate import primitive_gate
from fnn.autodiff.primitive_cases import case, find
from fnn.autodiff.structural.shard_map import varying


def _in_shard_map(fn):
    """fn under a one-device shard_map on an abstract mesh (axis 'i'): only to find primitives
    that exist inside shard_map (tracing it starts no backend)."""
    return jax.shard_map(
        fn, mesh=AbstractMesh((1,), ("i",)), in_specs=Spec("i"), out_specs=Spec("i")
    )


_X = np.ones(2, np.float32)
reduce_scatter_p = find(
    "reduce_scatter", _in_shard_map(lambda x: lax.psum_scatter(x, "i", tiled=True)), _X
)
psum_invariant_p = find("psum_invariant", _in_shard_map(lambda x: lax.psum(x, "i") + x), _X)
pvary_p = find("pvary", _in_shard_map(lambda x: lax.psum(x, "i")), _X)
all_gather_invariant_p = find(
    "all_gather_invariant",
    _in_shard_map(lambda x: lax.all_gather(x, "i", to="invarying", tiled=True) + x),
    _X,
)


def _expand(g, shape, axes):
    """g, which lacks `axes` of `shape`, broadcast back to `shape`."""
    return lax.broadcast_in_dim(g, shape, tuple(i for i in range(len(shape)) if i not in axes))


def _split(axes):
    """(named axes, positional axes) of a collective's `axes`."""
    return (
        tuple(a for a in axes if not isinstance(a, int)),
        tuple(a for a in axes if isinstance(a, int)),
    )


def _vary(g, axes):
    """g typed as varying over `axes` (pvary over those it does not vary over yet)."""
    missing = tuple(a for a in axes if a not in varying(g))
    return lax.pcast(g, missing, to="varying") if missing else g


def _save_varying(args, out):
    """What a rule that binds a collective itself keeps: the axes its input varied over
    (under shard_map's check_vma; empty elsewhere), a frozenset and no array."""
    return varying(args[0])


def _positional_cases(primitive, fn, make=normal, complex_make=None):
    """Cases of a reduction collective as vmap(axis_name=) binds it: positional axes (with
    complex_make, one complex case more)."""
    one = lambda v: fn(v, "b")
    two = lambda v: fn(v, ("a", "b"))

    def cases(rng, dtype):
        return [
            case(
                primitive,
                jax.vmap(one, axis_name="b"),
                make(rng, (4, 3), dtype),
                label="vmap axis 0",
            ),
            case(
                primitive,
                jax.vmap(one, axis_name="b", in_axes=1),
                make(rng, (2, 5, 3), dtype),
                label="vmap in_axes=1",
            ),
            case(
                primitive,
                jax.vmap(jax.vmap(two, axis_name="b"), axis_name="a"),
                make(rng, (2, 3, 2), dtype),
                label="two axes",
            ),
        ] + (
            []
            if complex_make is None
            else [
                case(
                    primitive,
                    jax.vmap(one, axis_name="b"),
                    complex_make(rng, (4, 3), dtype),
                    label="complex",
                )
            ]
        )

    return cases


# ---- reductions over devices ---------------------------------------------------------------
@primitive_gate(P.psum_p, save="shapes", params=("axes", "axis_index_groups"), complex=True)
def psum(g, shapes, *, axes, axis_index_groups):
    """Sum over devices (named axes) and positions (positional axes).  Local gradient: 1 for
    every summand: g broadcast back over the positional axes, then summed over the named ones
    (each device's output is a copy of the sum)."""
    (x,) = shapes
    named, pos = _split(axes)
    dx = _expand(g, x.shape, pos) if pos else g
    if named:
        dx = P.psum_p.bind(dx, axes=named, axis_index_groups=axis_index_groups)
    return (dx,)


psum.defcases(_positional_cases(P.psum_p, lax.psum, complex_make=cnormal))
psum.defkinks(smooth=True)


def _chooser(g, saved, axes, axis_index_groups):
    (x,), y = saved
    named, pos = _split(axes)
    at = lax.convert_element_type(lax.eq(x, _expand(y, x.shape, pos) if pos else y), g.dtype)
    count = lax.reduce_sum_p.bind(at, axes=pos, out_sharding=None) if pos else at
    if named:
        count = lax.psum(count, named, axis_index_groups=axis_index_groups)
        if not set(named) <= varying(x):  # one output per device: they all took the max
            g = lax.psum(g, named, axis_index_groups=axis_index_groups)
    share = lax.div(g, count)
    return (lax.mul(at, _expand(share, x.shape, pos) if pos else share),)


def _chooser_forward(primitive, reduce):
    """pmax/pmin's forward: over positional axes alone it is `reduce` over them (JAX's own
    evaluation of it), which JAX can differentiate, so JAX can differentiate fnn's backward
    too (JAX has no rule for pmax/pmin themselves); over named axes, the primitive."""

    def forward(x, *, axes, axis_index_groups):
        named, pos = _split(axes)
        y = (
            primitive.bind(x, axes=tuple(axes), axis_index_groups=axis_index_groups)
            if named
            else reduce(x, pos)
        )
        return y, ((x,), y)

    return forward


def _chooser_kinks(primitive, fn):
    def kinks(dtype):
        ties = np.array([[1.0, 2.0, 0.0], [1.0, 2.0, -1.0], [0.0, 2.0, -1.0]], dtype)
        return [
            case(
                primitive,
                jax.vmap(lambda v: fn(v, "b"), axis_name="b"),
                ties,
                label="ties across the axis",
            )
        ]

    return kinks


@primitive_gate(
    P.pmax_p,
    forward=_chooser_forward(P.pmax_p, lax.reduce_max),
    params=("axes", "axis_index_groups"),
)
def pmax(g, saved, *, axes, axis_index_groups):
    """Max over devices and positions.  Local gradient: 1 where x is the maximum (ties share g
    evenly), as jnp.max's rule routes it; with one output per device, g summed over them."""
    return _chooser(g, saved, axes, axis_index_groups)


pmax.defcases(_positional_cases(P.pmax_p, lax.pmax, distinct))
pmax.defkinks(_chooser_kinks(P.pmax_p, lax.pmax))


@primitive_gate(
    P.pmin_p,
    forward=_chooser_forward(P.pmin_p, lax.reduce_min),
    params=("axes", "axis_index_groups"),
)
def pmin(g, saved, *, axes, axis_index_groups):
    """Min over devices and positions.  Local gradient: 1 where x is the minimum (ties share g
    evenly); with one output per device, g summed over them."""
    return _chooser(g, saved, axes, axis_index_groups)


pmin.defcases(_positional_cases(P.pmin_p, lax.pmin, distinct))
pmin.defkinks(_chooser_kinks(P.pmin_p, lax.pmin))


# ---- collectives over named axes only (checked by tests/test_collectives.py) -----------------
@primitive_gate(
    P.all_gather_p,
    save="none",
    params=("all_gather_dimension", "axis_name", "axis_index_groups", "axis_size", "tiled"),
    complex=True,
)
def all_gather(g, _, *, all_gather_dimension, axis_name, axis_index_groups, axis_size, tiled):
    """Every device's x, stacked (or concatenated, tiled) along all_gather_dimension.  Local
    gradient: each device's slice of g, summed over the devices (psum_scatter of g)."""
    return (
        lax.psum_scatter(
            g,
            axis_name,
            scatter_dimension=all_gather_dimension,
            axis_index_groups=axis_index_groups,
            tiled=tiled,
        ),
    )


@primitive_gate(
    reduce_scatter_p,
    save="none",
    params=("scatter_dimension", "axis_name", "axis_index_groups", "axis_size", "tiled"),
    complex=True,
)
def psum_scatter(g, _, *, scatter_dimension, axis_name, axis_index_groups, axis_size, tiled):
    """lax.psum_scatter: the sum over devices, device i keeping slice i of scatter_dimension.
    Local gradient: 1 for every summand of its slice: all_gather of g."""
    return (
        lax.all_gather(
            g, axis_name, axis=scatter_dimension, axis_index_groups=axis_index_groups, tiled=tiled
        ),
    )


@primitive_gate(P.ppermute_p, save="none", params=("axis_name", "perm"), complex=True)
def ppermute(g, _, *, axis_name, perm):
    """x sent from device src to device dst for each (src, dst) of perm (zeros where none
    arrives).  Local gradient: g sent back, by the inverse permutation."""
    return (lax.ppermute(g, axis_name, perm=[(dst, src) for src, dst in perm]),)


@primitive_gate(
    P.all_to_all_p,
    save=_save_varying,
    params=("axis_name", "split_axis", "concat_axis", "axis_index_groups", "tiled"),
    complex=True,
)
def all_to_all(g, vma, *, axis_name, split_axis, concat_axis, axis_index_groups, tiled):
    """x split along split_axis, chunk i sent to device i, the received chunks concatenated
    along concat_axis.  Local gradient: the reverse exchange (the two axes swapped).

    The primitive always splits and concatenates whole axes (lax.all_to_all's untiled form
    adds and removes a size-1 axis around it), so its reverse is the primitive with the axes
    swapped. (JAX's own rule calls lax.all_to_all, which adds that axis again: JAX's own gradient fails
    on an untiled all_to_all whose split and concat axes differ, fnn does not.)"""
    g = _vary(g, tuple(vma))  # typed as x was (as lax.all_to_all makes it)
    return (
        P.all_to_all_p.bind(
            g,
            axis_name=axis_name,
            split_axis=concat_axis,
            concat_axis=split_axis,
            axis_index_groups=axis_index_groups,
            tiled=tiled,
        ),
    )


@primitive_gate(pvary_p, save="none", params=("axes",), complex=True)
def pvary(g, _, *, axes):
    """shard_map's cast of a device-invariant value to a varying one (its use on each
    device).  Local gradient: 1 per device's use: g summed over the devices."""
    return (lax.psum(g, axes),)


@primitive_gate(psum_invariant_p, save="none", params=("axes",), complex=True)
def psum_invariant(g, _, *, axes):
    """shard_map's psum under check_vma: varying summands, one invariant sum.  Local gradient:
    1 for every summand: g, the sum's cotangent, on every device (pvary of g)."""
    return (_vary(g, axes),)


@primitive_gate(
    all_gather_invariant_p,
    save="none",
    params=("all_gather_dimension", "axis_name", "axis_size", "tiled"),
    complex=True,
)
def all_gather_invariant(g, _, *, all_gather_dimension, axis_name, axis_size, tiled):
    """all_gather(to='invarying'): every device's x, one invariant result.  Local gradient:
    the device's own slice of g."""
    size = g.shape[all_gather_dimension] // axis_size
    out = lax.dynamic_slice_in_dim(
        g, lax.axis_index(axis_name) * size, size, axis=all_gather_dimension
    )
    return (out if tiled else lax.squeeze(out, (all_gather_dimension,)),)


# the gates that exist only with named axes: not in the registry (no named axis there)
NAMED = {
    gate.primitive: gate
    for gate in (
        all_gather,
        psum_scatter,
        ppermute,
        all_to_all,
        pvary,
        psum_invariant,
        all_gather_invariant,
    )
}
# the rules of this module checked under named axes by tests/test_collectives.py: all of them
ALL = {gate.primitive: gate for gate in (psum, pmax, pmin, *NAMED.values())}
