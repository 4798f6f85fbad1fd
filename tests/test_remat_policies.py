"""Every jax.checkpoint policy under fnn.grad, and checkpoint_name (issue 21, item 4).

fnn's remat gate asks the policy about each equation of the body as JAX does: what it keeps
comes from the forward, the rest is recomputed in the backward. Gradients equal jax.grad's
(float64, 1e-10) eagerly and under jit, in a lax.scan body, nested, and at second order. The
memory behaviour is checked on the programs: the backward recomputes exactly the equations
JAX's program recomputes; under checkpoint_dots the values the gate keeps are the dots' outputs
(and no dot runs again) while sin and tanh run again; under save_only_these_names it keeps the
named value alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.ad_checkpoint import Recompute, Saveable, checkpoint_name

import fnn
from fnn.errors import GateError
from fnn.autodiff.structural import remat

CP = jax.checkpoint_policies
HOST = dict(offload_src="device", offload_dst="pinned_host")
POLICIES = {
    "None": None,
    "nothing_saveable": CP.nothing_saveable,
    "everything_saveable": CP.everything_saveable,
    "checkpoint_dots": CP.checkpoint_dots,
    "checkpoint_dots_with_no_batch_dims": CP.checkpoint_dots_with_no_batch_dims,
    "save_only_these_names": CP.save_only_these_names("h"),
    "save_any_names_but_these": CP.save_any_names_but_these("y"),
    "save_anything_except_these_names": CP.save_anything_except_these_names("h"),
    "save_from_both_policies": CP.save_from_both_policies(
        CP.dots_with_no_batch_dims_saveable, CP.save_only_these_names("y")
    ),
    "save_and_offload_only_these_names": CP.save_and_offload_only_these_names(
        names_which_can_be_saved=["y"], names_which_can_be_offloaded=["h"], **HOST
    ),
    "offload_dot_with_no_batch_dims": CP.offload_dot_with_no_batch_dims(**HOST),
    "callable True": lambda prim, *avals, **params: True,
    "callable False": lambda prim, *avals, **params: False,
    "by primitive (sin, exp)": lambda prim, *avals, **params: (
        Saveable if prim.name in ("sin", "exp") else Recompute
    ),
}
OFFLOADS = ("save_and_offload_only_these_names", "offload_dot_with_no_batch_dims")


def block(w1, w2, x):
    """x (3, 4) -> sin(x @ w1) named h -> tanh(h @ w2) named y, and a dot with a batch axis."""
    h = checkpoint_name(jnp.sin(x @ w1), "h")
    y = checkpoint_name(jnp.tanh(h @ w2), "y")
    z = jnp.einsum("bi,bi->b", y, h)
    return y * jnp.exp(-z)[:, None]


def _mlp(ck):
    return lambda w1, w2, x: jnp.sum(ck(w1, w2, x) ** 2)


def _scanned(ck, ws):  # the checkpoint as a lax.scan's body, one weight per step
    return lambda w1, w2, x: jnp.sum(
        lax.scan(lambda c, w: (ck(w, w2, c), None), jnp.tanh(x @ w1), ws)[0] ** 2
    )


@pytest.fixture
def args(x64):
    rng = np.random.default_rng(0)
    w1, w2, x = (jnp.asarray(rng.normal(size=s)) for s in [(4, 5), (5, 5), (3, 4)])
    return w1, w2, x, jnp.asarray(0.5 * rng.normal(size=(3, 5, 5)))


def _max_diff(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb) and la
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(la, lb))


def _count(jaxpr, name) -> int:
    """How many equations of primitive `name` a jaxpr holds, nested jaxprs included."""
    return sum(
        (eqn.primitive.name == name)
        + sum(_count(sub, name) for sub in jax.extend.core.jaxprs_in_params(eqn.params))
        for eqn in jaxpr.eqns
    )


def _counts(grad, f, *args):
    jaxpr = jax.make_jaxpr(jax.jit(grad(f, argnums=(0, 1, 2))))(*args).jaxpr
    return {p: _count(jaxpr, p) for p in ("dot_general", "sin", "tanh", "exp")}


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_gives_jax_gradients(name, args):
    """On an MLP-like body and as a lax.scan's body; eagerly and in one jitted program. The
    backward's program recomputes the same equations as JAX's."""
    w1, w2, x, ws = args
    ck = fnn.checkpoint(block, policy=POLICIES[name])
    funs = (_mlp(ck), _scanned(ck, ws))

    @jax.jit
    def both(w1, w2, x):
        return [
            [grad(f, argnums=(0, 1, 2))(w1, w2, x) for grad in (fnn.grad, jax.grad)] for f in funs
        ]

    for got, want in both(w1, w2, x):
        assert _max_diff(got, want) < 1e-10, name
    eager = fnn.grad(funs[0], argnums=(0, 1, 2))(w1, w2, x)
    assert _max_diff(eager, jax.grad(funs[0], argnums=(0, 1, 2))(w1, w2, x)) < 1e-10
    assert _counts(fnn.grad, funs[0], w1, w2, x) == _counts(jax.grad, funs[0], w1, w2, x)


def _kept(f, *args):
    """The shapes of the values the remat gate keeps from the forward (besides its inputs)."""
    (rec,) = [r for r in fnn.trace(f, *args).tape.records if r.gate is remat.remat]
    assert rec.saved[0] == "rerun"
    return [tuple(v.shape) for v in rec.saved[2]]


def test_checkpoint_dots_keeps_the_dots_and_recomputes_the_rest(args):
    """The gate keeps the outputs of the three dots, no dot runs again in the backward, and
    sin and tanh (elementwise) do; without a policy the dots run again too. With no batch dims:
    the einsum's dot (a batch axis) is recomputed."""
    w1, w2, x, _ = args
    plain = _counts(fnn.grad, _mlp(block), w1, w2, x)
    dots = _mlp(fnn.checkpoint(block, policy=CP.checkpoint_dots))
    assert _kept(dots, w1, w2, x) == [(3, 5), (3, 5), (3,)]
    assert _counts(fnn.grad, dots, w1, w2, x) == dict(
        plain, sin=plain["sin"] + 1, tanh=plain["tanh"] + 1, exp=plain["exp"] + 1
    )
    no_batch = _mlp(fnn.checkpoint(block, policy=CP.checkpoint_dots_with_no_batch_dims))
    assert _kept(no_batch, w1, w2, x) == [(3, 5), (3, 5)]
    assert _counts(fnn.grad, no_batch, w1, w2, x)["dot_general"] == plain["dot_general"] + 1
    nothing = _counts(fnn.grad, _mlp(fnn.checkpoint(block)), w1, w2, x)
    assert nothing["dot_general"] == plain["dot_general"] + 3


def test_save_only_these_names_keeps_the_named_value(args):
    """save_only_these_names('h'): the gate keeps h = sin(x @ w1) alone; sin does not run
    again; tanh, exp and the three dots do (sin's backward needs x @ w1, tanh's and exp's their
    outputs, as in JAX's program). Offloaded, h goes to the host and comes back."""
    w1, w2, x, _ = args
    plain = _counts(fnn.grad, _mlp(block), w1, w2, x)
    named = _mlp(fnn.checkpoint(block, policy=CP.save_only_these_names("h")))
    assert _kept(named, w1, w2, x) == [(3, 5)]
    assert _counts(fnn.grad, named, w1, w2, x) == dict(
        plain, dot_general=plain["dot_general"] + 3, tanh=plain["tanh"] + 1, exp=plain["exp"] + 1
    )
    offload = _mlp(fnn.checkpoint(block, policy=POLICIES["save_and_offload_only_these_names"]))
    jaxpr = str(jax.make_jaxpr(fnn.grad(offload))(w1, w2, x))
    assert jaxpr.count("devices=(MemorySpace.Host,)") == 1
    assert jaxpr.count("devices=(MemorySpace.Device,)") == 1


def test_checkpoint_name_without_a_policy(args):
    """checkpoint_name is the identity: outside a checkpoint, in one without a policy, on a
    pytree."""
    w1, w2, x, _ = args
    named = lambda w1, w2, x: checkpoint_name({"a": jnp.sin(x @ w1), "b": w2}, "p")
    fs = [
        lambda w1, w2, x: jnp.sum(block(w1, w2, x) ** 2),
        _mlp(jax.checkpoint(block)),
        lambda w1, w2, x: jnp.sum(jnp.tanh(named(w1, w2, x)["a"] @ named(w1, w2, x)["b"])),
    ]

    @jax.jit
    def all_of(w1, w2, x):
        return [
            [grad(f, argnums=(0, 1, 2))(w1, w2, x) for grad in (fnn.grad, jax.grad)] for f in fs
        ]

    for got, want in all_of(w1, w2, x):
        assert _max_diff(got, want) < 1e-10


def fancy(w1, w2, x):
    """A body holding a nested jit, custom_jvp functions, an fnn gate, a scan, a cond and an
    integer result."""
    h = jax.jit(lambda a, b: jnp.sin(a @ b))(x, w1)
    h = jax.nn.relu(h) + jax.nn.softplus(h) + fnn.ops.tanh(h)
    h, _ = lax.scan(lambda c, _: (jnp.cos(c @ w2) * 0.5, None), h, None, length=2)
    h = lax.cond(jnp.sum(h) > 0, lambda a: a * 2.0, jnp.exp, h)
    i = jnp.argmax(h, axis=1)
    return h * i[:, None] + checkpoint_name(jnp.take_along_axis(h, i[:, None], 1), "h")


def test_nested_checkpoints_and_bodies_holding_bodies(args):
    w1, w2, x, _ = args
    inner = lambda policy: fnn.checkpoint(
        lambda w1, w2, x: jnp.cos(block(w1, w2, x)), policy=policy
    )
    outer = lambda policy, inside: fnn.checkpoint(
        lambda w1, w2, x: inside(w1, w2, x) @ w2 + x @ w1, policy=policy
    )
    fs = [
        _mlp(outer(CP.checkpoint_dots, inner(CP.save_only_these_names("h")))),
        _mlp(outer(CP.save_only_these_names("h"), inner(CP.checkpoint_dots))),
        _mlp(outer(None, inner(CP.checkpoint_dots))),
        _mlp(outer(CP.checkpoint_dots, inner(None))),
        _mlp(fnn.checkpoint(fancy, policy=CP.checkpoint_dots)),
        _mlp(fnn.checkpoint(fancy, policy=CP.save_only_these_names("h"))),
        _mlp(fnn.checkpoint(fancy, policy=lambda *_, **__: True)),
    ]

    @jax.jit
    def all_of(w1, w2, x):
        return [
            [grad(f, argnums=(0, 1, 2))(w1, w2, x) for grad in (fnn.grad, jax.grad)] for f in fs
        ]

    for k, (got, want) in enumerate(all_of(w1, w2, x)):
        assert _max_diff(got, want) < 1e-10, k


def test_named_values_kept_as_jax_keeps_them(x64):
    """JAX's own allow/deny-list cases (tests/api_test.py, test_name_allowlist/denylist): the
    named values the gate keeps (here constants, kept all the same) are those JAX saves."""

    def f(x):
        y, z, w = (checkpoint_name(jnp.multiply(2.0, 2.0), n) for n in "yzw")
        return (((x * y) * z) * w) * jnp.multiply(2.0, 2.0)

    for names, n in [("yzw", 0), ("zw", 1), ("w", 2), ("", 3)]:
        assert (
            len(_kept(fnn.checkpoint(f, policy=CP.save_any_names_but_these(*names)), 1.0)) == n
        ), names
        assert (
            len(_kept(fnn.checkpoint(f, policy=CP.save_only_these_names(*names)), 1.0)) == 3 - n
        ), names


def test_custom_rules_and_jax_grad_inside_a_policy_body(x64):
    """A custom_jvp and a custom_vjp function, a named_call and a jax.grad inside the body
    (cases of JAX's RematTest), alone and in a scan."""

    @jax.custom_jvp
    def csin(x):
        return jnp.sin(x)

    csin.defjvp(lambda p, t: (csin(p[0]), jnp.cos(p[0]) * t[0]))

    @jax.custom_vjp
    def vsin(x):
        return jnp.sin(x)

    vsin.defvjp(lambda x: (vsin(x), x), lambda x, g: (jnp.cos(x) * g,))

    def body(x):
        dot2 = jax.named_call(lambda y, z: jnp.dot(x, jnp.dot(y, z)), name="dot")
        for sin in (csin, vsin):
            x = sin(dot2(x, x) * 1e-1)
        return jax.grad(lambda x: jnp.sum((x, x)[0] * jnp.sin(x)))(x)

    ck = fnn.checkpoint(body, policy=CP.checkpoint_dots)
    fs = [
        lambda x: jnp.sum(ck(x)),
        lambda x: jnp.sum(lax.scan(lambda c, _: (ck(c), None), x, None, length=2)[0]),
    ]

    @jax.jit
    def all_of(x):
        return [[grad(f)(x) for grad in (fnn.grad, jax.grad)] for f in fs]

    for got, want in all_of(jnp.linspace(0.5, 1.5, 3)):
        assert _max_diff(got, want) < 1e-10


def test_second_order_through_a_policy(args):
    """JAX differentiating fnn's backward of a checkpoint with a policy, against JAX's own
    second derivative. (Not the offloading policies: JAX differentiates neither its own
    backward with them nor fnn's, a cotangent in host memory.)"""
    w1, w2, x, ws = args
    policies = [
        CP.checkpoint_dots,
        CP.save_only_these_names("h"),
        POLICIES["by primitive (sin, exp)"],
    ]
    fs = [
        make(fnn.checkpoint(block, policy=p))
        for p in policies
        for make in (_mlp, lambda ck: _scanned(ck, ws))
    ]

    @jax.jit
    def all_of(w1):
        return [
            [
                jax.grad(lambda w: jnp.sum(grad(f)(w, w2, x) ** 2))(w1)  # noqa: B023 (called in this iteration)
                for grad in (fnn.grad, jax.grad)
            ]
            for f in fs
        ]

    for k, (got, want) in enumerate(all_of(w1)):
        assert _max_diff(got, want) < 1e-10, k


def test_a_policy_fnn_cannot_honour_is_refused_by_name(args, monkeypatch):
    """A policy answering neither a bool nor Saveable/Recompute/Offloadable, and one offloading
    to host memory where the device has none, are refused naming the policy, the equation
    and the user's line."""
    w1, w2, x, _ = args

    def maybe(prim, *avals, **params):
        return "sometimes"

    bad = _mlp(fnn.checkpoint(block, policy=maybe))
    with pytest.raises(
        GateError,
        match=r"test_remat_policies.py:\d+ has policy "
        r"test_a_policy_fnn_cannot_honour_is_refused_by_name.<locals>.maybe, which "
        r"returned 'sometimes' for the primitive 'dot_general' applied to "
        r"\(float64\[3,4\], float64\[4,5\]\).*Offloadable",
    ):
        fnn.grad(bad)(w1, w2, x)
    monkeypatch.setattr(remat, "memory_kinds", lambda: ["device"])
    offload = _mlp(fnn.checkpoint(block, policy=POLICIES["save_and_offload_only_these_names"]))
    with pytest.raises(
        GateError,
        match=r"test_remat_policies.py:\d+ has policy "
        r"save_and_offload_only_these_names.<locals>.policy, which "
        r"offloads values to memory 'pinned_host' .*only the memories \['device'\]",
    ):
        fnn.grad(offload)(w1, w2, x)
