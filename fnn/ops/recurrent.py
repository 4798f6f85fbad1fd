"""Recurrent layers over a whole sequence, as cuDNN and oneDNN run them: one gate per kind, each
with its hand-written rule (backpropagation through time written out).

    rnn_sequence   (hs, h_T)       h_t = tanh(x_t wx + b + h_{t-1} wh)
    lstm_sequence  (hs, h_T, c_T)  the LSTM of lstm_cell at every step, gates (i, f, o, g)
    gru_sequence   (hs, h_T)       PyTorch's GRU: reset gate inside the candidate, bh inside too

Sequences are time-major: x (T, N, D), hs (T, N, H) (the layers of fnn.nn.sequence swap their
batch-major (N, T, D) in and out). The forward makes the input projection of every step ONE
matmul, X wx over (T*N, D), before a `lax.scan` that computes only the recurrent part h_{t-1} wh
and the gates' elementwise work (the bias added there), saving each step's local derivatives
(what the backward multiplies the step's dh and dc by). The VJP is a reverse `lax.scan` of the
recurrent chain alone (through h and c), producing the stacked pre-activation gradients
dA (T, N, kH), then the weight gradients of all steps as one large matmul each:

    dwx = X^T dA    dwh = H_prev^T dA    db = sum dA    dx = dA wx^T

with H_prev = (h0, h_1, ..., h_{T-1}). No weight gradient is accumulated step by step, and no
per-step copy of a weight is kept. The per-step cells (rnn_cell, lstm_cell, gru_cell in
fnn.ops.sequence) stay: they are the lecture's picture of one step, and what a rule override of
one cell acts on (the layers run them when such an override is in effect).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fnn.autodiff.case_values import normal
from fnn.autodiff.gate import Case, defgate
from fnn.errors import GateError, describe


def _check(name, x, h0, wx, wh, b, k, extra=()):
    """Shapes of a sequence gate's inputs: x (T, N, D), h0 (N, H), wx (D, kH), wh (H, kH),
    b (kH,), and `extra` ((argument name, value, wanted shape) pairs)."""
    if jnp.ndim(x) != 3 or jnp.ndim(h0) != 2 or x.shape[1] != h0.shape[0]:
        raise GateError(
            f"gate '{name}': x must be (T, N, D) (time-major) and h0 (N, H), got x "
            f"{describe(x)}, h0 {describe(h0)}"
        )
    hidden = h0.shape[1]
    want = {"wx": (x.shape[2], k * hidden), "wh": (hidden, k * hidden), "b": (k * hidden,)}
    checks = [("wx", wx, want["wx"]), ("wh", wh, want["wh"]), ("b", b, want["b"]), *extra]
    for arg, got, shape in checks:
        if tuple(np.shape(got)) != shape:
            raise GateError(
                f"gate '{name}': {arg} must be {shape} for x {describe(x)} and h0 "
                f"{describe(h0)}, got {arg} {describe(got)}"
            )
    dtype = jnp.result_type(x)
    for arg, got in (("x", x), ("h0", h0), *[(a, v) for a, v, _ in checks]):
        if not jnp.issubdtype(jnp.result_type(got), jnp.floating) or jnp.result_type(got) != dtype:
            raise GateError(
                f"gate '{name}': every input must be a float array of one dtype, got "
                f"x {describe(x)} and {arg} {describe(got)}"
            )


def _project(x, wx):
    """The input part of every step, one matmul: (T, N, D) @ (D, kH) -> (T, N, kH) (the bias
    is added inside the loop, where the step's elementwise work reads this anyway)."""
    t, n, d = x.shape
    return (jnp.reshape(x, (t * n, d)) @ wx).reshape(t, n, -1)


def _times_wh_t(da, wh):
    """da @ wh.T without materializing wh.T (the contraction names wh's second axis)."""
    return lax.dot_general(da, wh, (((1,), (1,)), ((), ())))


def _previous(h0, hs):
    """(h0, h_1, ..., h_{T-1}): the state each step started from, (T, N, H)."""
    return jnp.concatenate([h0[None], hs], axis=0)[:-1]


def _weight_grads(needs, x, wx, h_prev, wh, dax, dah=None):
    """dx = dA_x wx^T, dwx = X^T dA_x, dwh = H_prev^T dA_h, db = sum dA_x (and sum dA_h), each
    one matmul (or sum) over all T*N rows; None where `needs` says no gradient is wanted."""
    t, n, d = x.shape
    dah = dax if dah is None else dah
    ax = jnp.reshape(dax, (t * n, -1))
    ah = jnp.reshape(dah, (t * n, -1))
    contract_rows = (((0,), (0,)), ((), ()))
    dx = (ax @ wx.T).reshape(x.shape) if needs["x"] else None
    dwx = lax.dot_general(jnp.reshape(x, (t * n, d)), ax, contract_rows) if needs["wx"] else None
    dwh = (
        lax.dot_general(jnp.reshape(h_prev, (t * n, -1)), ah, contract_rows)
        if needs["wh"]
        else None
    )
    return dx, dwx, dwh, jnp.sum(ax, axis=0), jnp.sum(ah, axis=0)


def _sequence_cases(k, states=1, biases=1):
    """Cases of a sequence gate: x (T, N, D), h0 (and c0), wx, wh, b (and bh); one of a few
    steps and one of a single step."""

    def cases(rng, dtype):
        out = []
        for t, n, d, hidden in ((5, 3, 4, 5), (1, 2, 3, 2)):
            args = (normal(rng, (t, n, d), dtype),) + tuple(
                normal(rng, (n, hidden), dtype, 0.5) for _ in range(states)
            )
            args += (
                normal(rng, (d, k * hidden), dtype, 0.5),
                normal(rng, (hidden, k * hidden), dtype, 0.5),
            )
            args += tuple(normal(rng, (k * hidden,), dtype, 0.1) for _ in range(biases))
            out.append(Case(args, label=f"T={t} N={n} D={d} H={hidden}"))
        return out

    return cases


# ---- vanilla RNN --------------------------------------------------------------------------------
@defgate
def rnn_sequence(x, h0, wx, wh, b):
    """A tanh RNN over a sequence: h_t = tanh(x_t wx + b + h_{t-1} wh) from h0.

    A tanh RNN over a sequence: h_t = tanh(x_t wx + b + h_{t-1} wh) from h0. x (T, N, D)
    time-major, h0 (N, H), wx (D, H), wh (H, H), b (H,); returns (hs (T, N, H), h_T (N, H)).

    Local gradients (backpropagation through time): the reverse scan carries dh; at step t,
    da_t = (g_t + dh) (1 - h_t**2) and dh = da_t wh^T (dh0 at the end); then for all steps at
    once dx = dA wx^T, dwx = X^T dA, dwh = H_prev^T dA, db = sum dA.

    Args:
        x: (T, N, D), time-major.
        h0: the initial state (N, H).
        wx: (D, H).
        wh: (H, H).
        b: (H,).

    Returns:
        (hs (T, N, H), h_T (N, H)).
    """
    _check("rnn_sequence", x, h0, wx, wh, b, 1)

    def step(h, xa_t):
        h = jnp.tanh(xa_t + b + h @ wh)
        return h, h

    h_t, hs = lax.scan(step, h0, _project(x, wx))
    return (hs, h_t), (x, h0, wx, wh, hs)


@rnn_sequence.defvjp
def rnn_sequence_vjp(g, saved, *, needs):
    g_hs, g_ht = g
    x, h0, wx, wh, hs = saved

    def step(dh, inputs):
        g_t, h_t = inputs
        da = (g_t + dh) * (1 - h_t * h_t)
        return _times_wh_t(da, wh), da

    dh0, da = lax.scan(step, g_ht, (g_hs, hs), reverse=True)
    dx, dwx, dwh, db, _ = _weight_grads(
        dict(x=needs[0], wx=needs[2], wh=needs[3]), x, wx, _previous(h0, hs), wh, da
    )
    return dx, dh0, dwx, dwh, db if needs[4] else None


rnn_sequence.defcases(_sequence_cases(1))
rnn_sequence.defkinks(smooth=True)


# ---- LSTM -----------------------------------------------------------------------------------------
@defgate
def lstm_sequence(x, h0, c0, wx, wh, b):
    """An LSTM over a sequence (lstm_cell at every step).

    An LSTM over a sequence (lstm_cell at every step): a_t = x_t wx + b + h_{t-1} wh split
    into (i, f, o, g), sigmoids and a tanh; c_t = f c_{t-1} + i g, h_t = o tanh(c_t), from
    (h0, c0). x (T, N, D) time-major, h0 and c0 (N, H), wx (D, 4H), wh (H, 4H), b (4H,);
    returns (hs (T, N, H), h_T, c_T).

    Local gradients (lstm_step_backward at each step of a reverse scan carrying dh, dc): with
    dh += g_t and dc += dh o (1 - tanh(c_t)**2), the pre-activation gradient is
    da_t = (dc, dc, dh, dc) * (g i (1 - i), c_{t-1} f (1 - f), tanh(c_t) o (1 - o), i (1 - g**2))
    (the second factor is computed by the forward, where its parts are at hand, and saved);
    dh = da_t wh^T, dc = dc f (dh0, dc0 at the end); then for all steps at once dx = dA wx^T,
    dwx = X^T dA, dwh = H_prev^T dA, db = sum dA.

    Args:
        x: (T, N, D), time-major.
        h0: the initial hidden state (N, H).
        c0: the initial cell state (N, H).
        wx: (D, 4H).
        wh: (H, 4H).
        b: (4H,).

    Returns:
        (hs (T, N, H), h_T, c_T).
    """
    _check("lstm_sequence", x, h0, wx, wh, b, 4, [("c0", c0, tuple(np.shape(h0)))])
    hidden = h0.shape[1]

    def step(carry, xa_t):
        h, c_prev = carry
        a = xa_t + b + h @ wh
        s, gg = jax.nn.sigmoid(a[:, : 3 * hidden]), jnp.tanh(a[:, 3 * hidden :])
        i, f, o = s[:, :hidden], s[:, hidden : 2 * hidden], s[:, 2 * hidden :]
        c = f * c_prev + i * gg
        t = jnp.tanh(c)
        h = o * t
        # the local derivatives the backward multiplies by: d a / d(dc, dc, dh, dc), d c / d h
        local = jnp.concatenate(
            [gg * i * (1 - i), c_prev * f * (1 - f), t * o * (1 - o), i * (1 - gg * gg)], axis=1
        )
        return (h, c), (h, local, o * (1 - t * t), f)

    (h_t, c_t), (hs, local, dc_dh, fs) = lax.scan(step, (h0, c0), _project(x, wx))
    return (hs, h_t, c_t), (x, h0, wx, wh, hs, local, dc_dh, fs)


@lstm_sequence.defvjp
def lstm_sequence_vjp(g, saved, *, needs):
    g_hs, g_ht, g_ct = g
    x, h0, wx, wh, hs, local, dc_dh, fs = saved

    def step(carry, inputs):
        dh, dc = carry
        g_t, local_t, dc_dh_t, f = inputs
        dh = dh + g_t
        dc = dc + dh * dc_dh_t
        da = jnp.concatenate([dc, dc, dh, dc], axis=1) * local_t
        return (_times_wh_t(da, wh), dc * f), da

    (dh0, dc0), da = lax.scan(step, (g_ht, g_ct), (g_hs, local, dc_dh, fs), reverse=True)
    dx, dwx, dwh, db, _ = _weight_grads(
        dict(x=needs[0], wx=needs[3], wh=needs[4]), x, wx, _previous(h0, hs), wh, da
    )
    return dx, dh0, dc0, dwx, dwh, db if needs[5] else None


lstm_sequence.defcases(_sequence_cases(4, states=2))
lstm_sequence.defkinks(smooth=True)


# ---- GRU ------------------------------------------------------------------------------------------
@defgate
def gru_sequence(x, h0, wx, wh, b, bh):
    """A GRU over a sequence (gru_cell at every step, PyTorch's equations).

    A GRU over a sequence (gru_cell at every step, PyTorch's equations): with
    ax = x_t wx + b and ah = h_{t-1} wh + bh split into (r, z, n) parts, r = sigmoid(ax_r + ah_r),
    z = sigmoid(ax_z + ah_z), n = tanh(ax_n + r ah_n), h_t = (1 - z) n + z h_{t-1}, from h0.
    x (T, N, D) time-major, h0 (N, H), wx (D, 3H), wh (H, 3H), b and bh (3H,); returns
    (hs (T, N, H), h_T).

    Local gradients (a reverse scan carrying dh): dh += g_t; da_n = dh (1 - z) (1 - n**2),
    da_r = da_n ah_n r (1 - r), da_z = dh (h_{t-1} - n) z (1 - z), i.e. the x side's
    dA_x = (da_r, da_z, da_n) = dh * (the local derivatives, computed by the forward and saved);
    the h side takes dA_h = (da_r, da_z, da_n r), and dh = dh z + dA_h wh^T (dh0 at the end);
    then for all steps at once dx = dA_x wx^T, dwx = X^T dA_x, db = sum dA_x,
    dwh = H_prev^T dA_h, dbh = sum dA_h.

    Args:
        x: (T, N, D), time-major.
        h0: the initial state (N, H).
        wx: (D, 3H).
        wh: (H, 3H).
        b: (3H,).
        bh: (3H,).

    Returns:
        (hs (T, N, H), h_T).
    """
    _check("gru_sequence", x, h0, wx, wh, b, 3, [("bh", bh, tuple(np.shape(b)))])
    hidden = h0.shape[1]

    def step(h_prev, xa_t):
        xa_t = xa_t + b
        ah = h_prev @ wh + bh
        rz = jax.nn.sigmoid(xa_t[:, : 2 * hidden] + ah[:, : 2 * hidden])
        r, z = rz[:, :hidden], rz[:, hidden:]
        ah_n = ah[:, 2 * hidden :]
        n = jnp.tanh(xa_t[:, 2 * hidden :] + r * ah_n)
        h = (1 - z) * n + z * h_prev
        dn = (1 - z) * (1 - n * n)  # d a_n / d h_t, then those of a_r and a_z
        local = jnp.concatenate([dn * ah_n * r * (1 - r), (h_prev - n) * z * (1 - z), dn], axis=1)
        return h, (h, local, r, z)

    h_t, (hs, local, rs, zs) = lax.scan(step, h0, _project(x, wx))
    return (hs, h_t), (x, h0, wx, wh, hs, local, rs, zs)


@gru_sequence.defvjp
def gru_sequence_vjp(g, saved, *, needs):
    g_hs, g_ht = g
    x, h0, wx, wh, hs, local, rs, zs = saved
    hidden = h0.shape[1]

    def step(dh, inputs):
        g_t, local_t, r, z = inputs
        dh = dh + g_t
        dax = jnp.concatenate([dh, dh, dh], axis=1) * local_t
        dah = jnp.concatenate([dax[:, : 2 * hidden], dax[:, 2 * hidden :] * r], axis=1)
        return dh * z + _times_wh_t(dah, wh), (dax, dah)

    dh0, (dax, dah) = lax.scan(step, g_ht, (g_hs, local, rs, zs), reverse=True)
    dx, dwx, dwh, db, dbh = _weight_grads(
        dict(x=needs[0], wx=needs[2], wh=needs[3]), x, wx, _previous(h0, hs), wh, dax, dah
    )
    return dx, dh0, dwx, dwh, db if needs[4] else None, dbh if needs[5] else None


gru_sequence.defcases(_sequence_cases(3, biases=2))
gru_sequence.defkinks(smooth=True)
