"""Benchmarks of plain JAX models (issue 11): fnn.grad through the primitive front-end against
jax.grad, on code fnn did not write.

Rows, each a training step (loss, gradient, optax Adam update) jitted with its buffers donated,
hand-written (fnn.grad) vs built-in (jax.grad) timed interleaved, plus trace and compile times:
    flax_cnn          a Flax linen CNN (two 3x3 convs, ReLU, max pooling, dense) on 28x28x1
    lstm_scan         an Equinox LSTMCell run over 64 steps by lax.scan (backpropagation
                      through time by fnn's scan rule), hidden 128, batch 32
    transformer       a Flax pre-norm Transformer encoder block (width 128, 4 heads, causal
                      mask, sequence 64, batch 16)
    gp_marginal_likelihood  a Gaussian process's negative log marginal likelihood (RBF kernel
                      on n = 512 points in 3-d, Cholesky, two triangular solves, log det),
                      its kernel's three hyperparameters learned (fnn's linear-algebra rules)
    fno               a 1-d Fourier neural operator: 4 spectral layers (rfft over 256 points,
                      the 16 lowest modes times complex weights stored as two real arrays,
                      irfft) with pointwise linear skips and GELU, width 32, batch 32 (fnn's
                      FFT and complex-number rules)
and `trace` rows: the time to trace and interpret a function whose jaxpr grows with N, a Python
loop of N tanh(h @ w) steps (N equations each) and a lax.scan of N such steps (one body).
Needs Equinox and Flax (the `dev` extra); a model whose library is missing is skipped.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn.bench.timing import interleaved
from fnn.transforms import value_and_grad as fnn_value_and_grad

MODELS = ("flax_cnn", "lstm_scan", "transformer", "gp_marginal_likelihood", "fno")


def _flax_cnn(quick: bool):
    import flax.linen as nn

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            for width in (8, 16) if quick else (32, 64):
                x = nn.max_pool(nn.relu(nn.Conv(width, (3, 3))(x)), (2, 2), strides=(2, 2))
            return nn.Dense(10)(x.reshape((x.shape[0], -1)))

    batch, side = (8, 12) if quick else (64, 28)
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, side, side, 1))
    y = jnp.arange(batch) % 10
    model = CNN()
    params = model.init(jax.random.PRNGKey(0), x)["params"]

    def loss(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(
            model.apply({"params": p}, x), y
        ).mean()

    return loss, params, (x, y)


def _lstm_scan(quick: bool):
    import equinox as eqx

    hidden, steps, batch, feat = (16, 8, 4, 8) if quick else (128, 64, 32, 32)
    cell = eqx.nn.LSTMCell(feat, hidden, key=jax.random.PRNGKey(0))
    head = eqx.nn.Linear(hidden, 10, key=jax.random.PRNGKey(2))
    params, static = eqx.partition((cell, head), eqx.is_inexact_array)
    xs = jax.random.normal(jax.random.PRNGKey(1), (steps, batch, feat))
    y = jnp.arange(batch) % 10

    def loss(p, xs, y):
        cell, head = eqx.combine(p, static)
        zeros = jnp.zeros((batch, hidden))

        def step(state, x):
            state = jax.vmap(cell)(x, state)
            return state, None

        (h, _), _ = jax.lax.scan(step, (zeros, zeros), xs)
        return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(head)(h), y).mean()

    return loss, params, (xs, y)


def _transformer(quick: bool):
    import flax.linen as nn

    width, heads, seq, batch = (16, 2, 8, 2) if quick else (128, 4, 64, 16)

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.LayerNorm()(x)
            mask = nn.make_causal_mask(jnp.ones(x.shape[:2]))
            x = x + nn.MultiHeadDotProductAttention(num_heads=heads)(h, h, mask=mask)
            h = nn.Dense(4 * width)(nn.LayerNorm()(x))
            return x + nn.Dense(width)(nn.gelu(h))

    x = jax.random.normal(jax.random.PRNGKey(1), (batch, seq, width))
    target = jax.random.normal(jax.random.PRNGKey(2), (batch, seq, width))
    model = Block()
    params = model.init(jax.random.PRNGKey(0), x)["params"]

    def loss(p, x, target):
        return jnp.mean((model.apply({"params": p}, x) - target) ** 2)

    return loss, params, (x, target)


def _gp_marginal_likelihood(quick: bool):
    import jax.scipy.linalg as jsl

    n = 32 if quick else 512
    x = jax.random.normal(jax.random.PRNGKey(1), (n, 3))
    y = jnp.sin(2.0 * x[:, 0]) + 0.1 * jax.random.normal(jax.random.PRNGKey(2), (n,))
    params = {
        "log_lengthscale": jnp.zeros(()),
        "log_signal": jnp.zeros(()),
        "log_noise": jnp.asarray(-1.0),
    }

    def loss(p, x, y):
        d2 = jnp.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
        k = jnp.exp(2 * p["log_signal"] - 0.5 * d2 * jnp.exp(-2 * p["log_lengthscale"]))
        k = k + jnp.exp(2 * p["log_noise"]) * jnp.eye(n)
        chol = jnp.linalg.cholesky(k)
        alpha = jsl.cho_solve((chol, True), y)
        return (0.5 * y @ alpha + jnp.sum(jnp.log(jnp.diagonal(chol)))) / n

    return loss, params, (x, y)


def spectral_conv(u, w_re, w_im):
    """A Fourier layer's convolution (FNO, Li et al. 2021): u (batch, n, c_in) to (batch, n,
    c_out) through its spectrum along axis 1, whose `modes` lowest frequencies are multiplied
    by the complex weights w_re + i w_im (modes, c_in, c_out), the rest dropped."""
    n, modes = u.shape[1], w_re.shape[0]
    low = jnp.fft.rfft(u, axis=1)[:, :modes]
    out = jnp.einsum("bmi,mio->bmo", low, jax.lax.complex(w_re, w_im))
    out = jnp.pad(out, ((0, 0), (0, n // 2 + 1 - modes), (0, 0)))
    return jnp.fft.irfft(out, n=n, axis=1)


def fno_params(key, width: int, modes: int, layers: int, c_in: int = 1) -> dict:
    """Lift, `layers` Fourier layers (spectral weights and a pointwise skip), projection."""
    keys = iter(jax.random.split(key, 3 * layers + 2))
    scale = 1.0 / width
    return {
        "lift": jax.random.normal(next(keys), (c_in + 1, width)) / np.sqrt(c_in + 1),
        "layers": [
            {
                "w_re": scale * jax.random.normal(next(keys), (modes, width, width)),
                "w_im": scale * jax.random.normal(next(keys), (modes, width, width)),
                "skip": jax.random.normal(next(keys), (width, width)) / np.sqrt(width),
            }
            for _ in range(layers)
        ],
        "proj": jax.random.normal(next(keys), (width, 1)) / np.sqrt(width),
    }


def fno_apply(p, u):
    """u (batch, n, c_in) -> (batch, n, 1); the grid position is appended as a channel."""
    grid = jnp.broadcast_to(jnp.linspace(0.0, 1.0, u.shape[1])[None, :, None], u.shape[:2] + (1,))
    h = jnp.concatenate([u, grid.astype(u.dtype)], axis=-1) @ p["lift"]
    for layer in p["layers"]:
        h = jax.nn.gelu(spectral_conv(h, layer["w_re"], layer["w_im"]) + h @ layer["skip"])
    return h @ p["proj"]


def _fno(quick: bool):
    batch, n, width, modes, layers = (4, 32, 8, 4, 2) if quick else (32, 256, 32, 16, 4)
    x = jnp.linspace(0.0, 1.0, n)
    phase = jax.random.uniform(jax.random.PRNGKey(1), (batch, 1))
    u = jnp.sin(2 * jnp.pi * (x[None, :] + phase))[..., None]
    target = jnp.cumsum(u, axis=1) / n  # learn an antiderivative operator
    params = fno_params(jax.random.PRNGKey(0), width, modes, layers)

    def loss(p, u, target):
        return jnp.mean((fno_apply(p, u) - target) ** 2)

    return loss, params, (u, target)


BUILDERS = {
    "flax_cnn": _flax_cnn,
    "lstm_scan": _lstm_scan,
    "transformer": _transformer,
    "gp_marginal_likelihood": _gp_marginal_likelihood,
    "fno": _fno,
}


def _step(loss, optimizer, grad: str):
    vg = fnn_value_and_grad(loss) if grad == "custom" else jax.value_and_grad(loss)

    def step(params, opt_state, batch):
        value, grads = vg(params, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


def bench_model(name: str, *, reps: int, quick: bool = False) -> dict:
    """One row: step times (ms), their ratio, trace and compile times of both gradients."""
    loss, params, batch = BUILDERS[name](quick)
    optimizer = optax.adam(1e-3)
    row = {"kind": "jax_model", "case": name}
    calls = {}
    for grad in ("custom", "builtin"):
        opt_state = optimizer.init(params)
        t0 = time.perf_counter()
        lowered = jax.jit(_step(loss, optimizer, grad), donate_argnums=(0, 1)).lower(
            params, opt_state, batch
        )
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        row[f"{grad}_trace_s"], row[f"{grad}_compile_s"] = t1 - t0, t2 - t1
        carry = [jax.tree_util.tree_map(jnp.array, params), opt_state]

        def call(compiled=compiled, carry=carry):
            p, o, value = compiled(carry[0], carry[1], batch)
            carry[:] = [p, o]
            return value

        calls[grad] = call
    times = interleaved(calls, reps)
    row.update(
        custom_ms=times["custom"] * 1e3,
        builtin_ms=times["builtin"] * 1e3,
        ratio=times["custom"] / times["builtin"],
        trace_compile_ratio=(row["custom_trace_s"] + row["custom_compile_s"])
        / (row["builtin_trace_s"] + row["builtin_compile_s"]),
    )
    return row


def _loop(w, n: int):
    h = jnp.ones(w.shape[0])
    for _ in range(n):
        h = jnp.tanh(h @ w)
    return jnp.sum(h)


def _scan(w, n: int):
    h, _ = jax.lax.scan(lambda h, _: (jnp.tanh(h @ w), None), jnp.ones(w.shape[0]), None, length=n)
    return jnp.sum(h)


def bench_trace(lengths=(250, 500, 1000)) -> list[dict]:
    """Trace time (jit lowering) of fnn.grad and jax.grad for a Python loop and a scan of N
    steps: fnn's grows linearly with the number of equations, and not with a scan's length."""
    w = jnp.eye(16) * 0.5
    rows = []
    for kind, f in (("python loop", _loop), ("scan", _scan)):
        for n in lengths:
            row = {"kind": "trace", "case": kind, "steps": n}
            for grad, g in (("custom", fnn_value_and_grad(f)), ("builtin", jax.value_and_grad(f))):
                best = np.inf
                for _ in range(2):  # a fresh function each time: nothing cached
                    t0 = time.perf_counter()
                    jax.jit(lambda w, g=g, n=n: g(w, n)).lower(w)
                    best = min(best, time.perf_counter() - t0)
                row[f"{grad}_s"] = best
            rows.append(row)
    return rows


def model_row(name: str, *, reps: int = 30, quick: bool = False) -> dict:
    """bench_model's row, or a row saying why it was skipped (Equinox or Flax not installed)."""
    try:
        return bench_model(name, reps=reps, quick=quick)
    except ImportError as e:  # Equinox or Flax not installed: say so, go on
        return {"kind": "jax_model", "case": name, "skipped": str(e)}


def run(*, reps: int = 30, quick: bool = False, only=MODELS, log=None) -> list[dict]:
    rows = []
    for name in only:
        rows.append(model_row(name, reps=reps, quick=quick))
        if log is not None:
            log(format_row(rows[-1]))
    rows += bench_trace((50, 100) if quick else (250, 500, 1000))
    return rows


def format_row(r: dict) -> str:
    if r.get("skipped"):
        return f"{r['case']}: skipped ({r['skipped']})"
    if r["kind"] == "trace":
        return (
            f"trace {r['case']} x{r['steps']}: fnn {r['custom_s']:.3f}s, jax.grad "
            f"{r['builtin_s']:.3f}s"
        )
    return (
        f"{r['case']}: step fnn {r['custom_ms']:.2f} ms, jax.grad {r['builtin_ms']:.2f} ms, "
        f"ratio {r['ratio']:.3f}; trace+compile fnn {r['custom_trace_s']:.2f}+"
        f"{r['custom_compile_s']:.2f}s, jax.grad {r['builtin_trace_s']:.2f}+"
        f"{r['builtin_compile_s']:.2f}s (ratio {r['trace_compile_ratio']:.2f})"
    )
