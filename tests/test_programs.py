"""Real programs that reach the primitives of issue 23, differentiated by fnn.grad and by
jax.grad: equal to 1e-10 (relative, float64), eagerly and under jit.

    graph attention     softmax over each node's neighbours with jax.ops.segment_max/sum
                        (scatter-max, scatter-add)
    von Mises mixture   log-likelihood with log I0(kappa) = log i0e(kappa) + kappa (bessel_i0e,
                        and i1e in its derivative)
    gamma shape         a learned-shape Gamma reparameterisation, jax.random.gamma with a
                        differentiated shape (random_gamma: the implicit gradient)
    beta, dirichlet     sample losses (random_gamma in log space)
    negative binomial   lgamma likelihood with a Gamma prior's entropy (digamma)
    censored gamma      survival log-likelihood log Q(a, t / theta) (igammac in a and x)
    Zipf                exponent fitted through the Hurwitz zeta normaliser
                        (jax.scipy.special.zeta, a custom_jvp function)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn.check.gates import FAST_COMPILE
from fnn.check.numeric import rel_error

KEY = 7  # one PRNG seed for every sampled program


def graph_attention(params, h, src, dst, n):
    """One GAT layer (Velickovic et al. 2018): e_ij = leaky_relu(a . [W h_i, W h_j]) over the
    edges j -> i, softmax over each node's incoming edges, then the weighted sum of W h_j."""
    wh = h @ params["w"]
    f = wh.shape[1]
    e = jax.nn.leaky_relu(wh[dst] @ params["a"][:f] + wh[src] @ params["a"][f:], 0.2)
    e = e - jax.ops.segment_max(e, dst, num_segments=n)[dst]
    w = jnp.exp(e)
    alpha = w / jax.ops.segment_sum(w, dst, num_segments=n)[dst]
    out = jax.ops.segment_sum(alpha[:, None] * wh[src], dst, num_segments=n)
    return jnp.sum(jnp.tanh(out) * params["target"])


def von_mises_mixture(params, x):
    """-sum_n log sum_k w_k exp(kappa_k cos(x_n - mu_k)) / (2 pi I0(kappa_k))."""
    kappa = jnp.exp(params["log_kappa"])
    log_i0 = jnp.log(jax.lax.bessel_i0e(kappa)) + kappa
    log_w = jax.nn.log_softmax(params["logits"])
    comp = log_w + kappa * jnp.cos(x[:, None] - params["mu"]) - jnp.log(2 * jnp.pi) - log_i0
    return -jnp.sum(jax.nn.logsumexp(comp, axis=1))


def gamma_shape(params, target):
    """E over z ~ Gamma(alpha, beta) of (z - target)^2, by reparameterised samples, with the
    Gamma(2, 1) prior's log density: the shape and the rate learned."""
    alpha, beta = jnp.exp(params["log_alpha"]), jnp.exp(params["log_beta"])
    z = jax.random.gamma(jax.random.PRNGKey(KEY), alpha, (16,) + alpha.shape) / beta
    prior = jnp.sum(jnp.log(alpha) - alpha)
    return jnp.mean((z - target) ** 2) - prior


def beta_dirichlet(params, target):
    """A Beta sample's and a Dirichlet sample's squared error to targets."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(KEY))
    a, b = jnp.exp(params["log_a"]), jnp.exp(params["log_b"])
    p = jax.random.beta(k1, a, b, (8,) + a.shape)
    q = jax.random.dirichlet(k2, jnp.exp(params["log_conc"]), (8,))
    return jnp.mean((p - target) ** 2) + jnp.mean(jnp.log(q) * q)


def negative_binomial(params, k):
    """-log NB(k; r, p) summed, r = softplus(raw) with a Gamma(alpha, 1) prior whose entropy
    alpha + lgamma(alpha) + (1 - alpha) digamma(alpha) is added."""
    r, p = jax.nn.softplus(params["raw_r"]), jax.nn.sigmoid(params["logit_p"])
    loglik = (
        jax.lax.lgamma(k + r)
        - jax.lax.lgamma(k + 1.0)
        - jax.lax.lgamma(r)
        + r * jnp.log1p(-p)
        + k * jnp.log(p)
    )
    alpha = jnp.exp(params["log_alpha"])
    entropy = alpha + jax.lax.lgamma(alpha) + (1 - alpha) * jax.lax.digamma(alpha)
    return -jnp.sum(loglik) - jnp.sum(entropy)


def censored_gamma(params, t, observed):
    """Gamma(a, theta) survival times, some right-censored: log density for the observed,
    log Q(a, t / theta) (igammac) for the censored."""
    a, theta = jnp.exp(params["log_a"]), jnp.exp(params["log_theta"])
    x = t / theta
    logpdf = (a - 1) * jnp.log(x) - x - jax.lax.lgamma(a) - jnp.log(theta)
    logsurv = jnp.log(jax.lax.igammac(a, x))
    return -jnp.sum(jnp.where(observed, logpdf, logsurv))


def zipf(params, counts):
    """-log-likelihood of ranks 1..K under p(k) = k^-s / zeta(s, 1), s = 1 + softplus(raw)."""
    s = 1.0 + jax.nn.softplus(params["raw_s"])
    k = jnp.arange(1.0, counts.shape[0] + 1.0)
    return -jnp.sum(counts * (-s * jnp.log(k) - jnp.log(jax.scipy.special.zeta(s, 1.0))))


def _programs():
    r = np.random.default_rng(0)
    n, f_in, f_out = 6, 4, 3
    src = np.array([0, 1, 2, 3, 4, 5, 0, 2, 4, 1, 3, 5])
    dst = np.array([1, 2, 3, 4, 5, 0, 2, 4, 0, 0, 0, 3])  # node 0 has four neighbours
    return {
        "graph attention": (
            graph_attention,
            {
                "w": r.normal(size=(f_in, f_out)),
                "a": r.normal(size=2 * f_out),
                "target": r.normal(size=(n, f_out)),
            },
            (r.normal(size=(n, f_in)), src, dst, n),
        ),
        "von Mises mixture": (
            von_mises_mixture,
            {"logits": r.normal(size=3), "mu": r.uniform(-3, 3, 3), "log_kappa": r.normal(size=3)},
            (r.uniform(-np.pi, np.pi, 20),),
        ),
        "gamma shape": (
            gamma_shape,
            {"log_alpha": r.normal(size=4), "log_beta": r.normal(size=4)},
            (r.uniform(0.5, 2.0, 4),),
        ),
        "beta, dirichlet": (
            beta_dirichlet,
            {"log_a": r.normal(size=3), "log_b": r.normal(size=3), "log_conc": r.normal(size=3)},
            (r.uniform(0.2, 0.8, 3),),
        ),
        "negative binomial": (
            negative_binomial,
            {"raw_r": r.normal(size=5), "logit_p": r.normal(size=5), "log_alpha": r.normal(size=2)},
            (r.integers(0, 12, 5).astype(float),),
        ),
        "censored gamma": (
            censored_gamma,
            {"log_a": r.normal(size=()), "log_theta": r.normal(size=())},
            (r.uniform(0.2, 4.0, 12), r.uniform(size=12) < 0.6),
        ),
        "Zipf": (zipf, {"raw_s": np.asarray(0.3)}, (np.asarray([40.0, 18, 9, 7, 4, 3, 2, 1]),)),
    }


@pytest.mark.parametrize("name", sorted(_programs()))
def test_program_gradient_is_jax(name, x64):
    fn, params, data = _programs()[name]
    params = jax.tree_util.tree_map(jnp.asarray, params)
    loss = lambda p: fn(p, *data)
    # compiled fast rather than well: the samplers' while loops are most of the time
    ref = jax.jit(jax.grad(loss), compiler_options=FAST_COMPILE)(params)
    mine = fnn.grad(loss)(params)
    compiled = jax.jit(fnn.grad(loss), compiler_options=FAST_COMPILE)(params)
    for label, got in (("eager", mine), ("jit", compiled)):
        assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(ref)
        for k in ref:
            assert np.all(np.isfinite(ref[k])), (name, k)
            err = rel_error(got[k], ref[k])
            assert err <= 1e-10, f"{name} {label}: d/d{k} rel_error {err:.1e}"
