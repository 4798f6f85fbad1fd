"""Every JAX-primitive rule in fnn.ops.primitives, checked at its own test cases exactly as the
gates are: hand-written VJP vs jax.vjp of the same primitive (float64 and float32), vs central
differences (float64), and second order (JAX differentiating the hand-written backward vs JAX's
own second derivative). Parametrized over the table itself, so a rule without cases fails."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn.check.gates import NUMERIC_TOLERANCE, TOLERANCE, cast_case, check_gate_case, gate_functions
from fnn.ops.primitives import GATES, RULES

NAMES = sorted(g.name for g in GATES.values())
BY_NAME = {g.name: g for g in GATES.values()}


@pytest.mark.parametrize("name", NAMES)
def test_rule_is_declared_fully(name):
    gate = BY_NAME[name]
    assert gate.vjp is not None and gate.cases is not None, f"{name}: VJP and cases required"
    assert gate.__doc__ and "gradient" in gate.__doc__.lower(), name
    cases = gate.cases(np.random.default_rng(0), "float32")
    assert cases, name
    for c in cases:  # every case really exercises this primitive's gate
        assert isinstance(c.kwargs, dict)


@pytest.mark.parametrize("name", NAMES)
def test_rule_matches_jax_float64(name, x64):
    gate = BY_NAME[name]
    rng = np.random.default_rng(1)
    for case in gate.cases(np.random.default_rng(0), "float64"):
        if not case.reference:
            assert numeric_only(gate, case) <= NUMERIC_TOLERANCE, (name, case.label)
            continue
        r = check_gate_case(gate, case, "float64", rng)
        assert r["out"] <= 1e-12, (name, case.label, r)
        assert r["vs_jax"] <= TOLERANCE["float64"], (name, case.label, r)
        if r["vs_numeric"] is not None:
            assert r["vs_numeric"] <= NUMERIC_TOLERANCE, (name, case.label, r)


@pytest.mark.parametrize("name", NAMES)
def test_rule_matches_jax_float32(name):
    gate = BY_NAME[name]
    rng = np.random.default_rng(2)
    for case in gate.cases(np.random.default_rng(0), "float32"):
        if not case.reference:
            continue
        r = check_gate_case(gate, case, "float32", rng, numeric=False)
        assert r["vs_jax"] <= TOLERANCE["float32"], (name, case.label, r)


@pytest.mark.parametrize("name", NAMES)
def test_rule_second_order(name, x64):
    """JAX differentiating fnn's backward equals JAX's own second derivative (first case)."""
    gate = BY_NAME[name]
    case = gate.cases(np.random.default_rng(0), "float64")[0]
    args = cast_case(case, "float64")
    diff, forward, recorded = gate_functions(gate, args, case.kwargs)
    dargs = [args[i] for i in diff]
    if not dargs:
        pytest.skip("no float input")
    out = jax.eval_shape(forward, *dargs)
    rng = np.random.default_rng(3)
    cts = jax.tree_util.tree_map(
        lambda o: jnp.asarray(rng.standard_normal(o.shape), o.dtype)
        if jnp.issubdtype(o.dtype, jnp.inexact) else np.zeros(o.shape, jax.dtypes.float0), out)

    def first(pull, f):
        def g(*d):
            grads = pull(f, *d)[1](cts)
            return sum(jnp.sum(jnp.sin(x)) for x in jax.tree_util.tree_leaves(grads)
                       if x.dtype != jax.dtypes.float0)
        return g

    mine = jax.grad(first(fnn.vjp, recorded), argnums=tuple(range(len(dargs))))(*dargs)
    ref = jax.grad(first(jax.vjp, forward), argnums=tuple(range(len(dargs))))(*dargs)
    for a, b in zip(mine, ref):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=name)


def numeric_only(gate, case):
    """fnn's VJP against central differences, where JAX has no rule to compare with."""
    from fnn.check.numeric import numerical_vjp, rel_error

    args = cast_case(case, "float64")
    diff, forward, recorded = gate_functions(gate, args, case.kwargs)
    dargs = [args[i] for i in diff]
    out = jax.eval_shape(forward, *dargs)
    ct = jnp.asarray(np.random.default_rng(4).standard_normal(out.shape), out.dtype)
    mine = fnn.vjp(recorded, *dargs)[1](ct)
    num = numerical_vjp(lambda *d: np.asarray(forward(*d)), [np.asarray(a) for a in dargs],
                        np.asarray(ct))
    return max(rel_error(a, b) for a, b in zip(mine, num))


def test_table_covers_the_primitives_of_common_code():
    from jax.extend.core import primitives as P

    needed = ["add_p", "sub_p", "mul_p", "div_p", "neg_p", "max_p", "min_p", "pow_p",
              "integer_pow_p", "exp_p", "log_p", "log1p_p", "expm1_p", "tanh_p", "logistic_p",
              "sin_p", "cos_p", "tan_p", "atan2_p", "sqrt_p", "rsqrt_p", "abs_p", "sign_p",
              "floor_p", "round_p", "erf_p", "erfc_p", "clamp_p", "select_n_p",
              "convert_element_type_p", "reduce_sum_p", "reduce_max_p", "reduce_min_p",
              "reduce_prod_p", "argmax_p", "cumsum_p", "cumprod_p", "cummax_p", "dot_general_p",
              "reshape_p", "squeeze_p", "broadcast_in_dim_p", "transpose_p", "slice_p",
              "dynamic_slice_p", "dynamic_update_slice_p", "concatenate_p", "pad_p", "rev_p",
              "gather_p", "scatter_add_p", "scatter_p", "sort_p", "top_k_p", "stop_gradient_p",
              "custom_jvp_call_p", "custom_vjp_call_p", "jit_p", "eq_p", "iota_p"]
    missing = [n for n in needed if getattr(P, n) not in RULES]
    assert not missing, missing
