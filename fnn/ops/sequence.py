"""Sequence gates: an embedding lookup, the fused cells of recurrent networks (vanilla RNN, LSTM,
GRU) and scaled dot-product attention, each with its hand-written rule.

    embedding  out = table[ids]: the backward adds each g row into the row of the table it was
               read from (a scatter-add; a row read twice gets both)
    rnn_cell   h' = tanh(x wx + h wh + b)
    lstm_cell  (h', c') from (x, h, c): the four gates of CS231n's lstm_step_forward, one rule
               for the whole cell (lstm_step_backward)
    gru_cell   h' = (1 - z) n + z h with PyTorch's reset gate inside the candidate n
    attention  softmax(q k^T / sqrt(d) + causal mask) v, one fused rule (no softmax Jacobian)

Time loops are `lax.scan` over a cell (fnn.nn.sequence): fnn differentiates the scan by
backpropagation through time (fnn.autodiff.structural.loops) and each step by the cell's own rule.
"""

import jax
import jax.numpy as jnp
import numpy as np

from fnn.autodiff.case_values import normal
from fnn.autodiff.gate import Case, defgate, unbroadcast
from fnn.errors import GateError, describe
from fnn.ops.reductions import softmax, softmax_vjp


# ---- embedding ------------------------------------------------------------------------------------
@defgate
def embedding(table, ids, *, padding_idx=None):
    """table[ids]: a row of the (V, D) table per integer id.

    table[ids]: a row of the (V, D) table per integer id, out (..., D). With padding_idx,
    positions holding that id read zeros (a padding token contributes nothing, as PyTorch's
    zero padding row does).

    Local gradient: each upstream row g[i] is added into table row ids[i] (rows read twice get
    both); the padding row gets none. ids get no gradient.

    Args:
        table: the (V, D) table.
        ids: integer ids in [0, V), any shape.
        padding_idx: an id whose positions read zeros (None: none).

    Returns:
        (..., D).

    Raises:
        fnn.GateError: table is not (V, D), or ids are not integers in [0, V).
    """
    if jnp.ndim(table) != 2:
        raise GateError(f"gate 'embedding': table must be (V, D), got {describe(table)}")
    if not jnp.issubdtype(jnp.result_type(ids), jnp.integer):
        raise GateError(f"gate 'embedding': ids must be integers, got {describe(ids)}")
    if not isinstance(ids, jax.core.Tracer):
        concrete = np.asarray(ids)
        if concrete.size and (concrete.min() < 0 or concrete.max() >= table.shape[0]):
            raise GateError(
                f"gate 'embedding': ids must lie in [0, {table.shape[0]}) for table "
                f"{describe(table)}, got values in [{concrete.min()}, "
                f"{concrete.max()}]"
            )
    out = jnp.take(table, ids, axis=0)
    if padding_idx is not None:
        out = jnp.where((ids == padding_idx)[..., None], jnp.zeros((), out.dtype), out)
    return out, (ids, table.shape, jnp.result_type(table))


@embedding.defvjp
def embedding_vjp(g, saved, *, padding_idx=None):
    ids, shape, dtype = saved
    rows = g.reshape(-1, shape[1])
    flat = ids.reshape(-1)
    if padding_idx is not None:
        rows = jnp.where((flat == padding_idx)[:, None], jnp.zeros((), rows.dtype), rows)
    return jnp.zeros(shape, dtype).at[flat].add(rows.astype(dtype)), None


@embedding.defcases
def _embedding_cases(rng, dtype):
    return [
        Case((normal(rng, (6, 3), dtype), rng.integers(0, 6, (2, 5))), label="(B, T) ids"),
        Case(
            (normal(rng, (5, 4), dtype), np.array([1, 1, 0, 4])),
            {"padding_idx": 0},
            label="repeats, padding 0",
        ),
    ]


embedding.defkinks(smooth=True)


# ---- recurrent cells ---------------------------------------------------------------------------------
def _check_cell(name, x, h, wx, wh, b, k, like=None):
    """Shapes of a cell's inputs: x (N, D), h (N, H), wx (D, kH), wh (H, kH), b (kH,); `like`:
    (argument, value, reference, its value), an input that must be shaped like another."""
    if jnp.ndim(x) != 2 or jnp.ndim(h) != 2 or x.shape[0] != h.shape[0]:
        raise GateError(
            f"gate '{name}': x must be (N, D) and h (N, H), got x {describe(x)}, h {describe(h)}"
        )
    hidden = h.shape[1]
    want = {"wx": (x.shape[1], k * hidden), "wh": (hidden, k * hidden), "b": (k * hidden,)}
    for arg, got in (("wx", wx), ("wh", wh), ("b", b)):
        if tuple(np.shape(got)) != want[arg]:
            raise GateError(
                f"gate '{name}': {arg} must be {want[arg]} for x {describe(x)} and "
                f"h {describe(h)}, got {arg} {describe(got)}"
            )
    if like is not None and np.shape(like[1]) != np.shape(like[3]):
        arg, got, ref, value = like
        raise GateError(
            f"gate '{name}': {arg} must be shaped like {ref} {describe(value)}, got {describe(got)}"
        )


@defgate
def rnn_cell(x, h, wx, wh, b):
    """One step of a vanilla RNN: h' = tanh(x wx + h wh + b).

    x (N, D), h (N, H), wx (D, H), wh (H, H), b (H,). Local gradients: with da = g (1 - h'**2): dx =
    da wx.T, dh = da wh.T, dwx = x.T da, dwh = h.T da, db = sum_N da.

    Args:
        x: (N, D).
        h: the hidden state (N, H).
        wx: (D, H).
        wh: (H, H).
        b: (H,).

    Returns:
        h' (N, H).
    """
    _check_cell("rnn_cell", x, h, wx, wh, b, 1)
    out = jnp.tanh(x @ wx + h @ wh + b)
    return out, (x, h, wx, wh, out)


@rnn_cell.defvjp
def rnn_cell_vjp(g, saved, *, needs):
    x, h, wx, wh, out = saved
    da = g * (1 - out * out)
    return (
        da @ wx.T if needs[0] else None,
        da @ wh.T if needs[1] else None,
        x.T @ da if needs[2] else None,
        h.T @ da if needs[3] else None,
        jnp.sum(da, axis=0) if needs[4] else None,
    )


def _cell_cases(k, outputs=1):
    def cases(rng, dtype):
        n, d, hidden = 3, 4, 5
        args = (normal(rng, (n, d), dtype), normal(rng, (n, hidden), dtype))
        if outputs == 2:  # the LSTM's cell state
            args = args + (normal(rng, (n, hidden), dtype),)
        weights = (
            normal(rng, (d, k * hidden), dtype, 0.5),
            normal(rng, (hidden, k * hidden), dtype, 0.5),
            normal(rng, (k * hidden,), dtype, 0.1),
        )
        return [Case(args + weights, label=f"N={n} D={d} H={hidden}")]

    return cases


rnn_cell.defcases(_cell_cases(1))
rnn_cell.defkinks(smooth=True)


@defgate
def lstm_cell(x, h, c, wx, wh, b):
    """One LSTM step (CS231n's lstm_step_forward).

    One LSTM step (CS231n's lstm_step_forward): a = x wx + h wh + b split into (i, f, o, g)
    gates, i = sigmoid, f = sigmoid, o = sigmoid, g = tanh; c' = f c + i g, h' = o tanh(c').
    x (N, D), h and c (N, H), wx (D, 4H), wh (H, 4H), b (4H,); returns (h', c').

    Local gradients (lstm_step_backward): with dc' = g_c + g_h o (1 - tanh(c')**2):
    di = dc' g, df = dc' c, dg = dc' i, do = g_h tanh(c'), dc = dc' f, each through its gate's
    derivative (s (1 - s), 1 - t**2) into da; then dx = da wx.T, dh = da wh.T, dwx = x.T da,
    dwh = h.T da, db = sum_N da.

    Args:
        x: (N, D).
        h: the hidden state (N, H).
        c: the cell state (N, H).
        wx: (D, 4H).
        wh: (H, 4H).
        b: (4H,).

    Returns:
        (h', c').

    Raises:
        fnn.GateError: c is not shaped like h.
    """
    _check_cell("lstm_cell", x, h, wx, wh, b, 4, like=("c", c, "h", h))
    a = x @ wx + h @ wh + b
    i, f, o, gg = jnp.split(a, 4, axis=1)
    i, f, o, gg = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jax.nn.sigmoid(o), jnp.tanh(gg)
    c_next = f * c + i * gg
    t = jnp.tanh(c_next)
    return (o * t, c_next), (x, h, c, wx, wh, i, f, o, gg, t)


@lstm_cell.defvjp
def lstm_cell_vjp(g, saved, *, needs):
    g_h, g_c = g
    x, h, c, wx, wh, i, f, o, gg, t = saved
    dc_next = g_c + g_h * o * (1 - t * t)
    di, df, do, dg = dc_next * gg, dc_next * c, g_h * t, dc_next * i
    da = jnp.concatenate(
        [di * i * (1 - i), df * f * (1 - f), do * o * (1 - o), dg * (1 - gg * gg)], axis=1
    )
    return (
        da @ wx.T if needs[0] else None,
        da @ wh.T if needs[1] else None,
        dc_next * f if needs[2] else None,
        x.T @ da if needs[3] else None,
        h.T @ da if needs[4] else None,
        jnp.sum(da, axis=0) if needs[5] else None,
    )


lstm_cell.defcases(_cell_cases(4, outputs=2))
lstm_cell.defkinks(smooth=True)


@defgate
def gru_cell(x, h, wx, wh, b, bh):
    """One GRU step (PyTorch's equations).

    One GRU step (PyTorch's): r = sigmoid(x wx_r + h wh_r + b_r + bh_r), z likewise,
    n = tanh(x wx_n + b_n + r (h wh_n + bh_n)), h' = (1 - z) n + z h.
    x (N, D), h (N, H), wx (D, 3H), wh (H, 3H), b and bh (3H,) in the order (r, z, n).

    Local gradients: dn = g (1 - z), dz = g (h - n), dh gets g z directly; through n's tanh
    da_n = dn (1 - n**2), which reaches the hidden side as da_n r and r as da_n (h wh_n + bh_n);
    through the sigmoids da_r = dr r (1 - r), da_z = dz z (1 - z); then the products as usual.

    Args:
        x: (N, D).
        h: the hidden state (N, H).
        wx: (D, 3H).
        wh: (H, 3H).
        b: (3H,), the input side's bias.
        bh: (3H,), the hidden side's bias.

    Returns:
        h' (N, H).

    Raises:
        fnn.GateError: bh is not shaped like b.
    """
    _check_cell("gru_cell", x, h, wx, wh, b, 3, like=("bh", bh, "b", b))
    ax = x @ wx + b
    ah = h @ wh + bh
    ax_r, ax_z, ax_n = jnp.split(ax, 3, axis=1)
    ah_r, ah_z, ah_n = jnp.split(ah, 3, axis=1)
    r, z = jax.nn.sigmoid(ax_r + ah_r), jax.nn.sigmoid(ax_z + ah_z)
    n = jnp.tanh(ax_n + r * ah_n)
    return (1 - z) * n + z * h, (x, h, wx, wh, r, z, n, ah_n)


@gru_cell.defvjp
def gru_cell_vjp(g, saved, *, needs):
    x, h, wx, wh, r, z, n, ah_n = saved
    da_n = g * (1 - z) * (1 - n * n)
    dr = da_n * ah_n
    da_r = dr * r * (1 - r)
    da_z = g * (h - n) * z * (1 - z)
    dax = jnp.concatenate([da_r, da_z, da_n], axis=1)  # x side: (r, z, n) pre-activations
    dah = jnp.concatenate([da_r, da_z, da_n * r], axis=1)  # h side: n's part is gated by r
    dh = g * z + dah @ wh.T
    return (
        dax @ wx.T if needs[0] else None,
        dh if needs[1] else None,
        x.T @ dax if needs[2] else None,
        h.T @ dah if needs[3] else None,
        jnp.sum(dax, axis=0) if needs[4] else None,
        jnp.sum(dah, axis=0) if needs[5] else None,
    )


@gru_cell.defcases
def _gru_cases(rng, dtype):
    n, d, hidden = 3, 4, 5
    return [
        Case(
            (
                normal(rng, (n, d), dtype),
                normal(rng, (n, hidden), dtype),
                normal(rng, (d, 3 * hidden), dtype, 0.5),
                normal(rng, (hidden, 3 * hidden), dtype, 0.5),
                normal(rng, (3 * hidden,), dtype, 0.1),
                normal(rng, (3 * hidden,), dtype, 0.1),
            ),
            label=f"N={n} D={d} H={hidden}",
        )
    ]


gru_cell.defkinks(smooth=True)


# ---- attention -------------------------------------------------------------------------------------------
@defgate
def attention(q, k, v, *, causal: bool = False, scale=None):
    """Scaled dot-product attention: softmax(q k^T * scale (+ causal mask)) v.

    softmax(q k^T * scale (+ causal mask)) v over the last two axes: q (..., T, d),
    k (..., S, d), v (..., S, dv) -> (..., T, dv); scale defaults to 1/sqrt(d); with causal,
    position t attends to s <= t only (T == S).

    Local gradients (fused, no softmax Jacobian): with P the attention weights and g upstream,
    dv = P^T g; dP = g v^T; dS = P (dP - rowsum(dP P)); dq = dS k scale; dk = dS^T q scale.
    (The scores are computed as (q scale) k^T: the scale multiplies q, not the scores.)
    Causal attention over T >= 128 positions runs by blocks of query rows, each against the
    keys it may see (rows [r0, r1) against keys [0, r1)): the masked scores to the right of a
    block are never computed, forward or backward; the values are those of the full product.

    Args:
        q: the queries (..., T, d).
        k: the keys (..., S, d).
        v: the values (..., S, dv).
        causal: position t attends to s <= t only (needs T == S).
        scale: the factor of the scores (None: 1/sqrt(d)).

    Returns:
        (..., T, dv).

    Raises:
        fnn.GateError: the shapes of q, k and v do not fit, or causal with T != S.
    """
    if jnp.ndim(q) < 2 or np.shape(q)[-1] != np.shape(k)[-1] or np.shape(k)[-2] != np.shape(v)[-2]:
        raise GateError(
            f"gate 'attention': q (..., T, d), k (..., S, d) and v (..., S, dv) "
            f"must agree, got q {describe(q)}, k {describe(k)}, v {describe(v)}"
        )
    # a Python float: weakly typed, so bfloat16 inputs stay bfloat16 (np.sqrt's float64 would
    # promote the scores, the output and the gradients to float32)
    scale = 1.0 / float(np.sqrt(q.shape[-1])) if scale is None else scale
    if causal and q.shape[-2] != k.shape[-2]:
        raise GateError(
            f"gate 'attention': causal attention needs T == S, got q {describe(q)}, k {describe(k)}"
        )
    # q scaled before the product (q is the smaller array; its scaling fuses into whatever
    # wrote q, where a scale of the scores would be one more pass over (..., T, S))
    qs = q * scale
    # blocks of query rows [r0, r1), each against keys [0, n): without the mask one block of all
    # rows and keys; causal, row r sees keys [0, r] only, so a block's keys end at r1 and the
    # scores right of it are never formed
    # scores softmax-normalized over the keys by the softmax gate's own forward (the mask as its
    # `where`), differentiated in the VJP by its own rule
    ps, outs = [], []
    for r0, r1, n in _row_blocks(q.shape[-2], k.shape[-2], causal):
        s = jnp.einsum("...td,...sd->...ts", qs[..., r0:r1, :], k[..., :n, :])
        mask = np.arange(r0, r1)[:, None] >= np.arange(n)[None, :] if causal else None
        ps.append(softmax.forward(s, mask)[0])
        outs.append(jnp.einsum("...ts,...sd->...td", ps[-1], v[..., :n, :]))
    return jnp.concatenate(outs, axis=-2), (qs, k, v, tuple(ps), scale)


def _row_blocks(t, keys, causal):
    """The blocks (r0, r1, n) of query rows [r0, r1) against keys [0, n): one block of all rows
    and keys without the causal mask, or below 128 positions; else min(4, t // 64) blocks of
    near-equal rows (none shorter than 64), each against the keys up to its last row. Fewer,
    larger blocks keep the products large; each block skips the scores to the right of its
    rows, a quarter of all scores with 2 blocks and 3/8 with 4."""
    nb = min(4, t // 64) if causal and t >= 128 else 1
    bounds = [i * t // nb for i in range(nb + 1)]
    return [(r0, r1, r1 if causal else keys) for r0, r1 in zip(bounds[:-1], bounds[1:])]


@attention.defvjp
def attention_vjp(g, saved, *, needs, causal=False, scale=None):
    """Per row block of the forward (one block of P each, (..., r1 - r0, n)): the block's dq
    rows; its dk and dv for keys [0, n), zero-padded to all S keys and summed over the blocks
    (in float32 at least, so that bfloat16 shares are not rounded before they are added). The
    scale goes on the (..., T, d) arrays, not on dS: dq = dS k scale, dk = dS^T (q scale)."""
    qs, k, v, ps, scale = saved
    acc = jnp.promote_types(g.dtype, jnp.float32)
    keys = k.shape[-2]
    dqs, dks, dvs = [], [], []
    for p, (r0, r1, n) in zip(ps, _row_blocks(g.shape[-2], keys, causal)):
        g_b = g[..., r0:r1, :]
        pad = [(0, 0)] * (g.ndim - 2) + [(0, keys - n), (0, 0)]  # keys [0, n) of S
        if needs[2]:
            dvs.append(
                jnp.pad(jnp.einsum("...ts,...td->...sd", p, g_b, preferred_element_type=acc), pad)
            )
        (ds,) = softmax_vjp(jnp.einsum("...td,...sd->...ts", g_b, v[..., :n, :]), p, needs=(True,))
        if needs[0]:
            dqs.append(jnp.einsum("...ts,...sd->...td", ds, k[..., :n, :]) * scale)
        if needs[1]:
            dks.append(
                jnp.pad(
                    jnp.einsum(
                        "...ts,...td->...sd", ds, qs[..., r0:r1, :], preferred_element_type=acc
                    ),
                    pad,
                )
            )
    # leading axes broadcast in the forward (one k, v for a batch of q) summed back
    return (
        unbroadcast(jnp.concatenate(dqs, axis=-2), qs) if needs[0] else None,
        unbroadcast(sum(dks[1:], dks[0]), k) if needs[1] else None,
        unbroadcast(sum(dvs[1:], dvs[0]), v) if needs[2] else None,
    )


@attention.defcases
def _attention_cases(rng, dtype):
    n = lambda *s: normal(rng, s, dtype)
    return [
        Case((n(2, 5, 4), n(2, 5, 4), n(2, 5, 3)), {"causal": True}, label="causal"),
        Case((n(2, 2, 3, 4), n(2, 2, 6, 4), n(2, 2, 6, 4)), label="(B, H, T, d) cross"),
        # 130 positions: causal row blocks [0, 65) and [65, 130)
        Case((n(130, 2), n(130, 2), n(130, 3)), {"causal": True}, label="causal, row blocks"),
    ]


attention.defkinks(smooth=True)
