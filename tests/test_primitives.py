"""Every JAX-primitive rule in fnn.ops.primitives, checked at its own test cases exactly as the
gates are: hand-written VJP vs jax.vjp of the same primitive (float64 and float32), vs central
differences (float64), and second order (JAX differentiating the hand-written backward vs JAX's
own second derivative: the checker's "2nd order" transform, and elementwise in
tests/test_second_order.py).
Parametrized over the table itself, so a rule without cases fails."""

import jax
import numpy as np
import pytest

from fnn.check.gates import CHECKS, DIFFERENTIATE_THE_VJP, check_gate
from fnn.check.tolerances import tolerance
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
def test_rule_matches_jax_numerics_and_transforms(name):
    """The gate checker, once per rule: every case in float64 (forward, vs jax.vjp, vs central
    differences) and float32 (vs jax.vjp); eager, jit, vmap, grad(vmap), vmap(grad). A case
    where JAX has no rule (reference=False) is checked against central differences alone."""
    gate = BY_NAME[name]
    report = check_gate(name, gate, kinks=False)  # kinks: tests/test_kinks.py
    assert not report.errors, (name, report.errors)
    with jax.enable_x64(True):  # the float64 cases as the checker made them
        cases = gate.cases(np.random.default_rng(0), "float64")
    f64 = [c for c in report.cases if c.dtype == "float64"]
    assert len(f64) == len(cases) >= 1
    for c, case in zip(f64, cases):
        assert c.forward <= 1e-12, (name, c)
        if case.reference:
            assert c.vs_jax <= tolerance("gate", "float64") == 1e-10, (name, c)
        else:
            assert c.vs_jax is None and c.vs_numeric is not None, (name, c)
        assert c.vs_numeric is None or c.vs_numeric <= tolerance("numeric", "float64"), (name, c)
    for c in report.cases:
        if c.dtype == "float32" and c.vs_jax is not None:
            assert c.vs_jax <= tolerance("gate", "float32") == 2e-5, (name, c)
    # the transforms run on the first plain case; where JAX cannot differentiate its VJP
    # (Case.second_order=False) those that would are not judged
    first = next(c for c in cases if c.reference and not any(
        c.structure if isinstance(c.structure, tuple) else (c.structure,)))
    unjudged = () if first.second_order else DIFFERENTIATE_THE_VJP
    for t in CHECKS:
        assert report.transforms[t] is (None if t in unjudged else True), (
            name, t, report.transforms)
    assert report.ok, report.verdict


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
