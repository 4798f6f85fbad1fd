"""The parameters peers' test suites use, on fnn's gates: cross-entropy label smoothing,
ignore_index, reductions, class-probability targets, (B, T, V) logits; binary cross-entropy
with logits; softmax/log_softmax/logsumexp `where=` masks and logsumexp `b=`/`return_sign`.
Each against optax / jax.nn, values, gradients (fnn.grad) and second derivatives."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn import ops


def agree(mine, ref, *args):
    """Values, fnn.grad vs jax.grad, and jax.grad(sum of fnn.grad) vs JAX's (second order)."""
    np.testing.assert_allclose(mine(*args), ref(*args), rtol=1e-10)
    for a, b in zip(fnn.grad(mine)(*args).reshape(-1), jax.grad(ref)(*args).reshape(-1)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    second = lambda grad, f: jax.grad(lambda x: jnp.sum(jnp.sin(grad(f)(x))))
    np.testing.assert_allclose(
        second(fnn.grad, mine)(*args), second(jax.grad, ref)(*args), rtol=1e-8, atol=1e-12
    )


@pytest.fixture
def data(x64):
    rng = np.random.default_rng(0)
    return rng, jnp.asarray(rng.standard_normal((4, 6)))


def test_cross_entropy_options(data):
    rng, x = data
    y = jnp.asarray(rng.integers(0, 6, 4))
    onehot = jax.nn.one_hot(y, 6)
    agree(
        lambda x: ops.softmax_cross_entropy(x, y),
        lambda x: optax.softmax_cross_entropy_with_integer_labels(x, y).mean(),
        x,
    )
    agree(
        lambda x: ops.softmax_cross_entropy(x, y, label_smoothing=0.2),
        lambda x: optax.softmax_cross_entropy(x, optax.smooth_labels(onehot, 0.2)).mean(),
        x,
    )
    agree(
        lambda x: ops.softmax_cross_entropy(x, y, reduction="sum"),
        lambda x: optax.softmax_cross_entropy_with_integer_labels(x, y).sum(),
        x,
    )
    agree(
        lambda x: jnp.sum(ops.softmax_cross_entropy(x, y, reduction="none") * jnp.arange(4.0)),
        lambda x: jnp.sum(optax.softmax_cross_entropy_with_integer_labels(x, y) * jnp.arange(4.0)),
        x,
    )
    probs = jnp.asarray(rng.dirichlet(np.ones(6), 4))
    agree(
        lambda x: ops.softmax_cross_entropy(x, probs),
        lambda x: optax.softmax_cross_entropy(x, probs).mean(),
        x,
    )
    # gradients for the probability targets too
    np.testing.assert_allclose(
        fnn.grad(ops.softmax_cross_entropy, argnums=1)(x, probs),
        jax.grad(lambda p: optax.softmax_cross_entropy(x, p).mean())(probs),
        rtol=1e-10,
    )


def test_cross_entropy_on_sequences_with_padding(data):
    rng, _ = data
    logits = jnp.asarray(rng.standard_normal((2, 5, 7)))
    tokens = rng.integers(0, 7, (2, 5))
    tokens[1, 2:] = -100
    tokens = jnp.asarray(tokens)
    keep = tokens != -100

    def ref(z):
        per = optax.softmax_cross_entropy_with_integer_labels(z, jnp.where(keep, tokens, 0))
        return jnp.sum(per * keep) / jnp.sum(keep)

    agree(lambda z: ops.softmax_cross_entropy(z, tokens, ignore_index=-100), ref, logits)
    assert (
        float(
            jnp.abs(
                fnn.grad(lambda z: ops.softmax_cross_entropy(z, tokens, ignore_index=-100))(logits)[
                    1, 2:
                ]
            ).max()
        )
        == 0.0
    )  # padding: no gradient
    with pytest.raises(fnn.GateError, match=r"\[0, 7\).*ignore_index -100"):
        ops.softmax_cross_entropy(logits, jnp.where(keep, tokens, 9), ignore_index=-100)


def test_binary_cross_entropy_with_logits(data):
    rng, x = data
    t = jnp.asarray(rng.uniform(0, 1, x.shape))
    agree(
        lambda z: ops.binary_cross_entropy_with_logits(z, t),
        lambda z: optax.sigmoid_binary_cross_entropy(z, t).mean(),
        x * 4,
    )
    agree(
        lambda z: jnp.sum(ops.binary_cross_entropy_with_logits(z, t, reduction="none") ** 2),
        lambda z: jnp.sum(optax.sigmoid_binary_cross_entropy(z, t) ** 2),
        x,
    )
    big = jnp.asarray([1e4, -1e4], jnp.float32)
    assert bool(
        jnp.all(
            jnp.isfinite(
                fnn.grad(
                    lambda z: ops.binary_cross_entropy_with_logits(
                        z, jnp.asarray([0.0, 1.0], jnp.float32)
                    )
                )(big)
            )
        )
    )


def test_masks_and_weights_of_the_softmax_family(data):
    rng, x = data
    mask = jnp.asarray(rng.uniform(size=x.shape) > 0.3).at[:, 0].set(True)
    c = jnp.arange(6.0)
    agree(
        lambda x: jnp.sum(ops.softmax(x, where=mask) * c),
        lambda x: jnp.sum(jax.nn.softmax(x, where=mask) * c),
        x,
    )
    agree(
        lambda x: jnp.sum(jnp.where(mask, ops.log_softmax(x, where=mask), 0) * c),
        lambda x: jnp.sum(jnp.where(mask, jax.nn.log_softmax(x, where=mask), 0) * c),
        x,
    )
    assert bool(jnp.all(jnp.isneginf(ops.log_softmax(x, where=mask)[~mask])))
    agree(
        lambda x: jnp.sum(ops.logsumexp(x, axis=1, where=mask)),
        lambda x: jnp.sum(jax.nn.logsumexp(x, axis=1, where=mask)),
        x,
    )
    b = jnp.asarray(rng.uniform(0.5, 2.0, x.shape))
    agree(
        lambda x: jnp.sum(ops.logsumexp(x, b, axis=1)),
        lambda x: jnp.sum(jax.nn.logsumexp(x, axis=1, b=b)),
        x,
    )
    signed = jnp.asarray([1.0, -2.0, 0.5, 0.25, -0.1, 3.0])
    out, sign = ops.logsumexp(x, b=signed, axis=1, return_sign=True)
    ref_out, ref_sign = jax.nn.logsumexp(x, axis=1, b=signed, return_sign=True)
    np.testing.assert_allclose(out, ref_out, rtol=1e-12)
    np.testing.assert_array_equal(sign, ref_sign)
    agree(
        lambda x: jnp.sum(ops.logsumexp(x, b=signed, axis=1, return_sign=True)[0]),
        lambda x: jnp.sum(jax.nn.logsumexp(x, axis=1, b=signed, return_sign=True)[0]),
        x,
    )
    # d/db, the weights' gradient
    np.testing.assert_allclose(
        fnn.grad(lambda b: jnp.sum(ops.logsumexp(x, b, axis=1)))(b),
        jax.grad(lambda b: jnp.sum(jax.nn.logsumexp(x, axis=1, b=b)))(b),
        rtol=1e-10,
    )


def test_array_inputs_may_be_passed_by_name():
    x = jnp.ones((2, 3))
    mask = jnp.array([[True, False, True]] * 2)
    np.testing.assert_allclose(ops.softmax(x, where=mask), ops.softmax(x, mask))
    with pytest.raises(fnn.GateError, match="softmax.*unexpected|softmax.*argument"):
        ops.softmax(x, mask, where=mask)
