"""hypothesis draws the parameters of the structured primitives: dot_general's contracting and
batch dimensions, conv_general_dilated's strides, padding, dilations, groups and layouts,
gather and scatter from random indexing expressions, and reduce_window's windows. fnn's rule is
compared with jax.vjp of the same program in float64."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax import lax

import fnn

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def same_gradients(f, *args, rtol=1e-9):
    """fnn.vjp and jax.vjp of f at args, with one random cotangent: equal (relative to scale)."""
    out, pull = jax.vjp(f, *args)
    ct = jax.tree_util.tree_map(
        lambda o: jnp.asarray(np.random.default_rng(0).standard_normal(o.shape), o.dtype), out)
    ref = pull(ct)
    mine = fnn.vjp(f, *args)[1](ct)
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
    return x_shape, y_shape, ((tuple(xc), tuple(yc)), (tuple(xb), tuple(yb))), draw(st.integers(0, 99))


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
    spec = "".join("DHW"[3 - nd:])
    dims = (f"N{spec}C", f"{spec}IO", f"N{spec}C") if channels_last else (
        f"NC{spec}", f"OI{spec}", f"NC{spec}")
    lhs = [n] + spatial + [cin] if channels_last else [n, cin] + spatial
    rhs = window + [cin // groups, cout] if channels_last else [cout, cin // groups] + window
    return dict(lhs=lhs, rhs=rhs, strides=strides, padding=padding, lhs_dilation=lhs_dil,
                rhs_dilation=rhs_dil, dims=dims, groups=groups, batch_groups=batch_groups,
                seed=draw(st.integers(0, 99)))


@SETTINGS
@given(conv_problems())
def test_conv_general_dilated(p):
    jax.config.update("jax_enable_x64", True)
    try:
        x, w = arrays(p["seed"], p["lhs"], p["rhs"])
        conv = lambda x, w: lax.conv_general_dilated(
            x, w, p["strides"], p["padding"], lhs_dilation=p["lhs_dilation"],
            rhs_dilation=p["rhs_dilation"], dimension_numbers=p["dims"],
            feature_group_count=p["groups"], batch_group_count=p["batch_groups"])
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
    return shape, window, strides, padding, draw(st.sampled_from(["max", "sum", "min"])), \
        draw(st.integers(0, 99))


@SETTINGS
@given(window_problems())
def test_reduce_window(problem):
    jax.config.update("jax_enable_x64", True)
    try:
        shape, window, strides, padding, kind, seed = problem
        rng = np.random.default_rng(seed)
        x = jnp.asarray(rng.permutation(np.prod(shape)).reshape(shape) / 7.0)  # no ties
        init, op = {"max": (-jnp.inf, lax.max), "min": (jnp.inf, lax.min),
                    "sum": (0.0, lax.add)}[kind]
        same_gradients(lambda x: lax.reduce_window(x, init, op, window, strides, padding), x)
    finally:
        jax.config.update("jax_enable_x64", False)
