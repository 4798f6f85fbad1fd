"""Complex numbers as JAX differentiates them (README, "Complex numbers"): fnn.grad and fnn.vjp
of complex programs equal jax.grad and jax.vjp (float64 and complex128, 1e-10), eagerly and
under jit, with JAX's errors where JAX refuses; a rule that is written for real values alone
refuses complex ones by name. The programs: a Fourier neural operator (rfft, complex weights
stored as two real arrays, irfft) trained a few steps, an FFT convolution, a spectral loss
|fft(x)|^2, a complex-weighted linear layer, extrema, segments and solves, and custom rules with
complex values. Each family is compiled once (fnn's and JAX's gradients in one program)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

import fnn
from fnn.bench.jax_models import fno_apply, fno_params
from fnn.check.numeric import rel_error

TOL = 1e-10


def _both(loss, argnums=0, **kw):
    """fnn.grad and jax.grad of loss in one jitted program."""
    return jax.jit(
        lambda *a: (fnn.grad(loss, argnums, **kw)(*a), jax.grad(loss, argnums, **kw)(*a))
    )


def _cnormal(rng, *shape):
    return jnp.asarray(rng.standard_normal(shape) + 1j * rng.standard_normal(shape))


def test_the_convention_is_jaxs(x64):
    """grad of a real function of z = x + iy is df/dx - i df/dy (the conjugate of the ascent
    direction), grad(holomorphic=True) is f'(z), and vjp is g * f'(z): as JAX."""
    z = jnp.asarray(3.0 + 4.0j)
    assert (
        fnn.grad(lambda z: jnp.abs(z) ** 2)(z)
        == jax.grad(lambda z: jnp.abs(z) ** 2)(z)
        == 6.0 - 8.0j
    )
    assert fnn.grad(lambda z: jnp.real(z))(z) == 1.0 and fnn.grad(lambda z: jnp.imag(z))(z) == -1j
    f = lambda z: jnp.sin(z) * jnp.exp(z) / (1.0 + z**2)
    assert abs(fnn.grad(f, holomorphic=True)(z) - jax.grad(f, holomorphic=True)(z)) < 1e-12
    for fn, primal, ct in [
        (f, z, 0.3 - 2.0j),
        (jnp.abs, z, 1.5),
        (jnp.conj, z, 1.0 + 2.0j),
        (lambda x: x * (1 + 2j), jnp.asarray(0.7), 2.0 - 1.0j),
    ]:
        mine, ref = fnn.vjp(fn, primal)[1](ct)[0], jax.vjp(fn, primal)[1](ct)[0]
        assert abs(mine - ref) < 1e-12 and jnp.result_type(mine) == jnp.result_type(ref)


def test_holomorphic_and_elementwise_programs(x64):
    rng = np.random.default_rng(0)
    z, w = _cnormal(rng, 3, 4), _cnormal(rng, 4, 2)
    x = jnp.asarray(rng.standard_normal((3, 4)))

    def holo(z, w):  # holomorphic in both, complex output
        return jnp.sum(jnp.tanh(z @ w) * jnp.log(2.0 + z[:, :2] ** 2) + jnp.sqrt(3.0 + z[:, 1:3]))

    def real_loss(z, x):  # non-holomorphic: abs, conj, real, angle; a real input mixed in
        c = jnp.exp(1j * x) * z + jnp.conj(z) * x
        return jnp.sum(jnp.abs(c) ** 2 + jnp.real(c * z) - jnp.imag(c) + jnp.angle(z) * x)

    mine, ref = _both(holo, (0, 1), holomorphic=True)(z, w)
    assert rel_error(mine, ref) < TOL
    mine, ref = _both(real_loss, (0, 1))(z, x)
    assert rel_error(mine, ref) < TOL and mine[1].dtype == jnp.float64
    eager = fnn.grad(real_loss, (0, 1))(z, x)  # eagerly: the same gradients
    assert rel_error(eager, ref) < TOL


def test_vjp_with_complex_cotangents(x64):
    rng = np.random.default_rng(1)
    z, x = _cnormal(rng, 5), jnp.asarray(rng.standard_normal(8))
    f = lambda z, x: (jnp.fft.fft(z) * z, jnp.fft.rfft(x), jnp.abs(z))
    cts = (_cnormal(rng, 5), _cnormal(rng, 5), jnp.asarray(rng.standard_normal(5)))
    both = jax.jit(lambda z, x, c: (fnn.vjp(f, z, x)[1](c), jax.vjp(f, z, x)[1](c)))
    mine, ref = both(z, x, cts)
    assert rel_error(mine, ref) < TOL


def test_jaxs_errors_where_jax_refuses(x64):
    z = jnp.asarray(1.0 + 1.0j)
    with pytest.raises(TypeError, match="requires real-valued outputs.*holomorphic=True"):
        fnn.grad(lambda z: z * z)(z)
    with pytest.raises(TypeError, match="holomorphic=True requires inputs with complex dtype"):
        fnn.grad(lambda x: x * 1j, holomorphic=True)(1.0)
    with pytest.raises(TypeError, match="holomorphic=True requires outputs with complex dtype"):
        fnn.grad(jnp.abs, holomorphic=True)(z)
    for fn in (
        lambda: jax.grad(lambda z: z * z)(z),  # JAX refuses the same three
        lambda: jax.grad(lambda x: x * 1j, holomorphic=True)(1.0),
        lambda: jax.grad(jnp.abs, holomorphic=True)(z),
    ):
        with pytest.raises(TypeError):
            fn()
    _, pull = fnn.vjp(lambda z: z * 2, jnp.ones(3, complex))
    with pytest.raises(ValueError, match="complex output takes a complex cotangent"):
        pull(jnp.ones(3))


def test_a_rule_for_real_values_refuses_complex_ones_by_name(x64):
    z = jnp.asarray([1.0 + 2.0j, 3.0 - 1.0j])
    # lax.pmax's rule is written for real values (JAX has no rule for pmax at all): refused,
    # naming it and the value; psum's takes complex values, as JAX's does
    over = lambda op: lambda z: jnp.sum(jnp.abs(jax.vmap(lambda v: op(v, "i"), axis_name="i")(z)))
    with pytest.raises(
        fnn.GateError,
        match=r"rule 'lax.pmax' does not differentiate "
        r"complex values: its input 0 is complex128\[2\]",
    ):
        fnn.grad(over(lax.pmax))(z)
    assert rel_error(fnn.grad(over(lax.psum))(z), jax.grad(over(lax.psum))(z)) < TOL
    # a user's primitive gate is refused unless it declares complex=True
    from jax.extend.core.primitives import sin_p

    @fnn.primitive_gate(sin_p, params=("accuracy",))
    def my_sin(g, inputs, **params):
        """sin.  Local gradient: cos(x)."""
        return (g * jnp.cos(inputs[0]),)

    with pytest.raises(fnn.GateError, match="rule 'lax.sin' does not differentiate complex"):
        fnn.grad(lambda z: jnp.real(jnp.sin(z)), rules=[my_sin])(z[0])
    assert fnn.grad(lambda x: jnp.sin(x), rules=[my_sin])(0.5) == np.cos(0.5)


def test_fourier_neural_operator_trains_as_under_jax_grad(x64):
    """A 1-d FNO (fnn.bench.jax_models): three Adam steps with each gradient, every step's
    gradient fnn's = JAX's, under jit; the first also eagerly."""
    params = fno_params(jax.random.PRNGKey(0), width=6, modes=4, layers=2)
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
    x = jnp.linspace(0.0, 1.0, 16)
    u = jnp.sin(2 * jnp.pi * (x[None, :] + jnp.asarray([[0.1], [0.35], [0.6]])))[..., None]
    target = jnp.cumsum(u, axis=1) / 16
    loss = lambda p, u, t: jnp.mean((fno_apply(p, u) - t) ** 2)
    eager = fnn.grad(loss)(params, u, target)
    assert rel_error(eager, jax.grad(loss)(params, u, target)) < TOL
    opt = optax.adam(1e-2)

    @jax.jit
    def steps(p_mine, p_ref):
        s_mine = s_ref = opt.init(p_mine)
        errors, losses = [], []
        for _ in range(3):
            g_mine, g_ref = fnn.grad(loss)(p_mine, u, target), jax.grad(loss)(p_ref, u, target)
            errors.append(rel_error(g_mine, g_ref))
            losses.append(loss(p_mine, u, target))
            up, s_mine = opt.update(g_mine, s_mine)
            p_mine = optax.apply_updates(p_mine, up)
            up, s_ref = opt.update(g_ref, s_ref)
            p_ref = optax.apply_updates(p_ref, up)
        return jnp.stack(errors), jnp.stack(losses), rel_error(p_mine, p_ref)

    errors, losses, params_apart = steps(params, params)
    assert float(jnp.max(errors)) < TOL and float(params_apart) < TOL
    assert losses[-1] < losses[0]  # it trains


def test_fft_convolution_spectral_loss_and_complex_linear_layer(x64):
    rng = np.random.default_rng(2)
    x, k = jnp.asarray(rng.standard_normal((2, 12))), jnp.asarray(rng.standard_normal(5))
    img = jnp.asarray(rng.standard_normal((6, 8)))
    w, b = _cnormal(rng, 4, 3), _cnormal(rng, 3)
    zin = _cnormal(rng, 5, 4)

    def fft_conv(x, k):  # linear convolution through the FFT (zero-padded), vs a target
        n = x.shape[-1] + k.shape[-1] - 1
        y = jnp.fft.irfft(jnp.fft.rfft(x, n) * jnp.fft.rfft(k, n), n)
        return jnp.sum((y - jnp.convolve(x[0], k)[None]) ** 2 + jnp.cos(y))

    def spectral(img):  # |fft2(x)|^2 at high frequencies, plus an ifft round trip
        power = jnp.abs(jnp.fft.fft2(img)) ** 2
        return jnp.sum(power[2:, 3:]) / img.size + jnp.sum(jnp.real(jnp.fft.ifft(img * 1j)) ** 2)

    def complex_linear(w, b, z):  # complex weights, a modReLU-like activation, real loss
        h = z @ w + b
        h = jax.nn.relu(jnp.abs(h) - 0.5) * h / (jnp.abs(h) + 1e-3)
        return jnp.mean(jnp.abs(h - 0.5j) ** 2)

    mine, ref = _both(fft_conv, (0, 1))(x, k)
    assert rel_error(mine, ref) < TOL
    mine, ref = _both(spectral)(img)
    assert rel_error(mine, ref) < TOL
    mine, ref = _both(complex_linear, (0, 1, 2))(w, b, zin)
    assert rel_error(mine, ref) < TOL and mine[0].dtype == jnp.complex128


def test_extrema_segments_and_solves_of_complex_values(x64):
    """max and min (JAX's lexicographic order), their reductions and running forms, segment
    pooling, a tridiagonal solve, jnp.linalg.solve and a running logsumexp of complex values."""
    rng = np.random.default_rng(3)
    z = _cnormal(rng, 6, 3)
    ids = jnp.asarray([0, 2, 2, 1, 0, 3])
    dl, du = _cnormal(rng, 6) * 0.3, _cnormal(rng, 6) * 0.3
    a = _cnormal(rng, 6, 6) + 4 * jnp.eye(6)

    def loss(z, d):
        ext = jnp.max(z, axis=1) + jnp.min(z, axis=0).sum() + jnp.maximum(z[:, 0], z[:, 1])
        run = lax.cummax(z, axis=0)[-1] - lax.cummin(z, axis=1)[:, -1].sum()
        seg = jax.ops.segment_max(z, ids, num_segments=4) + jax.ops.segment_min(z, ids, 4)
        y = lax.linalg.tridiagonal_solve(dl, d, du, z) + jnp.linalg.solve(a, z)
        lse = lax.cumlogsumexp(0.3 * z, axis=0)
        return (
            jnp.sum(jnp.abs(ext) ** 2)
            + jnp.sum(jnp.abs(run) ** 2)
            + jnp.sum(jnp.abs(seg))
            + jnp.sum(jnp.abs(y) ** 2)
            + jnp.sum(jnp.real(lse) * jnp.imag(lse))
        )

    d = 3.0 + _cnormal(rng, 6) * 0.3
    mine, ref = _both(loss, (0, 1))(z, d)
    assert rel_error(mine, ref) < TOL and mine[0].dtype == jnp.complex128


def test_custom_rules_scans_and_checkpoints_with_complex_values(x64):
    @jax.custom_vjp
    def scale(z):
        return 2.0 * z

    scale.defvjp(lambda z: (2.0 * z, None), lambda _, g: (2.0 * g,))

    @jax.custom_jvp
    def cube(z):
        return z**3

    cube.defjvp(lambda p, t: (cube(p[0]), 3.0 * p[0] ** 2 * t[0]))

    def loss(z):
        h, _ = lax.scan(lambda c, _: (jax.checkpoint(jnp.sin)(c) * 0.9, None), z, None, length=3)
        return jnp.sum(jnp.abs(scale(h) + cube(z)) ** 2)

    z = _cnormal(np.random.default_rng(3), 4)
    mine, ref = _both(loss)(z)
    assert rel_error(mine, ref) < TOL
