"""Second derivatives through fnn's hand-written backward: JAX differentiating a gate's VJP
(jax.grad of a function of fnn.vjp's result) equals JAX's own second derivative of the gate's
forward, for every gate of fnn's own (fnn.registry.named) at every test case and every JAX-primitive
rule (fnn.registry.by_primitive) at its first case, and at the special points where a
rule has a `where` (power at y = 0, x = y = 0) or a kink (relu, abs, maximum at a tie), where
the value (JAX's) is documented instead of skipped."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import ops
from fnn.check.gates import cast_case, gate_functions, random_cotangent, real_sum

PRIMITIVE_GATES = {g.name: g for g in fnn.registry.by_primitive.values()}
PRIMITIVE_NAMES = sorted(PRIMITIVE_GATES)


def _sin_of_vjp(pull, f, cts):
    """d -> sum(sin(vjp(f, d)(cts))) (of its real part where complex): a scalar whose gradient
    is a second derivative of f."""

    def g(*d):
        grads = pull(f, *d)[1](cts)
        return sum(
            real_sum(jnp.sin(x))
            for x in jax.tree_util.tree_leaves(grads)
            if x.dtype != jax.dtypes.float0
        )

    return g


def second_derivatives(gate, case, rng):
    """(fnn's, JAX's) gradients of sum(sin(vjp)) at `case` in float64, at a random cotangent
    drawn from `rng`, in one compiled program (op by op: 4-15x slower); None when the case
    has no float input."""
    args = cast_case(case, "float64")
    diff, forward, recorded = gate_functions(gate, args, case.kwargs, fixed=case.fixed)
    dargs = [args[i] for i in diff]
    if not dargs:
        return None
    cts = random_cotangent(jax.eval_shape(forward, *dargs), rng)
    argnums = tuple(range(len(dargs)))

    def both(*d):
        return (
            jax.grad(_sin_of_vjp(fnn.vjp, recorded, cts), argnums=argnums)(*d),
            jax.grad(_sin_of_vjp(jax.vjp, forward, cts), argnums=argnums)(*d),
        )

    return jax.jit(both)(*dargs)


@pytest.mark.parametrize("name", sorted(fnn.registry.named))
def test_second_order_at_every_case(name, x64):
    gate = fnn.registry[name]
    rng = np.random.default_rng(3)
    for case in gate.cases(np.random.default_rng(0), "float64"):
        pair = second_derivatives(gate, case, rng) if case.second_order else None
        if pair is None:
            continue
        for a, b in zip(*pair):
            scale = max(1.0, float(jnp.max(jnp.abs(b)))) if b.size else 1.0
            np.testing.assert_allclose(
                a, b, rtol=1e-9, atol=1e-10 * scale, err_msg=f"{name} {case.label}"
            )


@pytest.mark.parametrize("name", PRIMITIVE_NAMES)
def test_second_order_of_primitive_rules(name, x64):
    """The JAX-primitive rules (fnn.ops.primitives) at their first case, elementwise (the gate
    checker's "2nd order" transform judges the same derivatives by rel_error)."""
    gate = PRIMITIVE_GATES[name]
    case = gate.cases(np.random.default_rng(0), "float64")[0]
    if not case.second_order:
        pytest.skip(f"JAX has no second derivative to compare with: {case.label}")
    pair = second_derivatives(gate, case, np.random.default_rng(3))
    if pair is None:
        pytest.skip("no float input")
    for a, b in zip(*pair):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=name)


def hessian(f, *args):
    return jax.jacfwd(
        fnn.grad(f, argnums=tuple(range(len(args)))), argnums=tuple(range(len(args)))
    )(*args)


def test_power_at_y_zero(x64):
    # d2/dxdy (x**y) = x**(y-1) (1 + y log x) = 1/x at y = 0: the rule special-cases only
    # x = y = 0, so its own derivative is right here
    for f in (ops.power, lambda x, y: x**y):
        h = hessian(f, 4.0, 0.0)
        ref = jax.hessian(lambda x, y: x**y, argnums=(0, 1))(4.0, 0.0)
        np.testing.assert_allclose(np.array(h, dtype=float), np.array(ref, dtype=float), rtol=1e-12)
        np.testing.assert_allclose(h[0][1], 0.25)


def test_power_at_the_origin_is_jax_nan(x64):
    # x ** 0.0 binds lax.pow, whose rule (JAX's, and fnn's) gives d/dx = y x**(y-1) = 0 * inf =
    # NaN at x = 0 (an integer exponent gives 0). fnn followed autograd's 0 before following JAX.
    for f in (lambda x: ops.power(x, 0.0), lambda x: x**0.0):
        assert np.isnan(float(fnn.grad(f)(0.0)))
        assert np.isnan(float(jax.grad(f)(0.0)))
    assert float(fnn.grad(lambda x: x**0)(0.0)) == float(jax.grad(lambda x: x**0)(0.0)) == 0


@pytest.mark.parametrize(
    "f, x, first, second",
    [
        (ops.relu, 0.0, 0.0, 0.0),  # relu'(0) = 0 (jax.nn.relu's rule), relu'' = 0
        (ops.relu, 1.5, 1.0, 0.0),
        (ops.abs, 0.0, 1.0, 0.0),  # JAX's abs rule: select(x >= 0, g, -g)
        (ops.leaky_relu, 0.0, 1.0, 0.0),  # jax.nn.leaky_relu: the x >= 0 branch
        (lambda x: jax.nn.relu(x), 0.0, 0.0, 0.0),
        (lambda x: ops.maximum(x, 0.0), 0.0, 0.5, 0.0),  # a tie splits, as jnp.maximum's
        (lambda x: jnp.maximum(x, 0.0), 0.0, 0.5, 0.0),  # JAX's max primitive splits a tie
        (ops.elu, 0.0, 1.0, 1.0),  # C1 at 0; elu'' jumps from 1 (left) to 0: the left
    ],
)
def test_kinks_document_the_one_sided_value(f, x, first, second, x64):
    assert float(fnn.grad(f)(x)) == first
    assert float(jax.grad(fnn.grad(f))(x)) == second
    assert float(fnn.grad(fnn.grad(f))(x)) == second


def test_grad_of_grad_of_gates_equals_jax(x64):
    x = jnp.asarray(np.random.default_rng(0).uniform(0.3, 1.5, 5))
    for f in (
        lambda x: jnp.sum(ops.tanh(x) ** 2),
        lambda x: jnp.sum(ops.softplus(x) * x),
        lambda x: ops.logsumexp(x * x),
        lambda x: jnp.sum(ops.gelu(x)),
        lambda x: jnp.sum(ops.sqrt(x) * ops.log(x)),
    ):
        mine = fnn.grad(lambda x: jnp.sum(fnn.grad(f)(x) ** 2))(x)  # noqa: B023 (called in this iteration)
        ref = jax.grad(lambda x: jnp.sum(jax.grad(f)(x) ** 2))(x)  # noqa: B023 (called in this iteration)
        np.testing.assert_allclose(mine, ref, rtol=1e-10)
