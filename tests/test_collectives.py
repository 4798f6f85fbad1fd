"""Collectives under fnn.grad: every rule of fnn.ops.primitives.collectives, and shard_map's
(pmap's) structural rule, give jax.grad's gradients within 1e-10 in float64 on 4 and 8 host CPU
devices.

Each row is a body (one device's computation, a function of its slice `v`) using one collective
over the axis 'b' of 4 devices, differentiated in a context:

  vmap(fnn.grad)     jax.vmap(fnn.grad(loss), axis_name='b'): the rule under vmap, named axes
  fnn.grad(vmap)     fnn.grad of a function that vmaps the body (the collective as vmap binds it)
  fnn.grad(shard_map)  the shard_map gate, its body with check_vma=True (psum_invariant, pvary)
  shard_map(fnn.grad)  fnn.grad inside a shard_map with check_vma=True
  fnn.grad(pmap)     pmap is a jit of a shard_map with check_vma=False: the gate, untyped
  pmap(fnn.grad)     fnn.grad inside pmap

under jit (and, for the rows of EAGER, eagerly too), and compared with jax.grad of the same
program (pmax and pmin: of the same program with jnp.max/min of an all_gather, JAX having no
rule for them; lax.all_to_all untiled with split and concat axes different: of an all_gather
indexed at the device's index, where jax.grad fails).
Besides, Flax's nn.BatchNorm(axis_name=) under vmap and pmap, Equinox's eqx.nn.BatchNorm under
vmap, a data-parallel step on 8 devices (shard_map with check_vma=False, a replicated loss
and pmean of the gradients; and the same with check_vma=True), complex values through psum,
all_gather, psum_scatter, ppermute and all_to_all on 8 devices (under vmap, shard_map and
pmap), and a 2 x 4 mesh (collectives over one axis and over both, a shard_map over one axis
alone).

Everything runs in one subprocess (XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set
before JAX starts, and x64 enabled): under jit, the rows on 4 devices as one program for fnn and
one for JAX, the models' on 8 likewise (the 2-d mesh's apart); eagerly, row by row (against JAX's jitted values).
Every rule of collectives.ALL must be the subject of rows in a shard_map and in vmap or pmap,
where its primitive exists (test_every_rule_has_rows), and each row's program must really bind
its rule's primitive.
"""

import functools
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-10
VMAP, GRAD_VMAP = "vmap(fnn.grad)", "fnn.grad(vmap)"
SHARD, SHARD_IN = "fnn.grad(shard_map)", "shard_map(fnn.grad)"
PMAP, PMAP_IN = "fnn.grad(pmap)", "pmap(fnn.grad)"
NAMED = (VMAP, SHARD, SHARD_IN, PMAP, PMAP_IN)  # contexts where the body sees the named axis
TYPED = (SHARD, SHARD_IN)  # shard_map with check_vma=True: the only home of pvary & co
# body -> (the rule it is the subject of, the contexts it runs in)
BODIES = {
    "psum": ("psum", (VMAP, GRAD_VMAP, PMAP, PMAP_IN)),  # with check_vma: "psum typed"
    "pmax": ("pmax", NAMED + (GRAD_VMAP,)),
    "pmin": ("pmin", NAMED),
    "all_gather": ("all_gather", NAMED),
    "all_gather tiled": ("all_gather", (VMAP, SHARD)),
    "psum_scatter": ("psum_scatter", NAMED),
    "psum_scatter tiled": ("psum_scatter", (VMAP, PMAP)),
    "ppermute": ("ppermute", NAMED),
    "ppermute partial": ("ppermute", (SHARD, PMAP_IN)),  # vmap takes only full permutations
    "all_to_all tiled": ("all_to_all", NAMED),
    "all_to_all untiled": ("all_to_all", (VMAP, SHARD_IN)),
    "all_to_all untiled, split != concat": ("all_to_all", (VMAP, SHARD, PMAP_IN)),
    "psum typed": ("psum_invariant", TYPED),
    "replicated weights": ("pvary", TYPED),
    "all_gather invarying": ("all_gather_invariant", TYPED),
}
ALIASES = {"psum_scatter": "reduce_scatter"}  # a rule's name -> its primitive's, where they differ
ROWS = [f"{body} | {context}" for body, (_, contexts) in BODIES.items() for context in contexts]
# the rows also run eagerly (the others under jit only: an eager shard_map compiles at each call,
# which costs a second or more each): the cheap contexts, and one row of each other
EAGER = [r for r in ROWS if r.split(" | ")[1] in (VMAP, GRAD_VMAP, PMAP_IN)] + [
    "psum | fnn.grad(pmap)",
    "psum typed | fnn.grad(shard_map)",
    "psum typed | shard_map(fnn.grad)",
    "replicated weights | fnn.grad(shard_map)",
    "flax BatchNorm | pmap(fnn.grad)",
    "equinox BatchNorm | fnn.grad(vmap)",
]
MODELS = [
    "flax BatchNorm | fnn.grad(vmap)",
    "flax BatchNorm | fnn.grad(pmap)",
    "flax BatchNorm | pmap(fnn.grad)",
    "equinox BatchNorm | fnn.grad(vmap)",
    "data-parallel step | check_vma=False",
    "data-parallel step | check_vma=True",
    "complex values | fnn.grad(vmap)",
    "complex values | fnn.grad(shard_map)",
    "complex values | fnn.grad(pmap)",
    "2-d mesh | fnn.grad(shard_map)",
]  # (the 2-d mesh last: a program of its own)


# ---- the child: 8 host devices, float64 --------------------------------------------------------
def child_main():  # noqa: C901  (a table of programs and their contexts, in one child)
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from jax import lax
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    import fnn
    from fnn.ops.primitives import collectives

    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()[:4]), ("b",))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 8)))
    w = jnp.asarray(rng.standard_normal((4, 8)))
    c = jnp.asarray(rng.standard_normal(8))
    k4 = jnp.arange(1.0, 5.0)[:, None]
    perm = [(0, 2), (1, 0), (2, 3), (3, 1)]
    gathered = lambda v: lax.all_gather(v, "b")
    four = lambda s: jnp.concatenate([s, 2 * s, 3 * s, 4 * s])  # f64[2] -> f64[8]
    # body -> (fnn's body, JAX's body or None: the same); v: one device's f64[8]
    bodies = {
        "psum": (lambda v: lax.psum(jnp.sin(v), "b") * v, None),
        "pmax": (
            lambda v: lax.pmax(jnp.sin(v), "b") * v,
            lambda v: jnp.max(gathered(jnp.sin(v)), 0) * v,
        ),
        "pmin": (
            lambda v: lax.pmin(jnp.sin(v), "b") * v,
            lambda v: jnp.min(gathered(jnp.sin(v)), 0) * v,
        ),
        "all_gather": (lambda v: jnp.sum(gathered(jnp.sin(v)) * k4, 0) * v, None),
        "all_gather tiled": (lambda v: lax.all_gather(jnp.sin(v), "b", tiled=True)[::4] * v, None),
        "psum_scatter": (lambda v: four(lax.psum_scatter(jnp.sin(v).reshape(4, 2), "b")) * v, None),
        "psum_scatter tiled": (
            lambda v: four(lax.psum_scatter(jnp.sin(v), "b", tiled=True)) * v,
            None,
        ),
        "ppermute": (lambda v: lax.ppermute(jnp.sin(v), "b", perm) * v, None),
        "ppermute partial": (lambda v: lax.ppermute(jnp.sin(v), "b", perm[:2]) * v + v, None),
        "all_to_all tiled": (
            lambda v: (
                lax.all_to_all(jnp.sin(v).reshape(4, 2), "b", 0, 1, tiled=True).reshape(-1) * v
            ),
            None,
        ),
        "all_to_all untiled": (
            lambda v: lax.all_to_all(jnp.sin(v).reshape(4, 2), "b", 0, 0).reshape(-1) * v,
            None,
        ),
        "all_to_all untiled, split != concat": (
            lambda v: lax.all_to_all(jnp.sin(v).reshape(4, 2), "b", 0, 1).reshape(-1) * v,
            lambda v: (
                jnp.take(gathered(jnp.sin(v).reshape(4, 2)), lax.axis_index("b"), axis=1).T.reshape(
                    -1
                )
                * v
            ),
        ),
        "psum typed": (lambda v: lax.psum(jnp.sin(v), "b") * v, None),
        "all_gather invarying": (
            lambda v: jnp.sum(lax.all_gather(jnp.sin(v), "b", to="invarying") * k4, 0) * v,
            None,
        ),
    }

    def smap(f, in_specs, out_specs=P("b"), check_vma=True):
        return jax.shard_map(
            f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=check_vma
        )

    def program(body, context, grad):
        """() -> gradients: the row's program, differentiated by `grad` (fnn.grad or jax.grad)."""
        if body == "replicated weights":  # a replicated input (P()): pvary in the body
            layer = lambda v, c: jnp.tanh(v * c) * jnp.sin(c)
            if context == SHARD:
                total = lambda x, c: jnp.sum(smap(layer, (P("b"), P()))(x, c) * w)
                return lambda: grad(total, argnums=(0, 1))(x, c)
            per_shard = lambda a, c, wa: grad(
                lambda a, c: jnp.sum(layer(a, c) * wa), argnums=(0, 1)
            )(a, c)
            return lambda: smap(per_shard, (P("b"), P(), P("b")), (P("b"), P()))(x, c, w)
        f = bodies[body][0 if grad is fnn.grad else 1] or bodies[body][0]
        loss = lambda v, wv: jnp.sum(f(v) * wv)
        one = lambda a: f(a[0])[None]  # one device's slice of x: f64[1, 8]
        total = {
            GRAD_VMAP: lambda x: jnp.sum(jax.vmap(f, axis_name="b")(x) * w),
            SHARD: lambda x: jnp.sum(smap(one, P("b"))(x) * w),
            PMAP: lambda x: jnp.sum(jax.pmap(f, axis_name="b")(x) * w),
        }
        if context in total:
            return lambda: grad(total[context])(x)
        if context == VMAP:
            return lambda: jax.vmap(grad(loss), axis_name="b")(x, w)
        if context == PMAP_IN:
            return lambda: jax.pmap(grad(loss), axis_name="b")(x, w)
        assert context == SHARD_IN, context
        per_shard = lambda a, wa: grad(lambda a: loss(a[0], wa[0]))(a)
        return lambda: smap(per_shard, (P("b"), P("b")))(x, w)

    def binds(body, context):
        """The collective primitives the row's forward binds (at any depth)."""
        f = bodies.get(body, (None,))[0]
        if body == "replicated weights":
            fn, args = smap(lambda v, c: jnp.tanh(v * c), (P("b"), P())), (x, c)
        elif context == VMAP:  # the body as fnn.grad traces it under the vmap
            return sorted(_prims(jax.make_jaxpr(f, axis_env=[("b", 4)])(x[0]).jaxpr))
        elif context == GRAD_VMAP:
            fn, args = jax.vmap(f, axis_name="b"), (x,)
        elif context in TYPED:
            fn, args = smap(lambda a: f(a[0])[None], P("b")), (x,)
        else:
            fn, args = jax.pmap(f, axis_name="b"), (x,)
        return sorted(_prims(jax.make_jaxpr(fn)(*args).jaxpr))

    def _prims(jaxpr, found=None):
        found = set() if found is None else found
        names = {g.primitive.name for g in collectives.ALL.values()}
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in names:
                found.add(eqn.primitive.name)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                _prims(sub, found)
        return found

    programs = {}
    for row in ROWS:
        body, context = row.split(" | ")
        programs[row] = (program(body, context, fnn.grad), program(body, context, jax.grad))
    programs.update(model_programs(jax, jnp, np, lax, P, fnn, rng))

    def rel(a, b):  # the worst leaf, each on its own scale
        return max(
            float(
                np.max(np.abs(np.asarray(p) - np.asarray(q)))
                / max(1e-300, float(np.max(np.abs(np.asarray(q)))))
            )
            for p, q in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
        )

    fast = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    t0 = time.perf_counter()
    mine_jit, refs = {}, {}
    # one program each: the rows (on 4 devices), the models (8), the 2-d mesh (8 on other axes)
    for rows in (ROWS, MODELS[:-1], MODELS[-1:]):
        for k, out in ((0, mine_jit), (1, refs)):
            out.update(
                jax.jit(
                    lambda rows=rows, k=k: {r: programs[r][k]() for r in rows},
                    compiler_options=fast,
                )()
            )
    print(f"jit: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    t0 = time.perf_counter()
    for row, (mine, _) in programs.items():
        eager = None
        if row in EAGER:
            try:
                eager = rel(mine(), refs[row])
            except Exception as e:  # noqa: BLE001 -- reported with the row
                eager = f"{type(e).__name__}: {e}"
        body, context = row.split(" | ")
        report = {
            "row": row,
            "eager": eager,
            "jit": rel(mine_jit[row], refs[row]),
            "binds": binds(body, context) if row in ROWS else [],
        }
        print("ROW " + json.dumps(report), flush=True)
    print(f"eager: {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def model_programs(jax, jnp, np, lax, P, fnn, rng):
    """row -> (fnn's program, JAX's program) of the MODELS rows."""
    import equinox as eqx
    import flax.linen as nn
    from jax.sharding import Mesh

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(5, use_bias=False, param_dtype=jnp.float64)(x)
            x = nn.BatchNorm(use_running_average=False, axis_name="batch", param_dtype=jnp.float64)(
                x
            )
            return jnp.tanh(x)

    net, xs = Net(), jnp.asarray(rng.standard_normal((8, 3, 4)))  # 8 devices' batches of 3
    variables = jax.vmap(lambda v: net.init(jax.random.PRNGKey(0), v), axis_name="batch")(xs)
    params, stats = jax.tree_util.tree_map(
        lambda a: a[0], (variables["params"], variables["batch_stats"])
    )
    apply = lambda p, v: net.apply({"params": p, "batch_stats": stats}, v, mutable=["batch_stats"])[
        0
    ]
    per_device = lambda p, v: jnp.sum(jnp.sin(apply(p, v)))
    flax_vmap = lambda p: jnp.sum(jnp.sin(jax.vmap(apply, (None, 0), axis_name="batch")(p, xs)))
    flax_pmap = lambda p: jnp.sum(jnp.sin(jax.pmap(apply, "batch", in_axes=(None, 0))(p, xs)))

    linear = eqx.nn.Linear(4, 5, use_bias=False, key=jax.random.PRNGKey(1), dtype=jnp.float64)
    norm = eqx.nn.BatchNorm(5, axis_name="batch", mode="batch", dtype=jnp.float64)
    xe = jnp.asarray(rng.standard_normal((8, 4)))

    def eqx_loss(model):
        linear, norm = model
        state = eqx.nn.State(norm)  # fresh each call: a State is used once
        y, _ = jax.vmap(lambda v: norm(linear(v), state), axis_name="batch", out_axes=(0, None))(xe)
        return jnp.sum(jnp.sin(y))

    diff, rest = eqx.partition((linear, norm), eqx.is_inexact_array)
    eqx_total = lambda d: eqx_loss(eqx.combine(d, rest))

    # data parallel: a 2-layer MLP, its batch split over 8 devices, gradients pmean'd
    mesh8 = Mesh(np.array(jax.devices()), ("data",))
    mlp = {
        "w1": jnp.asarray(rng.standard_normal((4, 6))) / 2,
        "b1": jnp.zeros(6),
        "w2": jnp.asarray(rng.standard_normal((6, 3))) / 2,
    }
    xd, yd = jnp.asarray(rng.standard_normal((16, 4))), jnp.asarray(rng.integers(0, 3, 16))

    def mlp_loss(p, x, y):
        logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    def dp_step(grad, check_vma):
        def step(p, x, y):
            g = grad(mlp_loss)(p, x, y)  # this device's batch
            return jax.tree_util.tree_map(lambda a: lax.pmean(a, "data"), g)

        return jax.shard_map(
            step,
            mesh=mesh8,
            in_specs=(P(), P("data"), P("data")),
            out_specs=P(),
            check_vma=check_vma,
        )

    def dp_loss(check_vma):  # the mean loss over the devices, differentiated outside
        return lambda p: jax.shard_map(
            lambda p, x, y: lax.pmean(mlp_loss(p, x, y), "data"),
            mesh=mesh8,
            in_specs=(P(), P("data"), P("data")),
            out_specs=P(),
            check_vma=check_vma,
        )(p, xd, yd)

    # a 2 x 4 mesh: collectives over one axis and both, a shard_map over 'b' alone
    mesh2 = Mesh(np.array(jax.devices()).reshape(2, 4), ("a", "b"))
    x2, w2, c2 = (jnp.asarray(rng.standard_normal(s)) for s in ((4, 8), (4, 8), (8,)))

    def body2(a, c):  # a: f64[2, 2], c: f64[2]
        h = jnp.tanh(a * c)
        shifted = lax.ppermute(h, "b", [(i, (i + 1) % 4) for i in range(4)])
        return lax.psum(jnp.sum(h * h, axis=0), "a") * lax.pmean(h, ("a", "b")) + shifted * jnp.sin(
            jnp.sum(c)
        )

    def mesh2_loss(check_vma):
        def both_axes(x, c):
            return jnp.sum(
                w2
                * jax.shard_map(
                    body2,
                    mesh=mesh2,
                    in_specs=(P("a", "b"), P("b")),
                    out_specs=P("a", "b"),
                    check_vma=check_vma,
                )(x, c)
            )

        def b_alone(x, c):
            y = jax.shard_map(
                lambda a, c: lax.psum(jnp.sin(a * c), "b") * a,
                mesh=mesh2,
                in_specs=(P(None, "b"), P("b")),
                out_specs=P(None, "b"),
                axis_names={"b"},
                check_vma=check_vma,
            )(x, c)
            return jnp.sum(y * w2)

        return lambda x, c: both_axes(x, c) + b_alone(x, c)

    # complex values through the linear collectives on 8 devices: one device's c128[8], a real
    # loss of complex outputs (the gradient of each complex input JAX's conjugate convention)
    xc = jnp.asarray(rng.standard_normal((8, 8)) + 1j * rng.standard_normal((8, 8)))
    wc, k8 = jnp.asarray(rng.standard_normal((8, 8))), jnp.arange(1.0, 9.0)[:, None]
    ring = [(i, (i + 1) % 8) for i in range(8)]

    def cbody(v):
        s = jnp.sin(v)
        mixed = (
            lax.psum(s, "data")
            + jnp.sum(lax.all_gather(s, "data") * k8, 0)
            + jnp.repeat(lax.psum_scatter(s, "data", tiled=True), 8)
            + lax.ppermute(s, "data", ring)
            + lax.all_to_all(s.reshape(8, 1), "data", 0, 0, tiled=True).reshape(-1)
        )
        return mixed * v

    closs = lambda y: jnp.sum(jnp.abs(y) ** 2 * wc)
    c_vmap = lambda x: closs(jax.vmap(cbody, axis_name="data")(x))
    c_shard = lambda x: closs(
        jax.shard_map(
            lambda a: cbody(a[0])[None], mesh=mesh8, in_specs=P("data"), out_specs=P("data")
        )(x)
    )
    c_pmap = lambda x: closs(jax.pmap(cbody, axis_name="data")(x))

    both = lambda make: (make(fnn.grad), make(jax.grad))
    return {
        MODELS[0]: both(lambda g: lambda: g(flax_vmap)(params)),
        MODELS[1]: both(lambda g: lambda: g(flax_pmap)(params)),
        MODELS[2]: both(
            lambda g: lambda: jax.pmap(g(per_device), "batch", in_axes=(None, 0))(params, xs)
        ),
        MODELS[3]: both(lambda g: lambda: g(eqx_total)(diff)),
        MODELS[4]: both(lambda g: lambda: (dp_step(g, False)(mlp, xd, yd), g(dp_loss(False))(mlp))),
        MODELS[5]: both(lambda g: lambda: (dp_step(g, True)(mlp, xd, yd), g(dp_loss(True))(mlp))),
        MODELS[6]: both(lambda g: lambda: g(c_vmap)(xc)),
        MODELS[7]: both(lambda g: lambda: g(c_shard)(xc)),
        MODELS[8]: both(lambda g: lambda: g(c_pmap)(xc)),
        MODELS[9]: both(
            lambda g: lambda: [g(mesh2_loss(v), argnums=(0, 1))(x2, c2) for v in (True, False)]
        ),
    }


# ---- the tests ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def child_reports():
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8"
    )
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run(
        [sys.executable, os.path.abspath(__file__)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line[4:]) for line in r.stdout.splitlines() if line.startswith("ROW ")]
    return {row.pop("row"): row for row in rows}


@pytest.fixture(scope="module")
def reports():
    return child_reports()


def test_every_rule_has_rows(reports):
    """Every rule of collectives.ALL is the subject of rows in a shard_map with check_vma=True
    (psum's primitive is replaced there by psum_invariant) and in vmap or pmap (but for the
    primitives that exist only under check_vma); every row reported."""
    from fnn.ops.primitives import collectives

    assert sorted(reports) == sorted(ROWS + MODELS) and set(EAGER) <= set(reports)
    assert {r.split(" | ")[1] for r in EAGER} >= set(NAMED + (GRAD_VMAP,))
    subjects = {rule for rule, _ in BODIES.values()}
    names = {gate.primitive.name for gate in collectives.ALL.values()}
    assert {ALIASES.get(s, s) for s in subjects} == names, "a collective rule without rows"
    typed_only = ("pvary", "psum_invariant", "all_gather_invariant")
    for rule in subjects:
        contexts = {c for r, cs in BODIES.values() if r == rule for c in cs}
        assert rule == "psum" or contexts & set(TYPED), rule
        assert rule in typed_only or contexts & {VMAP, PMAP, PMAP_IN}, rule


@pytest.mark.parametrize("row", ROWS + MODELS)
def test_fnn_grad_is_jax_grad(reports, row):
    report = reports[row]
    assert report["jit"] <= TOL, (row, report)
    if row in EAGER:
        assert isinstance(report["eager"], float), (row, report["eager"])
        assert report["eager"] <= TOL, (row, report)
    if row in ROWS:  # the row really exercises its rule (as vmap or shard_map binds it)
        body, context = row.split(" | ")
        rule = {"psum_scatter": "reduce_scatter"}.get(BODIES[body][0], BODIES[body][0])
        expect = "psum" if context == GRAD_VMAP and rule == "psum" else rule
        assert expect in report["binds"], (row, report["binds"])


if __name__ == "__main__":
    child_main()
