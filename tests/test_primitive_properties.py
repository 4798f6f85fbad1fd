"""hypothesis draws the parameters of the structured primitives: dot_general's contracting and
batch dimensions, conv_general_dilated's strides, padding, dilations, groups and layouts,
gather and scatter from random indexing expressions, and reduce_window's windows; and every other
parameter a rule accepts (reshape's dimensions, precision and preferred_element_type, gather and
scatter modes and promises, sort's is_stable and num_keys, the cumulative reductions' axis and
reverse, window dilations, rounding_method, new_dtype, out_dtype). fnn's rule is compared with
jax.vjp of the same program in float64. A parameter a rule does not handle is refused, by name."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax import lax

import fnn
from fnn import registry

GATES = registry.by_primitive

SETTINGS = settings(
    max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def same_gradients(f, *args, rtol=1e-9):
    """fnn.vjp and jax.vjp of f at args, with one random cotangent: equal (relative to scale).
    Both in one jitted program (one compile, not one per operation)."""
    out = jax.eval_shape(f, *args)
    ct = jax.tree_util.tree_map(
        lambda o: jnp.asarray(np.random.default_rng(0).standard_normal(o.shape), o.dtype), out
    )
    both = jax.jit(lambda ct, *a: (fnn.vjp(f, *a)[1](ct), jax.vjp(f, *a)[1](ct)))
    mine, ref = both(ct, *args)
    for a, b in zip(mine, ref):
        scale = max(1.0, float(jnp.max(jnp.abs(b)))) if b.size else 1.0
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


def arrays(seed, *shapes):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(s)) for s in shapes]


@st.composite
def dot_general_problems(draw):
    """Shapes of x and y and dimension numbers: batch dims, contracting dims, free dims, in
    random positions."""
    nb, nc = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    nfx, nfy = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    size = lambda: draw(st.integers(1, 3))
    batch, contract = [size() for _ in range(nb)], [size() for _ in range(nc)]
    x_roles = ["b"] * nb + ["c"] * nc + ["f"] * nfx
    y_roles = ["b"] * nb + ["c"] * nc + ["f"] * nfy
    x_order = draw(st.permutations(range(len(x_roles))))
    y_order = draw(st.permutations(range(len(y_roles))))

    def layout(roles, order, free):
        shape, pos = [None] * len(roles), {"b": [], "c": []}
        counters = {"b": 0, "c": 0, "f": 0}
        for slot, k in enumerate(order):
            role = roles[k]
            i = counters[role]
            counters[role] += 1
            shape[slot] = {"b": batch, "c": contract, "f": free}[role][i]
            if role != "f":
                pos[role].append((i, slot))
        return shape, [s for _, s in sorted(pos["b"])], [s for _, s in sorted(pos["c"])]

    x_shape, xb, xc = layout(x_roles, x_order, [size() for _ in range(nfx)])
    y_shape, yb, yc = layout(y_roles, y_order, [size() for _ in range(nfy)])
    return (
        x_shape,
        y_shape,
        ((tuple(xc), tuple(yc)), (tuple(xb), tuple(yb))),
        draw(st.integers(0, 99)),
    )


@SETTINGS
@given(dot_general_problems())
def test_dot_general(problem):
    jax.config.update("jax_enable_x64", True)
    try:
        x_shape, y_shape, dims, seed = problem
        x, y = arrays(seed, x_shape, y_shape)
        same_gradients(lambda x, y: lax.dot_general(x, y, dims), x, y)
    finally:
        jax.config.update("jax_enable_x64", False)


@st.composite
def conv_problems(draw):
    nd = draw(st.integers(1, 2))
    groups = draw(st.sampled_from([1, 2]))
    batch_groups = 1 if groups > 1 else draw(st.sampled_from([1, 2]))
    cin = groups * draw(st.integers(1, 2))
    cout = groups * batch_groups * draw(st.integers(1, 2))
    n = batch_groups * draw(st.integers(1, 2))
    window = [draw(st.integers(1, 3)) for _ in range(nd)]
    spatial = [draw(st.integers(w, w + 3)) for w in window]
    strides = [draw(st.integers(1, 2)) for _ in range(nd)]
    lhs_dil = [draw(st.integers(1, 2)) for _ in range(nd)]
    rhs_dil = [draw(st.integers(1, 2)) for _ in range(nd)]
    padding = [(draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(nd)]
    channels_last = draw(st.booleans())
    spec = "".join("DHW"[3 - nd :])
    dims = (
        (f"N{spec}C", f"{spec}IO", f"N{spec}C")
        if channels_last
        else (f"NC{spec}", f"OI{spec}", f"NC{spec}")
    )
    lhs = [n] + spatial + [cin] if channels_last else [n, cin] + spatial
    rhs = window + [cin // groups, cout] if channels_last else [cout, cin // groups] + window
    return dict(
        lhs=lhs,
        rhs=rhs,
        strides=strides,
        padding=padding,
        lhs_dilation=lhs_dil,
        rhs_dilation=rhs_dil,
        dims=dims,
        groups=groups,
        batch_groups=batch_groups,
        seed=draw(st.integers(0, 99)),
    )


@SETTINGS
@given(conv_problems())
def test_conv_general_dilated(p):
    jax.config.update("jax_enable_x64", True)
    try:
        x, w = arrays(p["seed"], p["lhs"], p["rhs"])
        conv = lambda x, w: lax.conv_general_dilated(
            x,
            w,
            p["strides"],
            p["padding"],
            lhs_dilation=p["lhs_dilation"],
            rhs_dilation=p["rhs_dilation"],
            dimension_numbers=p["dims"],
            feature_group_count=p["groups"],
            batch_group_count=p["batch_groups"],
        )
        try:
            jax.eval_shape(conv, x, w)
        except (TypeError, ValueError):
            return  # an empty or invalid output shape for these sizes: nothing to check
        same_gradients(conv, x, w)
    finally:
        jax.config.update("jax_enable_x64", False)


@st.composite
def index_problems(draw):
    """A 2-d or 3-d operand and a numpy-style index mixing ints, slices, arrays and None."""
    shape = [draw(st.integers(1, 4)) for _ in range(draw(st.integers(2, 3)))]
    idx = []
    for n in shape:
        kind = draw(st.sampled_from(["slice", "int", "array", "all"]))
        if kind == "int":
            idx.append(draw(st.integers(-n, n - 1)))
        elif kind == "slice":
            idx.append(slice(draw(st.integers(0, n - 1)), None, draw(st.sampled_from([1, 2, -1]))))
        elif kind == "array":
            idx.append(np.array(draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=3))))
        else:
            idx.append(slice(None))
    return shape, tuple(idx), draw(st.integers(0, 99))


@SETTINGS
@given(index_problems())
def test_gather_and_scatter_from_indexing(problem):
    jax.config.update("jax_enable_x64", True)
    try:
        shape, idx, seed = problem
        (x,) = arrays(seed, shape)
        same_gradients(lambda x: x[idx], x)  # gather
        got = jax.eval_shape(lambda x: x[idx], x)
        (u,) = arrays(seed + 1, got.shape)
        same_gradients(lambda x, u: x.at[idx].add(u), x, u)  # scatter-add
        if all(isinstance(i, (int, slice)) for i in idx):  # unique positions: a defined set
            same_gradients(lambda x, u: x.at[idx].set(u * 2.0), x, u)
    finally:
        jax.config.update("jax_enable_x64", False)


@st.composite
def window_problems(draw):
    nd = draw(st.integers(1, 3))
    window = [draw(st.integers(1, 3)) for _ in range(nd)]
    shape = [draw(st.integers(w, w + 3)) for w in window]
    strides = [draw(st.integers(1, 3)) for _ in range(nd)]
    padding = [(draw(st.integers(0, 1)), draw(st.integers(0, 1))) for _ in range(nd)]
    return (
        shape,
        window,
        strides,
        padding,
        draw(st.sampled_from(["max", "sum", "min"])),
        draw(st.integers(0, 99)),
    )


@SETTINGS
@given(window_problems())
def test_reduce_window(problem):
    jax.config.update("jax_enable_x64", True)
    try:
        shape, window, strides, padding, kind, seed = problem
        rng = np.random.default_rng(seed)
        x = jnp.asarray(rng.permutation(np.prod(shape)).reshape(shape) / 7.0)  # no ties
        init, op = {"max": (-jnp.inf, lax.max), "min": (jnp.inf, lax.min), "sum": (0.0, lax.add)}[
            kind
        ]
        same_gradients(lambda x: lax.reduce_window(x, init, op, window, strides, padding), x)
    finally:
        jax.config.update("jax_enable_x64", False)


# ---- every parameter a rule accepts: drawn, or refused with a clear error ---------------------
FEW = settings(
    max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def in_x64(test):
    """Run the test body with jax_enable_x64 (hypothesis calls it many times: no fixture)."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        with jax.enable_x64(True):
            return test(*args, **kwargs)

    return run


@pytest.mark.parametrize("name", sorted(g.name for g in GATES.values()))
def test_every_rule_declares_the_parameters_it_handles(name):
    """primitive_gate(params=..., only=...): the parameters of every case are declared, and an
    undeclared one, or a value outside `only`, raises a GateError naming rule, parameter and
    value (a newer JAX's parameter never silently changes a gradient)."""
    gate = next(g for g in GATES.values() if g.name == name)
    assert gate.params is not None, f"{name}: declare params=/only= in its primitive_gate"
    handles, only = gate.params
    case = gate.cases(np.random.default_rng(0), "float32")[0]
    assert set(case.kwargs) <= set(handles) | set(only), (name, set(case.kwargs))
    with pytest.raises(fnn.GateError, match=rf"rule '{re.escape(name)}'.*not_a_parameter=3"):
        gate.forward(*case.args, **case.kwargs, not_a_parameter=3)
    for key in only:
        with pytest.raises(fnn.GateError, match=rf"rule '{re.escape(name)}'.*{key}='odd'"):
            gate.forward(*case.args, **{**case.kwargs, key: "odd"})


def test_unhandled_parameter_stops_fnn_grad():
    """scatter with an update function (lax.scatter_apply): JAX has no rule, fnn's scatter rule
    is for plain writes: fnn.grad raises, naming the rule and the parameter."""
    dnums = lax.ScatterDimensionNumbers(
        update_window_dims=(), inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0,)
    )
    f = lambda x: jnp.sum(lax.scatter_apply(x, jnp.array([[1]]), jnp.sin, dnums, update_shape=(1,)))
    with pytest.raises(fnn.GateError, match="rule 'lax.scatter' does not handle update_jaxpr="):
        fnn.grad(f)(jnp.ones(3))


@FEW
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.data())
@in_x64
def test_reshape_with_dimensions(a, b, c, data):
    """lax.reshape(x, new_sizes, dimensions): x's axes permuted by `dimensions`, then read in
    row-major order into the new shape."""
    dims = tuple(data.draw(st.permutations(range(3))))
    (x,) = arrays(a * 7 + b * 3 + c, (a, b, c))
    sizes = data.draw(st.sampled_from([(a * b * c,), (c, a * b), (b * c, a), (a, b, c)]))
    same_gradients(lambda x: lax.reshape(x, sizes, dimensions=dims), x)


PRECISIONS = [
    None,
    lax.Precision.DEFAULT,
    lax.Precision.HIGHEST,
    (lax.Precision.HIGH, lax.Precision.DEFAULT),
    "float32",
    "F64_F64_F64",
]


@FEW
@given(
    dot_general_problems(),
    st.sampled_from(PRECISIONS),
    st.sampled_from([None, np.float64, np.float32]),
)
@in_x64
def test_dot_general_precision_and_output_type(problem, precision, preferred):
    x_shape, y_shape, dims, seed = problem
    x, y = arrays(seed, x_shape, y_shape)
    if preferred is np.float32:  # a float32 product accumulated as asked
        x, y = x.astype(np.float32), y.astype(np.float32)
    same_gradients(
        lambda x, y: lax.dot_general(
            x, y, dims, precision=precision, preferred_element_type=preferred
        ),
        x,
        y,
        rtol=1e-9 if preferred is not np.float32 else 1e-5,
    )


@FEW
@given(
    conv_problems(),
    st.sampled_from([None, lax.Precision.HIGHEST]),
    st.sampled_from([None, np.float64]),
)
@in_x64
def test_conv_precision_and_output_type(p, precision, preferred):
    x, w = arrays(p["seed"], p["lhs"], p["rhs"])
    conv = lambda x, w: lax.conv_general_dilated(
        x,
        w,
        p["strides"],
        p["padding"],
        lhs_dilation=p["lhs_dilation"],
        rhs_dilation=p["rhs_dilation"],
        dimension_numbers=p["dims"],
        feature_group_count=p["groups"],
        batch_group_count=p["batch_groups"],
        precision=precision,
        preferred_element_type=preferred,
    )
    try:
        jax.eval_shape(conv, x, w)
    except (TypeError, ValueError):
        return
    same_gradients(conv, x, w)


@FEW
@given(
    st.sampled_from(["clip", "fill", "promise_in_bounds"]),
    st.booleans(),
    st.booleans(),
    st.lists(st.integers(-6, 6), min_size=1, max_size=5),
    st.integers(0, 99),
)
@in_x64
def test_gather_and_scatter_modes_and_promises(mode, sorted_, unique, rows, seed):
    """mode (clip, fill: out-of-range rows dropped, promise_in_bounds), indices_are_sorted and
    unique_indices, each as JAX's rules read them (promises only where they hold)."""
    if mode == "promise_in_bounds":
        rows = [r % 5 for r in rows]
    if sorted_:
        rows = sorted(rows)
    if unique:
        rows = list(dict.fromkeys(rows))
    idx = jnp.asarray(rows)[:, None]
    (x,) = arrays(seed, (5, 3))
    (u,) = arrays(seed + 1, (len(rows), 3))
    dnums = lax.GatherDimensionNumbers(
        offset_dims=(1,), collapsed_slice_dims=(0,), start_index_map=(0,)
    )
    kw = dict(mode=mode, indices_are_sorted=sorted_, unique_indices=unique)
    same_gradients(lambda x: lax.gather(x, idx, dnums, (1, 3), fill_value=0.0, **kw), x)
    sdnums = lax.ScatterDimensionNumbers(
        update_window_dims=(1,), inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0,)
    )
    same_gradients(lambda x, u: lax.scatter_add(x, idx, u, sdnums, **kw), x, u)
    same_gradients(lambda x, u: lax.scatter(x, idx, u * 2.0, sdnums, **kw), x, u)


@FEW
@given(st.integers(0, 1), st.booleans(), st.integers(1, 2), st.integers(0, 99))
@in_x64
def test_sort_stability_and_keys(dimension, stable, num_keys, seed):
    """is_stable, num_keys and dimension, with ties in the keys (which JAX's rule resolves the
    same way: the permutation sorted along with the operands)."""
    rng = np.random.default_rng(seed)
    keys = jnp.asarray(rng.integers(0, 3, (4, 5)).astype(float))  # many ties
    second = jnp.asarray(rng.integers(0, 2, (4, 5)).astype(float))
    (vals,) = arrays(seed, (4, 5))
    same_gradients(
        lambda k, s, v: lax.sort(
            (k, s, v), dimension=dimension, is_stable=stable, num_keys=num_keys
        ),
        keys,
        second,
        vals,
    )


@FEW
@given(
    st.sampled_from(["cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"]),
    st.integers(0, 1),
    st.booleans(),
    st.integers(0, 99),
)
@in_x64
def test_cumulative_axis_and_reverse(kind, axis, reverse, seed):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.integers(-2, 3, (3, 5)).astype(float))  # ties, zeros
    same_gradients(lambda x: getattr(lax, kind)(x, axis=axis, reverse=reverse), x)


@FEW
@given(st.integers(1, 2), st.data())
@in_x64
def test_reduce_window_sum_with_dilations(nd, data):
    """reduce_window_sum's base and window dilation and padding (JAX has no rule for a
    dilated window max/min: their dilated cases are checked numerically in test_primitives)."""
    window = [data.draw(st.integers(1, 3)) for _ in range(nd)]
    shape = [data.draw(st.integers(w + 1, w + 4)) for w in window]
    strides = [data.draw(st.integers(1, 2)) for _ in range(nd)]
    base = [data.draw(st.integers(1, 2)) for _ in range(nd)]
    wdil = [data.draw(st.integers(1, 2)) for _ in range(nd)]
    padding = [(data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2))) for _ in range(nd)]
    (x,) = arrays(sum(shape), shape)
    f = lambda x: lax.reduce_window(
        x, 0.0, lax.add, window, strides, padding, base_dilation=base, window_dilation=wdil
    )
    try:
        jax.eval_shape(f, x)
    except (TypeError, ValueError):
        return  # an empty window for these sizes
    same_gradients(f, x)


@FEW
@given(
    st.sampled_from([lax.RoundingMethod.AWAY_FROM_ZERO, lax.RoundingMethod.TO_NEAREST_EVEN]),
    st.sampled_from([np.float32, np.float16, np.float64]),
    st.sampled_from([None, np.float64]),
)
@in_x64
def test_elementwise_parameters(rounding, dtype, out_dtype):
    """round's rounding_method, convert_element_type's new_dtype, mul's out_dtype."""
    (x,) = arrays(3, (2, 3))
    same_gradients(lambda x: lax.round(x * 2.0, rounding) + x, x)
    same_gradients(
        lambda x: lax.convert_element_type(x, dtype).astype(np.float64) * x,
        x,
        rtol=1e-3 if dtype == np.float16 else 1e-6,
    )
    a = x.astype(np.float32)
    same_gradients(lambda a, b: lax.mul(a, b, out_dtype=out_dtype), a, a * 2.0, rtol=1e-6)


@FEW
@given(
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.integers(1, 4),
    st.integers(1, 4),
    st.sampled_from([(), (2,)]),
    st.integers(0, 99),
)
@in_x64
def test_triangular_solve_flags(left, lower, transpose, unit, m, k, batch, seed):
    """triangular_solve's left_side, lower, transpose_a, unit_diagonal, with b tall or wide and
    leading batch axes (the rule groups its products by the shapes, as JAX's)."""
    (a,) = arrays(seed, batch + (m, m))
    a = a * 0.3 + 2.0 * jnp.eye(m)
    (b,) = arrays(seed + 1, batch + ((m, k) if left else (k, m)))
    same_gradients(
        lambda a, b: lax.linalg.triangular_solve(
            a, b, left_side=left, lower=lower, transpose_a=transpose, unit_diagonal=unit
        ),
        a,
        b,
    )


@FEW
@given(
    st.integers(1, 4),
    st.integers(1, 4),
    st.sampled_from(["qr", "qr complete", "svd", "svdvals", "lu"]),
    st.integers(0, 99),
)
@in_x64
def test_factorizations_of_any_shape(m, n, kind, seed):
    """qr (reduced, complete), svd, svdvals and lu of tall, square and wide matrices."""
    (x,) = arrays(seed, (m, n))
    f = {
        "qr": lambda x: jnp.linalg.qr(x),
        "qr complete": lambda x: jnp.linalg.qr(x, mode="complete"),
        "svd": lambda x: jnp.linalg.svd(x, full_matrices=False),
        "svdvals": jnp.linalg.svdvals,
        "lu": lambda x: lax.linalg.lu(x)[0],
    }[kind]
    same_gradients(f, x, rtol=1e-8)
