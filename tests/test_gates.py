"""Every gate of fnn.registry, fnn's own (relu, affine, ...) and those of JAX's primitives
(lax.tanh, lax.dot_general, ...), checked at its own test cases by the gate checker
(fnn.check.gates, also behind `python -m fnn gradcheck`): hand-written VJP against jax.vjp of
the same forward (float64 and float32), against central differences (float64), eagerly and
under jit, vmap, grad(vmap) and vmap(grad), and second order (JAX differentiating the
hand-written backward vs JAX's own second derivative: the checker's "2nd order" transform, and
elementwise in tests/test_second_order.py). Each gate is checked once per test run.

Parametrized over the registry itself, so a gate without test cases fails here; and a module of
fnn.ops that declares gates but is not one of the registry's families fails here too.
"""

import functools
import importlib
import pkgutil

import jax
import numpy as np
import pytest

import fnn
from fnn import ops
from fnn.autodiff import Gate
from fnn.check import check_gates
from fnn.check.gates import CHECKS, DIFFERENTIATE_THE_VJP
from fnn.check.tolerances import tolerance

GATES = sorted(fnn.registry)


def test_registry_is_complete():
    assert isinstance(fnn.registry, fnn.autodiff.Registry)
    assert set(fnn.registry) == set(fnn.registry.named) | {
        g.name for g in fnn.registry.by_primitive.values()
    }
    named = {
        "relu",
        "leaky_relu",
        "elu",
        "maxout",
        "softplus",
        "gelu",
        "silu",
        "affine",
        "mean",
        "logsumexp",
        "softmax",
        "log_softmax",
        "softmax_cross_entropy",
        "svm_loss",
        "mse",
        "l2_penalty",
        "conv2d",
        "max_pool2d",
        "avg_pool2d",
        "batch_norm",
        "layer_norm",
        "dropout",
        "sign",
        "round",
        "quantize",
        "spike",
        "attention",
        "lstm_sequence",
    }
    assert named <= set(fnn.registry.named), sorted(named - set(fnn.registry.named))
    # the lecture's other names are JAX's functions, differentiated by their primitives' rules
    lecture = {
        "add",
        "subtract",
        "multiply",
        "divide",
        "negative",
        "power",
        "exp",
        "log",
        "sqrt",
        "abs",
        "maximum",
        "minimum",
        "where",
        "sigmoid",
        "tanh",
        "matmul",
        "transpose",
        "reshape",
        "broadcast_to",
        "concatenate",
        "take",
        "stop_gradient",
        "sum",
        "max",
    }
    assert lecture <= set(fnn.registry.lecture_names), sorted(
        lecture - set(fnn.registry.lecture_names)
    )
    assert all(callable(getattr(ops, n)) and not isinstance(getattr(ops, n), Gate) for n in lecture)


def test_one_declaration_per_derivative():
    """No gate of fnn's own stands for a JAX primitive that has a rule: each derivative is
    written once. The lecture's name a primitive's gate declares is a function of fnn.ops
    (fnn.ops.aliases) whose program uses that primitive, and every such function is one."""
    import jax.numpy as jnp

    from fnn.ops import aliases

    for lecture, names in fnn.registry.lecture_names.items():
        assert lecture in aliases.__all__, (lecture, names)
        assert lecture not in fnn.registry.named, lecture
    args = {
        "where": (jnp.array([True, False]), jnp.ones(2), jnp.zeros(2)),
        "matmul": (jnp.ones((2, 3)), jnp.ones((3, 2))),
        "astype": (jnp.ones(2, jnp.float32),),
        "reshape": (jnp.ones((2, 3)),),
        "broadcast_to": (jnp.ones(3),),
        "transpose": (jnp.ones((2, 3)),),
        "sum": (jnp.ones((2, 3)),),
        "max": (jnp.ones((2, 3)),),
        "concatenate": (jnp.ones(2), jnp.ones(3)),
        "take": (jnp.ones(4), jnp.array([0, 2])),
        "power": (jnp.ones(2), jnp.full(2, 1.5)),
    }
    kwargs = {
        "astype": {"dtype": jnp.float16},
        "reshape": {"shape": (3, 2)},
        "broadcast_to": {"shape": (2, 3)},
        "index": {"index": 1},
    }
    for name in aliases.__all__:
        fn = getattr(aliases, name)
        a = args.get(
            name,
            (jnp.full((2,), 0.5),)
            * (2 if name in ("add", "subtract", "multiply", "divide", "maximum", "minimum") else 1),
        )
        jaxpr = jax.make_jaxpr(functools.partial(fn, **kwargs.get(name, {})))(*a)
        used = _primitives(jaxpr.jaxpr)
        if name == "index":  # x[i]: slice and squeeze, or a gather, as JAX reads the index
            continue
        assert set(fnn.registry.lecture_names[name]) & used, (name, used)


def _primitives(jaxpr) -> set:
    """The gate names ('lax.mul') of the primitives of a jaxpr, nested jaxprs (jit) included."""
    found = set()
    for e in jaxpr.eqns:
        found.add(f"lax.{e.primitive.name}")
        for v in e.params.values():
            inner = getattr(v, "jaxpr", None)
            if inner is not None:
                found |= _primitives(getattr(inner, "jaxpr", inner))
    return found


def test_every_module_with_gates_is_a_family():
    """A module of fnn.ops, or of the core (whose structural rules fnn.autodiff.structural
    include gates: scan, cond, checkpoint, ...), declaring gates with test cases must be one of
    the registry's families: otherwise its gates would be dropped silently (gates without cases
    are parts of the structural rules, fnn.ops.primitives.STRUCTURAL, or of a larger rule)."""
    families = set(ops.FAMILIES.values()) | set(ops.primitives.FAMILIES.values())
    registered = {id(g) for g in fnn.registry.values()}
    modules = [
        info.name
        for package in (ops, fnn.autodiff)
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
    ]
    assert "fnn.autodiff.structural.loops" in modules
    for name in modules:
        mod = importlib.import_module(name)
        own = [
            v
            for v in vars(mod).values()
            if isinstance(v, Gate) and v.cases is not None and v.__module__ == mod.__name__
        ]
        if own:
            assert mod in families, f"{name} declares gates but is no family of fnn.ops"
            assert all(id(g) in registered for g in own), name


def test_table_covers_the_primitives_of_common_code():
    from jax.extend.core import primitives as P

    needed = [
        "add_p",
        "sub_p",
        "mul_p",
        "div_p",
        "neg_p",
        "max_p",
        "min_p",
        "pow_p",
        "integer_pow_p",
        "exp_p",
        "log_p",
        "log1p_p",
        "expm1_p",
        "tanh_p",
        "logistic_p",
        "sin_p",
        "cos_p",
        "tan_p",
        "atan2_p",
        "sqrt_p",
        "rsqrt_p",
        "abs_p",
        "sign_p",
        "floor_p",
        "round_p",
        "erf_p",
        "erfc_p",
        "clamp_p",
        "select_n_p",
        "convert_element_type_p",
        "reduce_sum_p",
        "reduce_max_p",
        "reduce_min_p",
        "reduce_prod_p",
        "argmax_p",
        "cumsum_p",
        "cumprod_p",
        "cummax_p",
        "dot_general_p",
        "reshape_p",
        "squeeze_p",
        "broadcast_in_dim_p",
        "transpose_p",
        "slice_p",
        "dynamic_slice_p",
        "dynamic_update_slice_p",
        "concatenate_p",
        "pad_p",
        "rev_p",
        "gather_p",
        "scatter_add_p",
        "scatter_p",
        "sort_p",
        "top_k_p",
        "stop_gradient_p",
        "custom_jvp_call_p",
        "custom_vjp_call_p",
        "jit_p",
        "eq_p",
        "iota_p",
    ]
    missing = [n for n in needed if getattr(P, n) not in ops.RULES]
    assert not missing, missing


@pytest.mark.parametrize("name", GATES)
def test_gate_is_declared_fully(name):
    gate = fnn.registry[name]
    assert gate.vjp is not None, f"gate '{name}' has no VJP"
    assert gate.cases is not None, f"gate '{name}' has no test cases (@{name}.defcases)"
    assert gate.__doc__ and "gradient" in gate.__doc__.lower(), (
        f"gate '{name}' docstring must state its local gradient"
    )
    cases = gate.cases(np.random.default_rng(0), "float32")
    assert cases, name
    assert all(isinstance(c.kwargs, dict) for c in cases), name


@pytest.mark.parametrize("name", GATES)
def test_vjp_matches_jax_numerics_and_transforms(name):
    """The gate checker, once per gate: every case in float64 (forward, vs jax.vjp, vs central
    differences) and float32 (vs jax.vjp); eager, jit, vmap, grad(vmap), vmap(grad). A case
    where JAX has no rule (reference=False) is checked against central differences alone.
    (fnn.check.check_gates, as docs/checking.md shows it.)"""
    gate = fnn.registry[name]
    (report,) = check_gates({name: gate}, kinks=False)  # kinks: tests/test_kinks.py
    assert report.gate == name and not report.errors, (name, report.errors)
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
        assert c.vs_numeric is None or c.vs_numeric <= tolerance("numeric", "float64") == 1e-6, (
            name,
            c,
        )
    for c in report.cases:
        if c.dtype == "float32" and c.vs_jax is not None:
            assert c.vs_jax <= tolerance("gate", "float32") == 2e-5, (name, c)
    # the transforms run on the first plain case; where JAX cannot differentiate its VJP
    # (Case.second_order=False) those that would are not judged
    first = next(
        c
        for c in cases
        if c.reference
        and not any(c.structure if isinstance(c.structure, tuple) else (c.structure,))
    )
    unjudged = () if first.second_order else DIFFERENTIATE_THE_VJP
    for t in CHECKS:
        assert report.transforms[t] is (None if t in unjudged else True), (
            name,
            t,
            report.transforms,
        )
    assert report.ok, report.verdict
