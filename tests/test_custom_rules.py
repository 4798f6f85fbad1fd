"""Functions with custom derivatives (jax.custom_vjp, jax.custom_jvp) under fnn.grad: their own
rules are used, as under jax.grad (issue 21), eagerly, under jit and vmap, inside loops,
branches and checkpoints, to second order; `custom_rules="primal"` differentiates their primal
functions instead; and what JAX refuses is refused with the reason."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

import fnn


def assert_same(mine, ref, rtol=1e-10, err_msg=""):
    for a, b in zip(jax.tree_util.tree_leaves(mine), jax.tree_util.tree_leaves(ref), strict=True):
        if getattr(b, "dtype", None) == jax.dtypes.float0:
            continue
        scale = max(1.0, float(np.max(np.abs(b)))) if np.size(b) else 1.0
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-13 * scale, err_msg=err_msg)


# ---- the custom functions research code writes --------------------------------------------------
@jax.custom_vjp
def reverse_gradient(x, scale):
    """Domain adaptation's gradient-reversal layer: identity forward, -scale * g backward."""
    return x


reverse_gradient.defvjp(
    lambda x, scale: (x, scale), lambda scale, g: (-scale * g, jnp.zeros_like(scale))
)


@jax.custom_vjp
def clip_gradient(x):
    """Identity forward, the backward clipped to [-0.1, 0.1] per activation."""
    return x


clip_gradient.defvjp(lambda x: (x, None), lambda _, g: (jnp.clip(g, -0.1, 0.1),))


@jax.custom_jvp
def safe_norm(x):
    """Row norms whose derivative at a zero row is 0 (the plain one is NaN there)."""
    return jnp.sqrt(jnp.sum(x * x, axis=-1))


@safe_norm.defjvp
def _safe_norm_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    y = safe_norm(x)
    return y, jnp.sum(x * t, axis=-1) / jnp.where(y == 0, 1.0, y)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def apply_with_static(fn, x, w):
    """nondiff_argnums (a function), pytree input, two outputs of which one is a pytree."""
    return fn(x @ w["a"]) + w["b"], {"sq": x * x}


def _aws_fwd(fn, x, w):
    y = x @ w["a"]
    return (fn(y) + w["b"], {"sq": x * x}), (x, w, y)  # x, w: residuals forwarded from inputs


def _aws_bwd(fn, res, g):
    x, w, y = res
    gy, gsq = g
    d = gy * (1.0 - jnp.tanh(y) ** 2)  # fn is tanh here
    return d @ w["a"].T + 2.0 * x * gsq["sq"], {"a": x.T @ d, "b": gy.sum(0)}


apply_with_static.defvjp(_aws_fwd, _aws_bwd)


@jax.custom_vjp
def scale_by_count(x, n):
    """An integer argument (no gradient: bwd returns None for it)."""
    return x * n


scale_by_count.defvjp(lambda x, n: (x * n, n), lambda n, g: (g * n, None))


@partial(jax.custom_vjp)
def symbolic(x, y):
    return x * y


def _symbolic_fwd(x, y):  # symbolic_zeros: the fwd is told which inputs are differentiated
    return x.value * y.value, (x.value, y.value)


symbolic.defvjp(_symbolic_fwd, lambda res, g: (g * res[1], g * res[0]), symbolic_zeros=True)


@jax.custom_jvp
def two_outputs(x):
    """Two outputs (one an integer), rule written with defjvps."""
    return jnp.sin(x) * 2.0, jnp.argmax(x)


two_outputs.defjvp(
    lambda p, t: (
        (jnp.sin(p[0]) * 2.0, jnp.argmax(p[0])),
        (3.0 * t[0], np.zeros((), jax.dtypes.float0)),
    )
)


@jax.custom_jvp
def cube_defjvps(x, y):
    return x**3 * y


cube_defjvps.defjvps(lambda t, ans, x, y: 5.0 * t * y, lambda t, ans, x, y: 7.0 * t * x)


def newton_sqrt(x):
    """lax.custom_root around a while-loop solver: implicit differentiation."""
    solve = lambda f, y0: lax.while_loop(
        lambda y: jnp.abs(f(y)) > 1e-12, lambda y: y - f(y) / (2 * y), y0
    )
    return lax.custom_root(lambda y: y**2 - x, 1.0, solve, lambda g, y: y / 2.0)


def _rng(seed=0):
    return np.random.default_rng(seed)


def programs():
    """name -> (f, args): scalar losses of float64 arguments, all of them differentiated."""
    rng = _rng()
    x = jnp.asarray(rng.standard_normal((4, 3)))
    w = {"a": jnp.asarray(rng.standard_normal((3, 2))), "b": jnp.asarray(rng.standard_normal(2))}
    kinks = jnp.asarray([-1.0, 0.0, 3.0, 6.0, 7.0])
    rows = jnp.asarray([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    from jax.experimental.ode import odeint

    def ode(y0, k):
        ys = odeint(
            lambda y, t, k: -k * y + jnp.sin(t),
            y0,
            jnp.asarray([0.0, 0.5, 1.0]),
            k,
            rtol=1e-10,
            atol=1e-10,
        )
        return jnp.sum(ys[-1] ** 2)

    return {
        "gradient reversal": (lambda x, s: jnp.sum(jnp.sin(reverse_gradient(x, s)) * x), (x, 0.7)),
        "gradient clipping": (lambda x: jnp.sum(jnp.exp(clip_gradient(x * 3.0))), (x,)),
        "safe norm at zero rows": (lambda r: jnp.sum(safe_norm(r)), (rows,)),
        "optax.safe_norm at zero rows": (
            lambda r: jnp.sum(optax.safe_norm(r, 1e-6, axis=-1)),
            (rows,),
        ),
        "jax.nn kinks": (lambda k: jnp.sum(jax.nn.relu6(k) + jax.nn.relu(k) * k), (kinks,)),
        "jax.nn smooth": (
            lambda x: jnp.sum(
                jax.nn.silu(x)
                + jax.nn.gelu(x)
                + jax.nn.softplus(x)
                + jax.nn.logsumexp(x, axis=1)[:, None]
            ),
            (x,),
        ),
        "nondiff_argnums, pytrees, two outputs": (
            lambda x, w: (
                jnp.sum(apply_with_static(jnp.tanh, x, w)[0] ** 2)
                + jnp.sum(apply_with_static(jnp.tanh, x, w)[1]["sq"] * x)
            ),
            (x, w),
        ),
        "an integer argument": (lambda x: jnp.sum(scale_by_count(x, 3) ** 2), (x,)),
        "symbolic zeros": (lambda x, y: jnp.sum(symbolic(x, y) ** 2), (x, x[::-1] + 1.0)),
        "custom_jvp, two outputs": (lambda x: jnp.sum(two_outputs(x)[0]) * 1.5, (x,)),
        "custom_jvp, defjvps": (lambda a, b: jnp.sum(cube_defjvps(a, b)), (x, x * 2.0)),
        "lax.custom_root": (lambda s: newton_sqrt(s) * s, (jnp.asarray(2.0),)),
        "odeint": (ode, (jnp.asarray([1.0, -0.5]), jnp.asarray(0.7))),
        "inside scan": (
            lambda x: jnp.sum(
                lax.scan(
                    lambda c, r: (jnp.tanh(clip_gradient(c * r) + safe_norm(c)[None]), c.sum()),
                    x[0],
                    x,
                )[0]
            ),
            (x,),
        ),
        "inside cond": (
            lambda x: lax.cond(
                x.sum() > 0,
                lambda a: jnp.sum(reverse_gradient(a, 2.0) ** 2),
                lambda a: jnp.sum(jax.nn.relu6(a)),
                x,
            ),
            (x,),
        ),
        "inside checkpoint": (
            lambda x: jnp.sum(
                jax.checkpoint(lambda a: jnp.sin(reverse_gradient(a, 0.5)) * jax.nn.softplus(a))(x)
            ),
            (x,),
        ),
    }


PROGRAMS = programs()


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_custom_rules_are_used_as_jax_grad_uses_them(name, x64):
    f, args = programs()[name]  # made under x64
    argnums = tuple(range(len(args)))
    ref = jax.grad(f, argnums=argnums)(*args)
    assert_same(fnn.grad(f, argnums=argnums)(*args), ref, err_msg=f"{name} eager")
    assert_same(jax.jit(fnn.grad(f, argnums=argnums))(*args), ref, err_msg=f"{name} jit")


def test_the_rules_differ_from_the_primal_derivative_where_they_say_so(x64):
    """The programs above really exercise their custom rules: the primal functions'
    derivatives differ (custom_rules="primal" gives those, the old behaviour)."""
    x = jnp.asarray([0.5, -1.0, 2.0])
    f = lambda x: jnp.sum(reverse_gradient(x, 1.0) ** 2)
    np.testing.assert_allclose(fnn.grad(f)(x), -2 * x)
    np.testing.assert_allclose(fnn.grad(f, custom_rules="primal")(x), 2 * x)
    kinks = jnp.asarray([0.0, 6.0])
    relu6 = lambda k: jnp.sum(jax.nn.relu6(k))
    np.testing.assert_array_equal(fnn.grad(relu6)(kinks), [0.0, 0.0])  # the custom rule
    np.testing.assert_array_equal(fnn.grad(relu6, custom_rules="primal")(kinks), [0.5, 0.5])
    rows = jnp.zeros((1, 2))
    assert bool(
        jnp.all(jnp.isnan(fnn.grad(lambda r: jnp.sum(safe_norm(r)), custom_rules="primal")(rows)))
    )
    with pytest.raises(ValueError, match="custom_rules must be one of 'use', 'primal'"):
        fnn.grad(f, custom_rules="jax")(x)


def test_per_example_gradients_and_second_order(x64):
    rng = _rng(1)
    x = jnp.asarray(rng.standard_normal((3, 4)))
    f = lambda v: jnp.sum(
        jnp.sin(reverse_gradient(v, 0.3)) * jax.nn.softplus(v) + safe_norm(v[None] + 1.0)
    )
    assert_same(jax.vmap(fnn.grad(f))(x), jax.vmap(jax.grad(f))(x))
    # JAX differentiating fnn's backward, which runs the custom rules
    outer = lambda g: lambda v: jnp.sum(jnp.sin(g(f)(v)))
    assert_same(jax.grad(outer(fnn.grad))(x[0]), jax.grad(outer(jax.grad))(x[0]))
    assert_same(jax.jacfwd(fnn.grad(f))(x[0]), jax.hessian(f)(x[0]))
    # fnn differentiating fnn: the inner custom rules are plain JAX code to the outer
    g = lambda v: jnp.sum(jax.nn.softplus(v) * jax.nn.gelu(v))
    assert_same(
        fnn.grad(lambda v: jnp.sum(fnn.grad(g)(v) ** 2))(x[0]),
        jax.grad(lambda v: jnp.sum(jax.grad(g)(v) ** 2))(x[0]),
    )


def test_a_custom_function_is_one_gate_on_the_tape(x64):
    x = jnp.asarray([0.5, -1.0])
    names = [
        r.gate.name for r in fnn.trace(lambda v: jnp.sum(reverse_gradient(v, 1.0)), x).tape.records
    ]
    assert "custom_vjp" in names and "lax.mul" not in names
    names = [r.gate.name for r in fnn.trace(lambda v: jnp.sum(jax.nn.relu(v)), x).tape.records]
    # relu's custom JVP rule: select(x > 0, t, 0), transposed
    assert names[:3] == ["custom_jvp.tangent", "lax.select_n", "custom_jvp.output"]


def test_closing_over_a_differentiated_value_is_refused_as_jax_refuses_it(x64):
    def f(x, w):
        @jax.custom_vjp
        def g(y):
            return jnp.sin(y * w)

        g.defvjp(lambda y: (jnp.sin(y * w), None), lambda _, ct: (100.0 * ct,))
        return g(x)

    with pytest.raises(
        fnn.GateError,
        match=r"custom_vjp function 'g' at .*test_custom_rules.py"
        r".*closes over.*jax.closure_convert",
    ):
        fnn.grad(f, argnums=(0, 1))(1.0, 2.0)
    # closing over a constant is fine
    np.testing.assert_allclose(fnn.grad(f)(1.0, 2.0), 100.0)


def test_a_custom_backward_that_breaks_names_the_function_and_the_line():
    @jax.custom_vjp
    def bad(x):
        return x

    bad.defvjp(lambda x: (x, None), lambda _, g: (g[:1],))  # wrong shape
    with pytest.raises(fnn.VJPContractError, match=r"custom_vjp.*test_custom_rules.py"):
        fnn.grad(lambda x: jnp.sum(bad(x)))(jnp.ones(3))


def test_diffrax_with_its_default_adjoint(x64):
    """diffrax's default adjoint (RecursiveCheckpointAdjoint: a custom_vjp around a checkpointed
    while loop) differentiates as under jax.grad."""
    import diffrax

    def loss(k, y0):
        term = diffrax.ODETerm(lambda t, y, k: -k * y + jnp.cos(t))
        sol = diffrax.diffeqsolve(
            term,
            diffrax.Tsit5(),
            0.0,
            1.0,
            0.1,
            y0,
            args=k,
            stepsize_controller=diffrax.PIDController(rtol=1e-9, atol=1e-9),
        )
        return jnp.sum(sol.ys[-1] ** 2)

    args = (jnp.asarray(0.5), jnp.asarray([1.0, -2.0]))
    assert_same(fnn.grad(loss, argnums=(0, 1))(*args), jax.grad(loss, argnums=(0, 1))(*args))


def test_check_custom_rules_says_what_each_librarys_rule_changes(x64):
    x = jnp.asarray([[0.0, 0.0, 0.0], [3.0, 4.0, 1.0]])

    def f(x):
        return (
            jnp.sum(reverse_gradient(x, 0.5) ** 2)
            + jnp.sum(safe_norm(x))
            + jnp.sum(jax.nn.softplus(x + 0.25))
            + jnp.sum(jax.nn.relu6(x + 0.5))
        )

    checks = {c.name: c for c in fnn.check.check_custom_rules(f, x)}
    assert set(checks) == {"reverse_gradient", "safe_norm", "logaddexp", "relu6"}
    assert checks["reverse_gradient"].kind == "custom_vjp"
    assert checks["reverse_gradient"].verdict == "differs on purpose?"  # a surrogate, honestly
    assert checks["reverse_gradient"].vs_primal > 0.5
    assert checks["safe_norm"].verdict == "finite where primal is not"
    assert checks["logaddexp"].verdict == "agrees"  # inside jax.nn.softplus: a nested jit
    assert checks["relu6"].verdict == "agrees"  # away from its kinks
    for c in checks.values():  # every site is this file's line, nested functions included
        assert "test_custom_rules.py" in c.site, c
    assert fnn.check.check_custom_rules(lambda x: jnp.sum(x**2), x) == []


def test_locate_divergence_and_check_grads_judge_custom_rules_against_jax(x64):
    x = jnp.asarray([[0.5, -1.0, 2.0]])
    f = lambda x: (
        jnp.sum(jax.nn.relu(x) * jax.nn.softplus(x)) + jnp.sum(reverse_gradient(x, 0.5) ** 2)
    )
    found = fnn.locate_divergence(f, x)
    assert found.ok and found.checked >= 10, found
    assert fnn.check_grads(lambda x: jnp.sum(jax.nn.relu(x) * jax.nn.softplus(x)), x).ok
    # a rule that differs from the function's derivative on purpose: fnn equals jax.grad, and
    # both differ from central differences
    (leaf,) = fnn.check_grads(f, x).leaves
    assert leaf.custom_vs_builtin.rel == 0.0 and leaf.custom_vs_numeric.rel > 0.1
