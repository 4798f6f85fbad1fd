"""Plain JAX code under fnn.grad: array methods and operators, integer results, loops and
branches, kinks of jax.nn, what is refused and how."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import fnn


def same(f, *args, argnums=0, rtol=1e-10):
    mine = fnn.grad(f, argnums=argnums)(*args)
    ref = jax.grad(f, argnums=argnums)(*args)
    for a, b in zip(jax.tree_util.tree_leaves(mine), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-14)
    return mine


def test_array_methods_and_operators(x64):
    x = jnp.asarray(np.random.default_rng(0).uniform(0.5, 2.0, (3, 4)))

    def f(x):
        y = x.min() + x.astype(jnp.float32).astype(jnp.float64).sum() + x.clip(0.7, 1.5).sum()
        y = y + x[None].squeeze(0).swapaxes(0, 1).flatten()[2] + x.ravel().std() + x.var()
        y = y + x.prod() * 1e-2 + x.dot(x.T).sum() + x.cumsum(axis=1).sum() + x.real.sum()
        y = y + x.conj().mean() + (x // 0.3).sum() + (x % 0.3).sum() + x.at[0, 1].add(2.0).sum()
        y = y + x.at[1].set(0.0).max() + x.T.reshape(-1)[x.argmax()] + jnp.linalg.norm(x)
        return y + x.mean(axis=0).max() + (x**3).sum() + (2.0**x).sum() - abs(-x).sum()

    same(f, x)


def test_integer_results_carry_no_gradient(x64):
    x = jnp.asarray([0.3, -1.2, 2.5, 0.7])
    f = lambda x: jnp.sum(x * jnp.argsort(x)) + x[jnp.argmax(x)] + jnp.sum(x > 0) * x[0]
    same(f, x)


def test_jax_nn_functions_and_their_kinks(x64):
    x = jnp.asarray([-1.5, -0.2, 0.4, 2.0])
    for fn in (
        jax.nn.relu,
        jax.nn.relu6,
        jax.nn.gelu,
        jax.nn.silu,
        jax.nn.softplus,
        jax.nn.elu,
        jax.nn.sigmoid,
        jax.nn.log_sigmoid,
        jnp.tanh,
    ):
        same(lambda x: jnp.sum(fn(x) * x), x)  # noqa: B023 (called in this iteration)
    same(lambda x: jnp.sum(jax.nn.softmax(x) * jnp.arange(4.0)), x)
    same(lambda x: jax.nn.logsumexp(x) + jnp.sum(jax.nn.log_softmax(x)[1:]), x)
    # relu'(0) = 0 as jax.nn.relu's custom rule says (fnn's relu gate), not max's tie split
    zero = jnp.zeros(3)
    np.testing.assert_array_equal(fnn.grad(lambda x: jnp.sum(jax.nn.relu(x)))(zero), 0.0)
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(jax.nn.relu(x)))(zero), 0.0)


def test_loops_and_branches(x64):
    w = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3))) * 0.5
    xs = jnp.asarray(np.random.default_rng(2).standard_normal((6, 3)))

    def rnn(w, xs):
        h, hs = lax.scan(lambda h, x: (jnp.tanh(h @ w + x), h.sum()), jnp.zeros(3), xs)
        return jnp.sum(h**2) + jnp.sum(hs)

    same(rnn, w, xs, argnums=(0, 1))
    same(lambda w: lax.fori_loop(0, 4, lambda i, h: jnp.sin(h @ w) + i, jnp.ones(3)).sum(), w)
    same(lambda w: lax.cond(w.sum() > 0, lambda: jnp.sum(w**2), lambda: jnp.sum(-w)), w)
    same(lambda w: lax.switch(2, [jnp.sum, jnp.max, lambda a: jnp.sum(a * a)], w), w)
    same(lambda w: jnp.sum(jax.checkpoint(lambda a: jnp.tanh(a @ a))(w)), w)
    same(lambda w: jnp.sum(jax.jit(lambda a: jnp.exp(a) * a)(w)), w)
    # vmap and jit around fnn.grad of a scan
    batch = jnp.stack([xs, xs * 0.5])
    np.testing.assert_allclose(
        jax.vmap(fnn.grad(rnn), in_axes=(None, 0))(w, batch),
        jax.vmap(jax.grad(rnn), in_axes=(None, 0))(w, batch),
        rtol=1e-10,
    )
    np.testing.assert_allclose(jax.jit(fnn.grad(rnn))(w, xs), jax.grad(rnn)(w, xs), rtol=1e-10)


def test_a_scan_of_512_steps(x64):
    rng = np.random.default_rng(3)
    w = jnp.asarray(rng.standard_normal((8, 8))) / np.sqrt(8)
    xs = jnp.asarray(rng.standard_normal((512, 8)))

    def loss(w):
        h, _ = lax.scan(lambda h, x: (jnp.tanh(h @ w + x), None), jnp.zeros(8), xs)
        return jnp.sum(h)

    g = jax.jit(fnn.grad(loss))(w)
    assert bool(jnp.all(jnp.isfinite(g)))
    np.testing.assert_allclose(g, jax.grad(loss)(w), rtol=1e-9)


def test_what_is_refused():
    with pytest.raises(fnn.GateError, match="while_loop.*lax.scan"):
        fnn.grad(lambda x: lax.while_loop(lambda c: c < 10.0, lambda c: c * 2.0, x))(1.0)
    with pytest.raises(fnn.GateError, match="while_loop"):  # fori_loop with traced bounds
        f = lambda x, n: lax.fori_loop(0, n, lambda i, c: c * x, 1.0)
        jax.jit(lambda x, n: fnn.grad(f)(x, n))(2.0, 3)
    # with bounds known when tracing (a constant argument outside argnums) it is a scan
    np.testing.assert_allclose(fnn.grad(f)(2.0, jnp.int32(3)), 12.0)
    # complex values are differentiated as JAX does (issue 23; they were refused before):
    # through a complex intermediate, and at complex inputs (JAX's conjugate convention)
    for f, x in (
        (lambda x: jnp.abs(jnp.sum(x * 1j)), jnp.ones(3)),
        (lambda z: jnp.abs(z).sum(), jnp.asarray([1.0 + 2j, -3j, 0.5])),
    ):
        np.testing.assert_allclose(fnn.grad(f)(x), jax.grad(f)(x), rtol=1e-6)
    # a while loop that only counts (no differentiated value in its carry) is fine
    f = lambda x: x * lax.while_loop(lambda c: c < 5, lambda c: c + 1, 0)
    np.testing.assert_allclose(fnn.grad(f)(2.0), 5.0)


def test_debug_nans_names_a_primitive_and_the_users_line():
    with fnn.debug_nans():
        with pytest.raises(fnn.NanOriginError) as info:
            fnn.grad(lambda x: jnp.sum(jnp.log(x)))(jnp.array([1.0, -1.0]))
    assert info.value.gate == "lax.log" and "test_jax_code.py" in info.value.site


def _no_rule_primitive(name):
    from jax.extend.core import Primitive
    from jax.interpreters import mlir

    p = Primitive(name)
    p.def_impl(lambda *xs: xs[-1] * 2.0)
    p.def_abstract_eval(lambda *xs: xs[-1])
    mlir.register_lowering(p, mlir.lower_fun(lambda *xs: xs[-1] * 2.0, multiple_results=False))
    return p


DOUBLE_P = _no_rule_primitive("double_for_test")


def test_a_missing_rule_inside_loops_branches_and_jits_is_itself_with_the_users_line():
    double = DOUBLE_P.bind
    x = jnp.ones(3)
    where = {
        "scan": lambda x: jnp.sum(lax.scan(lambda c, _: (double(c), None), x, None, 2)[0]),
        "cond": lambda x: lax.cond(x[0] > 0, lambda a: jnp.sum(double(a)), jnp.sum, x),
        "checkpoint": lambda x: jnp.sum(jax.checkpoint(lambda a: double(jnp.sin(a)))(x)),
        "nested jit": lambda x: jnp.sum(jax.jit(lambda a: double(a) * a)(x)),
        "custom_jvp rule": lambda x: jnp.sum(_custom_double(x)),
        # a primitive inside a jnp function JAX traced in its own files (sin inside jnp.sinc),
        # with the sin rule left out of the table
        "inside jnp": lambda x: jnp.sum(jnp.sinc(x)),
    }
    _, _, _, grad_without_sin = fnn.autodiff.make_transforms(
        {p: r for p, r in fnn.ops.RULES.items() if p.name != "sin"}
    )
    for name, f in where.items():
        with pytest.raises(fnn.MissingRuleError) as info:
            (grad_without_sin if name == "inside jnp" else fnn.grad)(f)(x)
        text = str(info.value)
        assert "test_jax_code.py:" in text and " at ." not in text, (name, text)
        assert len(text.splitlines()) <= 20 and "lambda ;" not in text, (name, text)  # no jaxprs
        assert info.value.primitive is not None, name


def test_the_missing_rule_template_runs_as_pasted():
    f = lambda x: jnp.sum(DOUBLE_P.bind(x) * x)
    with pytest.raises(fnn.MissingRuleError) as info:
        fnn.grad(f)(jnp.ones(2))
    assert info.value.primitive is DOUBLE_P
    text = str(info.value)
    template = text[text.index("import fnn") :]
    assert f"from {__name__} import DOUBLE_P" in template  # where the primitive lives
    scope = {}
    exec(template, scope)  # noqa: S102  (what a user pastes)
    rule = scope["double_for_test_rule"]
    assert rule.primitive is DOUBLE_P
    with pytest.raises(NotImplementedError, match="write double_for_test's local gradient here"):
        fnn.grad(f, rules=[rule])(jnp.ones(2))
    # a primitive jax.extend exports is imported from there
    from jax.extend.core import primitives as P

    from fnn.autodiff.interpret import rule_template

    assert "from jax.extend.core.primitives import lu_p\n" in rule_template(P.lu_p)
    assert "scatter_max_rule(g, inputs" in rule_template(P.scatter_max_p)


@jax.custom_jvp
def _custom_double(x):
    return x * 2.0


_custom_double.defjvp(lambda p, t: (p[0] * 2.0, DOUBLE_P.bind(t[0])))  # transposing it needs
# DOUBLE_P's rule


def test_a_missing_rule_with_a_prng_key_input_is_described():
    keyed = _no_rule_primitive("keyed_for_test")
    with pytest.raises(fnn.MissingRuleError, match=r"applied to \(key<fry>\[\], f32\[3\]\)"):
        fnn.grad(lambda x: jnp.sum(keyed.bind(jax.random.key(0), x)))(jnp.ones(3))


def test_effects_and_values_no_gradient_flows_from_need_no_rule(x64, capsys):
    x = jnp.asarray([1.0, 2.0, 3.0])

    def f(x):
        jax.debug.print("x = {}", x)
        jax.debug.callback(lambda v: None, x)
        top = lax.stop_gradient(jax.ops.segment_max(x, jnp.asarray([0, 0, 1]), 2))  # scatter-max
        unused = DOUBLE_P.bind(x) if no_rule else x  # no rule, but no gradient flows from it
        del unused
        return jnp.sum(top * x[:2]) + jnp.sum(x**2)

    no_rule = True
    mine = fnn.grad(f)(x)
    no_rule = False  # jax.grad needs a JVP rule even for an unused primitive
    np.testing.assert_allclose(mine, jax.grad(f)(x), rtol=1e-12)
    assert "x = [1. 2. 3.]" in capsys.readouterr().out


def test_while_loops_as_jax_differentiates_them(x64):
    # loop invariants carried through a while_loop pass their gradient (jax.grad too)
    f = lambda x: (
        lax.while_loop(lambda c: c[0] < 5, lambda c: (c[0] + 1, c[1], c[2] * c[1]), (0, x, 1.0))[1]
        * 3.0
    )
    same(f, 2.0)
    same(lambda x: lax.fori_loop(x, x + 2.0, lambda i, c: c, x), 1.0)
    # a changing carry that the result depends on: refused, truthfully (jax.grad refuses too)
    g = lambda x: lax.while_loop(lambda c: c[0] < 5, lambda c: (c[0] + 1, c[1] * 2.0), (0, x))[1]
    with pytest.raises(ValueError, match="Reverse-mode differentiation does not work"):
        jax.grad(g)(1.0)
    with pytest.raises(fnn.GateError, match=r"while_loop at .*test_jax_code.py.*jax.grad refuses"):
        fnn.grad(g)(1.0)


def test_custom_jvp_rules_are_transposed_as_jax_does(x64):
    """A jax.custom_jvp function's gradient is the transpose of its rule, even where the rule is
    not the primal's derivative; integer arguments, several outputs, symbolic zeros."""

    @jax.custom_jvp
    def clipped(x, n):
        return jnp.clip(x * n, -1.0, 1.0), jnp.sin(x)

    @clipped.defjvp
    def clipped_jvp(primals, tangents):  # a surrogate: not the derivative of the clip
        (x, n), (dx, _) = primals, tangents
        return clipped(x, n), (2.0 * n * dx, jnp.cos(x) * dx)

    @jax.custom_jvp
    def scaled(x, y):
        return x * y

    scaled.defjvp(
        lambda p, t: (
            scaled(*p),
            3.0 * t[0] * p[1]
            + (0.0 if type(t[1]) is jax.custom_derivatives.SymbolicZero else t[1] * p[0]),
        ),
        symbolic_zeros=True,
    )

    x = jnp.asarray([-2.0, 0.1, 0.7, 3.0])
    same(lambda x: jnp.sum(clipped(x, 2)[0] * jnp.arange(4.0)) + jnp.sum(clipped(x, 3)[1]), x)
    same(lambda x, y: jnp.sum(scaled(x, y) ** 2), x, x[::-1], argnums=(0, 1))
    same(lambda x: jnp.sum(scaled(x, 2.0)), x)  # y not differentiated: a symbolic zero
    # the primal's derivative would be 0 outside [-1, 1]: the rule's 2 n is what JAX gives
    np.testing.assert_array_equal(fnn.grad(lambda x: clipped(x, 2)[0])(3.0), 4.0)
