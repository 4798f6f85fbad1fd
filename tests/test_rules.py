"""Rule overrides (fnn.grad(..., rules=), fnn.rules, fnn.only) and the rule library
(fnn.rulebook): scoping under exceptions, jit and vmap, layers, loops; every library rule
against its declared formula; the gates they are for."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import nn, ops, rulebook

X = jnp.array([-1.5, -0.3, 0.4, 2.0])


def binarized(x):
    return jnp.sum(ops.sign(x) * jnp.arange(1.0, 5.0))


def test_override_for_one_call_and_the_gate_is_unchanged_after():
    np.testing.assert_array_equal(fnn.grad(binarized)(X), 0.0)  # the exact gradient
    g = fnn.grad(binarized, rules={"sign": rulebook.straight_through})(X)
    np.testing.assert_allclose(g, [1, 2, 3, 4])
    g = fnn.grad(binarized, rules={"sign": rulebook.clipped_straight_through})(X)
    np.testing.assert_allclose(g, [0, 2, 3, 0])
    np.testing.assert_array_equal(fnn.grad(binarized)(X), 0.0)
    # keyed by the gate itself, and an override of a JAX primitive's rule
    np.testing.assert_allclose(
        fnn.grad(binarized, rules={ops.sign: rulebook.straight_through})(X), [1, 2, 3, 4]
    )
    f = lambda x: jnp.sum(jnp.round(x) * 2.0)
    np.testing.assert_allclose(fnn.grad(f, rules={"lax.round": lambda g, x: (g,)})(X), 2.0)


def test_a_block_restores_the_rules_also_after_an_exception():
    with fnn.rules(sign=rulebook.straight_through):
        np.testing.assert_allclose(fnn.grad(binarized)(X), [1, 2, 3, 4])
        with fnn.rules(sign=rulebook.clipped_straight_through):  # nested: the inner one wins
            np.testing.assert_allclose(fnn.grad(binarized)(X), [0, 2, 3, 0])
        np.testing.assert_allclose(fnn.grad(binarized)(X), [1, 2, 3, 4])
    with pytest.raises(RuntimeError, match="boom"):
        with fnn.rules(sign=rulebook.straight_through):
            raise RuntimeError("boom")
    np.testing.assert_array_equal(fnn.grad(binarized)(X), 0.0)


def test_rules_are_fixed_when_traced_and_part_of_the_jit_cache_key():
    step = jax.jit(fnn.grad(binarized))
    with fnn.rules(sign=rulebook.straight_through):
        np.testing.assert_allclose(step(X), [1, 2, 3, 4])
    np.testing.assert_array_equal(step(X), 0.0)  # traced again outside: no stale rule
    ste = jax.jit(fnn.grad(binarized, rules={"sign": rulebook.straight_through}))
    np.testing.assert_allclose(ste(X), [1, 2, 3, 4])
    batch = jnp.stack([X, -X])
    per_example = jax.vmap(fnn.grad(binarized, rules={"sign": rulebook.straight_through}))(batch)
    np.testing.assert_allclose(per_example, [[1, 2, 3, 4]] * 2)


def test_an_override_limited_to_some_layers():
    model = nn.mlp((4, 4), num_classes=2)
    params, state, _ = model.init(jax.random.PRNGKey(0), (3,))
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 3))
    loss = lambda p: jnp.sum(model.apply(p, state, x)[0] ** 2)
    dead = lambda g, x: (jnp.zeros_like(x),)  # no gradient through this relu
    exact = fnn.grad(loss)(params)
    g = fnn.grad(loss, rules={"relu": fnn.only(dead, "4_relu")})(params)
    assert float(jnp.abs(g["5_dense"]["w"] - exact["5_dense"]["w"]).max()) == 0.0
    for layer in ("1_dense", "3_dense"):  # below the silenced relu: nothing arrives
        np.testing.assert_array_equal(g[layer]["w"], 0.0)
    g = fnn.grad(loss, rules={"relu": fnn.only(dead, "2_relu")})(params)
    np.testing.assert_array_equal(g["1_dense"]["w"], 0.0)
    assert float(jnp.abs(g["3_dense"]["w"] - exact["3_dense"]["w"]).max()) == 0.0
    with pytest.raises(fnn.FnnError, match="path strings"):
        fnn.only(dead)


def test_overrides_apply_inside_loops_and_checkpoints():
    w = jnp.eye(3) * 0.5

    def rnn(w):
        h, _ = jax.lax.scan(
            lambda h, x: (ops.sign(h @ w + x) * 0.5 + h, None), jnp.ones(3), jnp.ones((4, 3))
        )
        return jnp.sum(h)

    ste = {"sign": rulebook.straight_through}
    assert float(jnp.abs(fnn.grad(rnn, rules=ste)(w)).sum()) > 0
    np.testing.assert_array_equal(fnn.grad(rnn)(w), 0.0)

    # the override's result is that of the same computation unrolled by hand
    def unrolled(w):
        h = jnp.ones(3)
        for _ in range(4):
            h = ops.sign(h @ w + 1.0) * 0.5 + h
        return jnp.sum(h)

    np.testing.assert_allclose(
        fnn.grad(rnn, rules=ste)(w), fnn.grad(unrolled, rules=ste)(w), rtol=1e-6
    )
    ckpt = lambda w: jnp.sum(jax.checkpoint(lambda a: ops.sign(a) * a)(w))
    np.testing.assert_allclose(fnn.grad(ckpt, rules=ste)(w), np.sign(w) + w)


def test_an_override_follows_the_vjp_contract():
    bad = lambda g, x: (jnp.sum(g),)
    with pytest.raises(fnn.VJPContractError, match="gate 'sign'"):
        fnn.grad(binarized, rules={"sign": bad})(X)
    with pytest.raises(TypeError, match="rule"):
        fnn.grad(binarized, rules={"sign": 3})(X)


@pytest.mark.parametrize("name", sorted(rulebook.RULES))
def test_library_rules_follow_their_declared_formula(name, x64):
    made = rulebook.RULES[name]
    rules = [made] if isinstance(made, fnn.Rule) else [made(1.0), made(2.5)]
    x = jnp.linspace(-2.3, 2.1, 11)
    g = jnp.asarray(np.random.default_rng(0).standard_normal(11))
    for rule in rules:
        assert rule.kind == "surrogate" and rule.formula and rule.paper
        mine = rule(g, x, out=None)
        ref = jax.vjp(rule.reference, x)[1](g)
        np.testing.assert_allclose(mine[0], ref[0], rtol=1e-10, atol=1e-12, err_msg=rule.name)


def test_spike_with_surrogate_gradients_and_thresholds(x64):
    x = jnp.array([-1.0, 0.1, 0.5, 2.0])
    f = lambda x: jnp.sum(ops.spike(x, threshold=0.5) * jnp.arange(1.0, 5.0))
    np.testing.assert_array_equal(fnn.grad(f)(x), 0.0)
    g = fnn.grad(f, rules={"spike": rulebook.fast_sigmoid(2.0)})(x)
    u = x - 0.5
    np.testing.assert_allclose(g, np.arange(1, 5) / (1 + 2 * np.abs(u)) ** 2)
    g = fnn.grad(f, rules={"spike": rulebook.triangle(1.0)})(x)
    np.testing.assert_allclose(g, np.arange(1, 5) * np.maximum(0, 1 - np.abs(u)))


def test_feedback_alignment_uses_the_fixed_matrix(x64):
    model = nn.mlp((5,), num_classes=3)
    params, state, _ = model.init(jax.random.PRNGKey(0), (4,))
    x = jax.random.normal(jax.random.PRNGKey(1), (7, 4))
    feedback = rulebook.feedback_matrices(jax.random.PRNGKey(2), params)
    assert set(feedback) == {"1_dense", "3_dense"}
    assert feedback["3_dense"].shape == params["3_dense"]["w"].shape
    loss = lambda p: jnp.sum(model.apply(p, state, x)[0] ** 2)
    exact = fnn.grad(loss)(params)
    fa = fnn.grad(loss, rules={"affine": rulebook.feedback_alignment(feedback)})(params)
    # the top layer's weights get the exact gradient; the layer below learns from B, not w
    np.testing.assert_allclose(fa["3_dense"]["w"], exact["3_dense"]["w"], rtol=1e-12)
    assert float(jnp.abs(fa["1_dense"]["w"] - exact["1_dense"]["w"]).max()) > 1e-3
    # by hand: the error sent down through B instead of w
    h_pre = x @ params["1_dense"]["w"] + params["1_dense"]["b"]
    out = jax.nn.relu(h_pre) @ params["3_dense"]["w"] + params["3_dense"]["b"]
    delta = (2 * out) @ feedback["3_dense"].T * (h_pre > 0)
    np.testing.assert_allclose(fa["1_dense"]["w"], x.T @ delta, rtol=1e-5)  # float32 params


def test_clipping_and_noise_inside_the_backward(x64):
    f = lambda x: jnp.sum(ops.tanh(x) * 100.0)
    g = fnn.grad(f, rules={"tanh": rulebook.clip_backward(1.0)})(X)
    np.testing.assert_allclose(jnp.linalg.norm(g), 1.0, rtol=1e-6)
    exact = fnn.grad(f)(X)
    np.testing.assert_allclose(g, exact / jnp.linalg.norm(exact), rtol=1e-6)
    key = jax.random.PRNGKey(0)
    noisy = fnn.grad(f, rules={"tanh": rulebook.noise_backward(key, 0.1)})(X)
    again = fnn.grad(f, rules={"tanh": rulebook.noise_backward(key, 0.1)})(X)
    np.testing.assert_array_equal(noisy, again)  # the noise comes from the explicit key
    assert 0 < float(jnp.abs(noisy - exact).max()) < 1.0


def test_checks_know_surrogate_from_exact_rules():
    f = lambda x: jnp.sum(ops.sign(x) * jnp.arange(1.0, 5.0)) + jnp.sum(jnp.tanh(x))
    report = fnn.check_grads(f, X, rules={"sign": rulebook.straight_through})
    assert report.ok and report["arg0"].verdict == "surrogate"
    assert report.surrogates == ["straight_through (sign)"]
    assert 0 < report["arg0"].custom_vs_builtin.cos < 1  # how far from the exact gradient
    # an override declared nowhere as a surrogate is held to the exact gradient
    assert (
        fnn.check_grads(f, X, rules={"sign": lambda g, x: (g,)})["arg0"].verdict == "custom wrong"
    )
    # locate_divergence: the surrogate follows its formula and is listed, not failed
    spike = lambda x: jnp.sum(ops.spike(x) * jnp.arange(1.0, 5.0)) + jnp.sum(jnp.tanh(x))
    found = fnn.locate_divergence(spike, X, rules={"spike": rulebook.arctan(2.0)})
    assert found.ok and len(found.surrogates) == 1
    assert found.surrogates[0].follows and found.surrogates[0].rule == "arctan(slope=2)"
    assert "surrogate rule arctan(slope=2)" in str(found)
    # a surrogate that breaks its own formula is caught
    liar = fnn.Rule(
        lambda g, x, **k: (3.0 * g,), "liar", reference=lambda x, **k: x, formula="dx = g"
    )
    bad = fnn.locate_divergence(spike, X, rules={"spike": liar})
    assert not bad.ok and "does not follow its declared formula" in str(bad[0])
    # a wrong exact rule is still caught
    wrong = fnn.Rule(lambda g, x, **k: (2.0 * g * (1 - jnp.tanh(x) ** 2),), "double", kind="exact")
    assert not fnn.locate_divergence(spike, X, rules={"tanh": wrong}).ok
    assert not fnn.check_grads(spike, X, rules={"tanh": wrong}).ok


def test_a_misspelled_override_key_is_an_error_naming_the_closest(x64):
    f = lambda x: jnp.sum(jnp.tanh(x))
    rule = rulebook.clip_backward(1.0)
    with pytest.raises(fnn.OverrideError, match=r"'tanhh' \(did you mean 'tanh'"):
        fnn.grad(f, rules={"tanhh": rule})(X)
    with fnn.rules(Tanh=rule):
        with pytest.raises(fnn.OverrideError, match=r"'Tanh' \(did you mean 'tanh'"):
            fnn.grad(f)(X)
    # a user's own gate is known by the function that applies it
    spike = fnn.defgate(lambda x: (jnp.sign(x), x), name="my_spike")
    spike.defvjp(lambda g, x: (g,))
    np.testing.assert_allclose(
        fnn.grad(lambda x: jnp.sum(spike(x)), rules={"my_spike": lambda g, x, out: (2.0 * g,)})(X),
        2.0,
    )


def test_every_rule_of_the_library_is_checked_and_known_to_rule_specs():
    """The library is declared once (rulebook.LIBRARY): every rule the rulebook defines is in it,
    check_library judges each entry, and --rule takes it or refuses it saying why."""
    import inspect

    from fnn.check.rules import check_library, library_cases
    from fnn.train.rule_specs import RuleSpecError, make_rules

    listed = {id(entry.rule) for entry in rulebook.LIBRARY}
    for name, value in vars(rulebook).items():
        makes_a_rule = (
            inspect.isfunction(value)
            and value.__module__ == rulebook.__name__
            and inspect.signature(value).return_annotation
            in ("Rule", "FeedbackAlignment", fnn.Rule)
        )
        if not name.startswith("_") and (isinstance(value, fnn.Rule) or makes_a_rule):
            assert id(value) in listed, f"rulebook.{name} is not in rulebook.LIBRARY"
    rows = check_library()
    assert len(rows) == len(library_cases())
    judged = {row.rule: row for row in rows}
    params = {"1_dense": {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)}}
    for entry in rulebook.LIBRARY:
        cases = entry.cases(np.random.default_rng(0))
        assert cases, f"{entry.name} declares no case to check it on"
        for rule, *_ in cases:
            assert judged[rule.name].ok, judged[rule.name]
        gate = entry.gates[0] if entry.only else "tanh"
        spec = f"{gate}={entry.name}" + (
            ":" + ",".join(f"{o}=1" for o in entry.options) if entry.options else ""
        )
        if entry.refused:
            with pytest.raises(RuleSpecError, match=f"{entry.name} cannot be used in a --rule"):
                make_rules((spec,), params)
        else:
            assert make_rules((spec,), params)[gate] is not None


def test_straight_through_trains_through_quantize():
    """quantize's exact gradient is 0 almost everywhere; straight_through passes g on."""
    x = jnp.array([-0.9, -0.2, 0.3, 0.8])
    f = lambda x: jnp.sum(ops.quantize(x, bits=2) * jnp.arange(1.0, 5.0))
    np.testing.assert_array_equal(fnn.grad(f)(x), np.zeros(4))
    np.testing.assert_array_equal(
        fnn.grad(f, rules={"quantize": rulebook.straight_through})(x), [1.0, 2.0, 3.0, 4.0]
    )
