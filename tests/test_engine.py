"""The engine: JAX's semantics for vjp/grad/value_and_grad, transforms, contracts, errors."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

import fnn
from fnn import ops


class Params(NamedTuple):
    w: jnp.ndarray
    b: jnp.ndarray


def loss_tree(p, x):
    return ops.sum((x @ p["layers"][0].w + p["layers"][0].b) ** 2) + 3.0 * p["scale"][1]


def tree_args():
    rng = np.random.default_rng(0)
    p = {
        "layers": [
            Params(jnp.asarray(rng.standard_normal((3, 2))), jnp.asarray(rng.standard_normal(2)))
        ],
        "scale": (jnp.asarray(1.0), jnp.asarray(2.0)),
    }
    return p, jnp.asarray(rng.standard_normal((4, 3)))


def assert_tree_close(a, b, **kw):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, **kw)


def test_pytree_arguments_dicts_lists_tuples_namedtuples():
    p, x = tree_args()
    assert_tree_close(fnn.grad(loss_tree)(p, x), jax.grad(loss_tree)(p, x), rtol=1e-6)
    assert isinstance(fnn.grad(loss_tree)(p, x)["layers"][0], Params)


def test_argnums_tuple_and_negative():
    p, x = tree_args()
    mine = fnn.grad(loss_tree, argnums=(0, 1))(p, x)
    ref = jax.grad(loss_tree, argnums=(0, 1))(p, x)
    assert_tree_close(mine, ref, rtol=1e-6)
    assert_tree_close(fnn.grad(loss_tree, argnums=-1)(p, x), ref[1], rtol=1e-6)


def test_value_and_grad_and_has_aux():
    def f(w, x):
        y = x @ w
        return ops.sum(y * y), {"pred": y, "n": 3}

    w, x = jnp.ones((3, 2)), jnp.arange(6.0).reshape(2, 3)
    (val, aux), g = fnn.value_and_grad(f, has_aux=True)(w, x)
    (rval, raux), rg = jax.value_and_grad(f, has_aux=True)(w, x)
    np.testing.assert_allclose(val, rval)
    np.testing.assert_allclose(aux["pred"], raux["pred"])
    assert aux["n"] == 3 and not isinstance(aux["pred"], fnn.Traced)
    np.testing.assert_allclose(g, rg)
    g2, aux2 = fnn.grad(f, has_aux=True)(w, x)
    np.testing.assert_allclose(g2, rg)


def test_int_and_bool_arguments_carry_no_gradient():
    def f(w, labels, mask):
        return ops.softmax_cross_entropy(w, labels) * 1.0 + ops.sum(ops.where(mask, w, 0.0))

    w = jnp.ones((2, 3))
    labels = jnp.array([0, 2])
    mask = jnp.array([[True, False, True], [False, True, True]])
    np.testing.assert_allclose(
        fnn.grad(f)(w, labels, mask), jax.grad(f)(w, labels, mask), rtol=1e-6
    )
    with pytest.raises(TypeError, match="int32.*carry no gradient"):
        fnn.grad(f, argnums=1)(w, labels, mask)
    # vjp gives float0 zeros for integer inputs, as jax.vjp does
    _, pull = fnn.vjp(lambda w, n: w * 2.0, w, jnp.array(3))
    dw, dn = pull(jnp.ones((2, 3)))
    assert dn.dtype == jax.dtypes.float0


def test_argnums_out_of_range_and_bad_type():
    with pytest.raises(ValueError, match="argnums=2 but f was called with 2"):
        fnn.grad(lambda a, b: a * b, argnums=2)(1.0, 2.0)
    with pytest.raises(TypeError, match="argnums must be"):
        fnn.grad(lambda a, b: a * b, argnums="a")(1.0, 2.0)


def test_non_scalar_output_is_an_error():
    with pytest.raises(TypeError, match="one scalar output, got f32\\[3\\]"):
        fnn.grad(lambda x: x * 2.0)(jnp.ones(3))


def test_fan_out_sums_gradients_and_unused_inputs_get_zeros():
    f = lambda x, y: x * x + ops.exp(x) * x
    x = jnp.array(0.7)
    np.testing.assert_allclose(fnn.grad(f)(x, 1.0), jax.grad(f)(x, 1.0), rtol=1e-6)
    assert float(fnn.grad(f, argnums=1)(x, 1.0)) == 0.0
    # an output that does not depend on the input at all
    assert float(fnn.grad(lambda x: jnp.array(3.0))(x)) == 0.0


def test_vjp_with_several_outputs_and_cotangent_checks():
    f = lambda x: (x * 2.0, {"s": ops.sum(x)})
    x = jnp.arange(3.0)
    out, pull = fnn.vjp(f, x)
    (dx,) = pull((jnp.ones(3), {"s": jnp.array(2.0)}))
    np.testing.assert_allclose(dx, [4.0, 4.0, 4.0])
    with pytest.raises(TypeError, match="structure"):
        pull(jnp.ones(3))
    with pytest.raises(ValueError, match="does not match output"):
        pull((jnp.ones(4), {"s": jnp.array(2.0)}))


# ---- user gates: the public extension API ------------------------------------------------------
@fnn.defgate
def cube(x):
    """x**3.  Local gradient: 3 x**2."""
    return x**3, x


@cube.defvjp
def cube_vjp(g, x):
    return (3.0 * x * x * g,)


@fnn.defgate
def split_scale(x, y):
    """(x * y, x + y): a gate with two outputs.  Local gradients: (y, 1) and (x, 1)."""
    return (x * y, x + y), (x, y)


@split_scale.defvjp
def split_scale_vjp(g, saved):
    (g1, g2), (x, y) = g, saved
    return g1 * y + g2, g1 * x + g2


def test_user_gate_works_everywhere():
    f = lambda x: ops.sum(cube(x))
    x = jnp.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(fnn.grad(f)(x), 3 * x**2)
    np.testing.assert_allclose(jax.grad(f)(x), 3 * x**2)  # forward only under jax.grad
    np.testing.assert_allclose(jax.jit(fnn.grad(f))(x), 3 * x**2)


def test_gate_with_several_outputs():
    def f(x, y):
        a, b = split_scale(x, y)
        return ops.sum(a * 2.0 + b * b)

    x, y = jnp.array([1.0, 2.0]), jnp.array([3.0, -1.0])
    mine = fnn.grad(f, argnums=(0, 1))(x, y)
    ref = jax.grad(f, argnums=(0, 1))(x, y)
    assert_tree_close(mine, ref, rtol=1e-6)
    # only one output used: the other gets a zero cotangent
    g = fnn.grad(lambda x, y: ops.sum(split_scale(x, y)[1]))(x, y)
    np.testing.assert_allclose(g, [1.0, 1.0])


def _bad_gate(result):
    @fnn.defgate(name="bad")
    def bad(x, y):
        """x * y.  Local gradients: deliberately wrong."""
        return x * y, (x, y)

    bad.defvjp(lambda g, saved: result(g, *saved))
    return bad


@pytest.mark.parametrize(
    "result, message",
    [
        (lambda g, x, y: (g * y,), "returned 1 gradients for 2 inputs"),
        (lambda g, x, y: g * y, "must return a tuple"),
        (
            lambda g, x, y: (jnp.sum(g * y), g * x),
            "gradient f32\\[\\] for input 0 which is f32\\[3\\]",
        ),
        (lambda g, x, y: ((g * y).astype(jnp.float16), g * x), "f16\\[3\\] for input 0"),
    ],
)
def test_vjp_contract_is_checked(result, message):
    bad = _bad_gate(result)
    with pytest.raises(fnn.VJPContractError, match="gate 'bad'.*" + message):
        fnn.grad(lambda x, y: ops.sum(bad(x, y)), argnums=(0, 1))(jnp.ones(3), jnp.ones(3))


def test_no_vjp_work_for_inputs_that_need_no_gradient():
    seen = []

    @fnn.defgate
    def mul(x, y):
        """x * y.  Local gradients: y and x."""
        return x * y, (x, y)

    @mul.defvjp
    def mul_vjp(g, saved, *, needs):
        seen.append(needs)
        x, y = saved
        return (g * y if needs[0] else None), (g * x if needs[1] else None)

    fnn.grad(lambda x, y: ops.sum(mul(x, y)))(jnp.ones(2), jnp.ones(2))
    fnn.grad(lambda x: ops.sum(mul(x, 3.0)))(jnp.ones(2))
    assert seen == [(True, False), (True, False)]
    # a gate whose output does not reach the result is not differentiated at all
    seen.clear()

    def unused_branch(x):
        mul(x, x)  # recorded, but its output never reaches the result
        return ops.sum(x)

    fnn.grad(unused_branch)(jnp.ones(2))
    assert seen == []


def test_a_vjp_learns_which_outputs_a_cotangent_reached():
    """`got`: per output, whether a cotangent reached it (the others come as zeros), so a rule
    can leave out terms that would be 0 * inf, as JAX leaves out a symbolic zero."""
    seen = []

    @fnn.defgate
    def split(x):
        """(2x, x^2).  Local gradient: 2 g0 + 2x g1."""
        return (2 * x, x * x), x

    @split.defvjp
    def split_vjp(g, x, *, got):
        seen.append(got)
        return (2 * g[0] + (2 * x * g[1] if got[1] else 0.0),)

    x = jnp.arange(3.0)
    np.testing.assert_allclose(fnn.grad(lambda x: ops.sum(split(x)[0]))(x), [2, 2, 2])
    np.testing.assert_allclose(fnn.grad(lambda x: ops.sum(split(x)[1]))(x), [0, 2, 4])
    np.testing.assert_allclose(fnn.vjp(split, x)[1]((x, x))[0], 2 * x + 2 * x * x)
    assert seen == [(True, False), (False, True), (True, True)]


# ---- transforms ---------------------------------------------------------------------------------
def mlp_loss(params, x, y):
    h = ops.relu(ops.affine(x, params["w1"], params["b1"]))
    return ops.softmax_cross_entropy(ops.affine(h, params["w2"], params["b2"]), y)


def mlp_args(n=8):
    rng = np.random.default_rng(0)
    params = {
        "w1": rng.standard_normal((5, 7)) * 0.5,
        "b1": rng.standard_normal(7) * 0.1,
        "w2": rng.standard_normal((7, 3)) * 0.5,
        "b2": np.zeros(3),
    }
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return params, jnp.asarray(rng.standard_normal((n, 5))), jnp.asarray(rng.integers(0, 3, n))


def test_jit_compiles_forward_and_backward_with_no_python_per_step():
    calls = []

    @fnn.defgate
    def traced_square(x):
        """x**2.  Local gradient: 2x."""
        calls.append("forward")
        return x * x, x

    @traced_square.defvjp
    def _(g, x):
        calls.append("backward")
        return (2.0 * x * g,)

    step = jax.jit(fnn.grad(lambda x: ops.sum(traced_square(x))))
    np.testing.assert_allclose(step(jnp.full(3, 0.5)), 1.0)
    traced = list(calls)
    assert "forward" in traced and traced[-1] == "backward"  # all of it at trace time
    for i in range(5):
        np.testing.assert_allclose(step(jnp.full(3, float(i))), 2.0 * i)
    assert calls == traced  # later calls run the compiled program: no Python per step
    hlo = jax.jit(fnn.grad(mlp_loss)).lower(*mlp_args()).as_text()
    assert "dot" in hlo and "callback" not in hlo


def test_vmap_gives_per_example_gradients(x64):
    params, x, y = mlp_args()
    per_ex = lambda p, xi, yi: mlp_loss(p, xi[None], yi[None])
    mine = jax.vmap(fnn.grad(per_ex), in_axes=(None, 0, 0))(params, x, y)
    ref = jax.vmap(jax.grad(per_ex), in_axes=(None, 0, 0))(params, x, y)
    assert_tree_close(mine, ref, rtol=1e-10, atol=1e-14)
    assert mine["w1"].shape == (8, 5, 7)


def test_jacfwd_of_grad_is_the_hessian(x64):
    f = lambda x: ops.sum(ops.tanh(x) * x**3) + ops.logsumexp(x)
    x = jnp.asarray(np.random.default_rng(3).standard_normal(4))
    np.testing.assert_allclose(jax.jacfwd(fnn.grad(f))(x), jax.hessian(f)(x), rtol=1e-10)
    np.testing.assert_allclose(jax.jacrev(fnn.grad(f))(x), jax.hessian(f)(x), rtol=1e-10)


def test_grad_of_grad_differentiates_the_hand_written_backward(x64):
    # the inner fnn.grad's backward is plain JAX code, which the outer fnn.grad differentiates
    # primitive by primitive: second derivatives by fnn's rules alone
    f = lambda x: ops.sum(ops.tanh(x) * x**3) + jnp.sum(jnp.sin(x) ** 2)
    x = jnp.asarray(np.random.default_rng(3).standard_normal(4))
    second = fnn.grad(lambda x: jnp.sum(fnn.grad(f)(x)))(x)
    np.testing.assert_allclose(second, jax.grad(lambda x: jnp.sum(jax.grad(f)(x)))(x), rtol=1e-10)
    np.testing.assert_allclose(fnn.grad(fnn.grad(lambda x: x * x * x))(2.0), 12.0)
    # a closure over the outer variable
    mixed = fnn.grad(lambda x: fnn.grad(lambda y: x * y * y)(1.0))(2.0)
    np.testing.assert_allclose(mixed, 2.0)


def test_jax_code_is_differentiated_by_hand_written_rules(x64):
    def model(w, x):
        h = jax.nn.gelu(x @ w["a"], approximate=False) + jnp.tanh(x @ w["b"])
        return jnp.mean(jax.nn.logsumexp(h, axis=-1)) + jnp.linalg.norm(w["a"])

    rng = np.random.default_rng(0)
    w = {
        "a": jnp.asarray(rng.standard_normal((3, 4))),
        "b": jnp.asarray(rng.standard_normal((3, 4))),
    }
    x = jnp.asarray(rng.standard_normal((5, 3)))
    assert_tree_close(fnn.grad(model)(w, x), jax.grad(model)(w, x), rtol=1e-10)
    names = {r.gate.name for r in fnn.trace(model, w, x).tape.records}
    assert {"lax.dot_general", "lax.tanh", "lax.log", "lax.erfc"} <= names
    # logsumexp's max only feeds a stop_gradient: JAX evaluates it, no gate is recorded for it
    assert "lax.reduce_max" not in names


def test_a_primitive_without_a_rule_names_it_and_how_to_add_one():
    from jax.extend.core import Primitive

    square_p = Primitive("my_square")
    square_p.def_impl(lambda x: x * x)
    square_p.def_abstract_eval(lambda x: x)

    def model(x):
        return jnp.sum(square_p.bind(x))

    with pytest.raises(fnn.MissingRuleError) as info:
        fnn.grad(model)(jnp.ones(3))
    text = str(info.value)
    assert isinstance(info.value, fnn.ForeignCallError) and isinstance(info.value, TypeError)
    assert "'my_square'" in text and "f32[3]" in text and "test_engine.py" in text
    assert "fnn.primitive_gate" in text and "rules=" in text

    @fnn.primitive_gate(square_p)
    def my_square(g, inputs):
        """x**2.  Local gradient: 2x."""
        return (2.0 * inputs[0] * g,)

    np.testing.assert_allclose(fnn.grad(model, rules=[my_square])(jnp.arange(3.0)), [0, 2, 4])
    with fnn.rules(my_square):
        np.testing.assert_allclose(fnn.grad(model)(jnp.arange(3.0)), [0, 2, 4])
    with pytest.raises(fnn.MissingRuleError):  # the block restored the table
        fnn.grad(model)(jnp.ones(3))
    with pytest.raises(TypeError, match="primitive_gate"):
        fnn.grad(model, rules=[ops.relu])(jnp.ones(3))


def test_natural_model_code_operators_and_methods():
    def f(W, x):
        h = (x @ W).T.reshape(-1, 2)
        z = -h[:, 0] / 2.0 + h[1:].mean() - (1.0 - h) ** 2 @ jnp.ones(2) * h.ndim
        return (
            z.sum() + h.max() + h.mean(axis=0).sum() + float(h.shape[0]) + 0 * len(h) + 2 ** h[0, 0]
        )

    rng = np.random.default_rng(0)
    W, x = jnp.asarray(rng.standard_normal((3, 4))), jnp.asarray(rng.standard_normal((2, 3)))
    assert_tree_close(
        fnn.grad(f, argnums=(0, 1))(W, x), jax.grad(f, argnums=(0, 1))(W, x), rtol=2e-5
    )


def test_iterating_and_unpacking_a_traced_value():
    def f(w):
        a, b, c = w
        return sum(w) + a * b * c + ops.sum(ops.concatenate(*[row * 2.0 for row in w[None]]))

    w = jnp.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(fnn.grad(f)(w), jax.grad(f)(w))
    with pytest.raises(TypeError, match="0-d"):
        fnn.grad(lambda x: sum(x))(1.0)


def test_values_of_inner_fnn_calls_keep_their_outer_dependence():
    # the inner call's value (and aux) depend on the outer x through a closure
    assert float(fnn.grad(lambda x: fnn.value_and_grad(lambda y: x * x)(1.0)[0])(3.0)) == 6.0
    # a value that mixes the two calls' variables
    assert float(fnn.grad(lambda x: fnn.value_and_grad(lambda y: x * y)(1.0)[0])(3.0)) == 1.0
    outer_aux = lambda x: fnn.grad(lambda y: (y * y, x * x), has_aux=True)(1.0)[1]
    assert float(fnn.grad(outer_aux)(3.0)) == 6.0
    assert float(fnn.grad(lambda x: fnn.vjp(lambda y: x * 3.0, 1.0)[0])(3.0)) == 3.0


def test_keyword_arguments_pass_through_undifferentiated():
    f = lambda w, x, *, scale: ops.sum(w * x) * scale
    np.testing.assert_allclose(fnn.grad(f)(jnp.ones(2), jnp.arange(2.0), scale=3.0), [0.0, 3.0])


def test_numpy_reductions_and_malformed_user_gates():
    np.testing.assert_allclose(fnn.grad(lambda x: np.sum(x) + np.mean(x))(jnp.ones(4)), 1.25)

    @fnn.defgate
    def no_pair(x):
        """x.  Local gradient: 1 (its forward forgets to return what it saves)."""
        return x

    with pytest.raises(fnn.GateError, match="gate 'no_pair'.*pair \\(output, saved\\)"):
        no_pair(jnp.ones(3))
    with pytest.raises(fnn.GateError, match="gate 'no_pair'"):
        fnn.grad(lambda x: ops.sum(no_pair(x)))(jnp.ones(3))


def test_a_vjp_that_crashes_is_named():
    bad = _bad_gate(lambda g, x, y: (g @ jnp.ones((5, 2)), g * x))
    with pytest.raises(
        fnn.VJPContractError, match="VJP of gate 'bad' failed.*upstream gradient f32\\[3\\]"
    ):
        fnn.grad(lambda x, y: ops.sum(bad(x, y)), argnums=(0, 1))(jnp.ones(3), jnp.ones(3))


@pytest.mark.parametrize("i", [3, 4, -4, 1, -1])
def test_out_of_range_integer_index_routes_like_jax(i):
    x = jnp.arange(6.0).reshape(3, 2)
    np.testing.assert_allclose(
        fnn.grad(lambda x: ops.sum(x[i]))(x), jax.grad(lambda x: jnp.sum(x[i]))(x)
    )
    traced = jax.jit(fnn.grad(lambda x, j: ops.sum(x[j, 0])))(x, i + 2)
    np.testing.assert_allclose(traced, jax.grad(lambda x, j: jnp.sum(x[j, 0]))(x, i + 2))


def test_mixed_dtypes_give_each_input_its_own_dtype():
    w, b = jnp.ones((3, 2), jnp.bfloat16), jnp.zeros(2, jnp.bfloat16)
    x = jnp.ones((4, 3), jnp.float32)
    dw, db = fnn.grad(lambda w, b: ops.sum(ops.affine(x, w, b)), argnums=(0, 1))(w, b)
    assert dw.dtype == db.dtype == jnp.bfloat16
    da, dc = fnn.grad(lambda a, c: ops.sum(ops.concatenate(a, c)), argnums=(0, 1))(
        jnp.ones(2, jnp.bfloat16), jnp.ones(3)
    )
    assert (da.dtype, dc.dtype) == (jnp.bfloat16, jnp.float32)
    da, dc = fnn.grad(lambda a, c: a @ c, argnums=(0, 1))(jnp.ones(2, jnp.bfloat16), jnp.ones(2))
    assert (da.dtype, dc.dtype) == (jnp.bfloat16, jnp.float32)


def test_a_users_primitive_rule_reaches_loops_branches_checkpoints_and_nested_jit(x64):
    from jax.extend.core import Primitive
    from jax.interpreters import mlir

    cube_p = Primitive("my_cube")
    cube_p.def_impl(lambda x: x * x * x)
    cube_p.def_abstract_eval(lambda x: x)
    mlir.register_lowering(cube_p, mlir.lower_fun(lambda x: x * x * x, multiple_results=False))

    @fnn.primitive_gate(cube_p)
    def my_cube(g, inputs):
        """x**3.  Local gradient: 3x**2."""
        return (3.0 * inputs[0] ** 2 * g,)

    def programs(cube):
        return {
            "scan": lambda x: jnp.sum(lax.scan(lambda c, _: (cube(c) * 0.5, None), x, None, 3)[0]),
            "cond": lambda x: lax.cond(x[0] > 0, lambda a: jnp.sum(cube(a)), jnp.sum, x),
            "checkpoint": lambda x: jnp.sum(jax.checkpoint(lambda a: cube(jnp.sin(a)))(x)),
            "nested jit": lambda x: jnp.sum(jax.jit(lambda a: cube(a) * a)(x)),
            "jnp.diag (a platform cond)": lambda x: jnp.sum(jnp.diag(cube(x))),
        }

    x = jnp.asarray([0.5, -1.0, 2.0])
    written_out = programs(lambda a: a**3)  # the reference: x**3 differentiated by JAX
    for name, f in programs(cube_p.bind).items():
        ref = jax.grad(written_out[name])(x)
        np.testing.assert_allclose(fnn.grad(f, rules=[my_cube])(x), ref, rtol=1e-12, err_msg=name)
        with fnn.rules(my_cube):
            np.testing.assert_allclose(fnn.grad(f)(x), ref, rtol=1e-12, err_msg=name)
            np.testing.assert_allclose(jax.jit(fnn.grad(f))(x), ref, rtol=1e-12, err_msg=name)
