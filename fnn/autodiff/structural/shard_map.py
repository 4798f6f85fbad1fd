"""The gate of jax.shard_map, and so of jax.pmap (which JAX stages as a jit of a shard_map with
check_vma=False): its body interpreted per shard, like a scan's body per step.

The forward is a shard_map over the same mesh and specs whose body runs the original body
interpreted onto a tape of its own (fnn's rules, the collectives' among them), and returns,
besides the outputs, what that tape's gates saved: the residuals. A residual leaves the
shard_map split along its first axis over the mesh axes it varies over (check_vma=True: its
type says which; check_vma=False: all of the shard_map's axes), as JAX's own partial
evaluation of shard_map does, so each shard gets its own back; a scalar is given a first axis
of size 1; a saved value that is one of the shard's inputs is not an output (the backward gets
the inputs, split as they came). The backward is a shard_map whose body rebuilds the shard's tape from its residuals
(fnn.autodiff.replay.Template) and runs its backward on the outputs' cotangents, split as the
outputs were; the inputs' cotangents come back split as the inputs were.

Without check_vma, JAX's transpose of shard_map (jax/_src/shard_map.py) takes a replicated
output's cotangent as shared among the copies (divided by the number of devices it is
replicated over) and sums a replicated input's cotangent over those devices; so does this rule.
The residual specs are found by tracing the forward body once abstractly (as cond finds its
branches' residuals). Complex values pass through as the body's own rules take them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore
from jax.sharding import AbstractMesh, Mesh
from jax.sharding import PartitionSpec as Spec

from fnn.autodiff.case_values import cnormal, normal
from fnn.autodiff.gate import primitive_gate
from fnn.autodiff.interpret import join_scope, scope_of, site_of
from fnn.autodiff.primitive_cases import case, find
from fnn.autodiff.structural.loops import FNN_PARAMS, Body, body_interpreter, pullback, spec
from fnn.autodiff.tape import apply
from fnn.errors import GateError

shard_map_p = find(
    "shard_map",
    jax.shard_map(
        lambda x: x, mesh=AbstractMesh((1,), ("i",)), in_specs=Spec("i"), out_specs=Spec("i")
    ),
    np.ones(2, np.float32),
)
_PARAMS = ("jaxpr", "mesh", "in_specs", "out_specs", "check_vma", "newly_manual_axes")


def varying(x) -> frozenset:
    """The mesh axes x varies over, by its type (empty outside shard_map's check_vma)."""
    mat = getattr(jax.typeof(x), "mat", None)
    return frozenset(mat.varying if mat is not None else getattr(jax.typeof(x), "vma", ()))


def _mentioned(spec) -> set:
    """The mesh axes a PartitionSpec splits some dimension over."""
    names = set()
    for part in spec:
        if part is not None:
            names.update(part if isinstance(part, tuple) else (part,))
    return names


def _unmentioned(spec, manual) -> tuple:
    return tuple(n for n in manual if n not in _mentioned(spec))


def _residual_spec(r, mesh, manual, check_vma):
    names = [n for n in mesh.axis_names if n in varying(r)] if check_vma else list(manual)
    return Spec(tuple(names)) if names else Spec()


def _check_specs(specs):
    for s in specs:
        if getattr(s, "unreduced", None) or getattr(s, "reduced", None):
            raise GateError(
                f"rule 'shard_map' does not handle the partition spec {s} "
                "(unreduced or reduced axes): use JAX's built-in gradient for this program"
            )


def _shard_map_forward(
    *args, jaxpr, mesh, in_specs, out_specs, check_vma, newly_manual_axes, rules=None, scope=""
):
    _check_specs(tuple(in_specs) + tuple(out_specs))
    interp = body_interpreter(rules, scope)
    closed = jcore.ClosedJaxpr(jaxpr, ())
    manual = tuple(n for n in mesh.axis_names if n in newly_manual_axes)
    smap = lambda f, outs: jax.shard_map(
        f,
        mesh=mesh,
        in_specs=tuple(in_specs),
        out_specs=outs,
        axis_names=set(newly_manual_axes),
        check_vma=check_vma,
    )
    found = {}

    def probe(*local):  # the residuals' specs, from their types
        body = Body(interp, closed, list(local), invariants=local)
        found["res_specs"] = tuple(
            _residual_spec(r, mesh, manual, check_vma) for r in body.residuals
        )
        return tuple(body.outs)

    jax.eval_shape(smap(probe, tuple(out_specs)), *args)

    def run(*local):
        body = Body(interp, closed, list(local), invariants=local)
        found["body"], found["local"] = body, [spec(a) for a in local]
        return tuple(body.outs), tuple(r[None] if np.ndim(r) == 0 else r for r in body.residuals)

    outs, residuals = smap(run, (tuple(out_specs), found["res_specs"]))(*args)
    body = found["body"]
    scalar = [np.ndim(r) == 0 for r in body.residuals]
    saved = (
        body.template,
        body.in_nodes,
        body.out_nodes,
        args,
        residuals,
        found["res_specs"],
        scalar,
        found["local"],
    )
    return tuple(outs), saved


@primitive_gate(shard_map_p, forward=_shard_map_forward, params=_PARAMS + FNN_PARAMS, complex=True)
def shard_map(
    g, saved, *, mesh, in_specs, out_specs, check_vma, newly_manual_axes, needs, **params
):
    """jax.shard_map (and jax.pmap) of a body over a mesh.  Local gradient: the body's own
    backward, per shard, in a shard_map over the same mesh (the collectives' cotangents
    exchanged as their rules say); without check_vma, a replicated output's cotangent shared
    among its copies and a replicated input's summed over them, as JAX does."""
    template, in_nodes, out_nodes, args, residuals, res_specs, scalar, local = saved
    manual = tuple(n for n in mesh.axis_names if n in newly_manual_axes)
    live = [k for k, node in enumerate(out_nodes) if node is not None]
    cts = [g[k] for k in live]
    if not check_vma:
        cts = [
            ct / math.prod(mesh.shape[n] for n in _unmentioned(out_specs[k], manual))
            for ct, k in zip(cts, live)
        ]
    wanted = [i for i, need in enumerate(needs) if need]

    def back(local_args, local_res, local_cts):
        res = [r[0] if s else r for r, s in zip(local_res, scalar)]
        gs = [None] * len(out_nodes)
        for k, ct in zip(live, local_cts):
            gs[k] = ct
        grads = pullback(template, in_nodes, out_nodes, res, local_args, gs, local)
        out = [grads[i] for i in wanted]
        if not check_vma:
            out = [
                lax.psum(d, names) if (names := _unmentioned(in_specs[i], manual)) else d
                for d, i in zip(out, wanted)
            ]
        return tuple(out)

    grads = jax.shard_map(
        back,
        mesh=mesh,
        axis_names=set(newly_manual_axes),
        check_vma=check_vma,
        in_specs=(tuple(in_specs), tuple(res_specs), tuple(out_specs[k] for k in live)),
        out_specs=tuple(in_specs[i] for i in wanted),
    )(tuple(args), tuple(residuals), tuple(cts))
    full = [None] * len(args)
    for i, d in zip(wanted, grads):
        full[i] = d
    return tuple(full)


@shard_map.defcases
def _shard_map_cases(rng, dtype):
    """On a one-device mesh (the registry's process has one device; tests/test_collectives.py
    runs shard_map and pmap on eight)."""
    mesh = Mesh(np.array(jax.devices()[:1]), ("i",))
    n = lambda *s: normal(rng, s, dtype)

    def typed(x, w):
        body = lambda a, b: jnp.tanh(a * b) * jnp.sin(jnp.sum(a)) + lax.psum(a, "i")
        return jax.shard_map(body, mesh=mesh, in_specs=(Spec("i"), Spec()), out_specs=Spec("i"))(
            x, w
        )

    def untyped(x, w):
        body = lambda a, b: (lax.pmean(jnp.sum(a * b, axis=0), "i"), jnp.exp(a))
        return jax.shard_map(
            body,
            mesh=mesh,
            in_specs=(Spec("i"), Spec()),
            out_specs=(Spec(), Spec("i")),
            check_vma=False,
        )(x, w)

    c = lambda *s: cnormal(rng, s, dtype)
    return [
        case(shard_map_p, typed, n(4, 3), n(3), params="eqn", label="check_vma"),
        case(shard_map_p, typed, c(4, 3), n(3), params="eqn", label="complex, check_vma"),
        case(
            shard_map_p,
            untyped,
            n(4, 3),
            n(3),
            params="eqn",
            label="check_vma=False, a replicated output",
        ),
        case(
            shard_map_p,
            jax.pmap(lambda a: a * lax.psum(a, "i"), axis_name="i"),
            n(1, 3),
            params="eqn",
            label="pmap",
        ),
    ]


shard_map.defkinks(smooth=True)


def shard_map_rule(interp, eqn, invals, scope):
    """The interpreter's rule: the gate, given the equation's parameters as they are (its body
    a jaxpr) and the rules in use, so a user's extra rules reach the body too."""
    inner = join_scope(scope, scope_of(eqn))
    extra = {"rules": interp.rules, "scope": inner}
    return list(
        apply(shard_map, tuple(invals), {**eqn.params, **extra}, site=site_of(eqn), scope=inner)
    )


STRUCTURAL = {shard_map_p: shard_map_rule}
