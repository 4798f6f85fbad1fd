"""Sequence layers: token embeddings, recurrent layers through time, attention, positional
encodings and the pre-norm transformer block (conventions: fnn/nn/combinators.py).

Sequences are (batch, time, features); token ids (batch, time) integers. The shape of ONE
example has no batch axis: (T,) ids, (T, D) features.

    Embedding(vocab, dim)               ids (T,) -> (T, dim), the `embedding` gate
    RNN(h), LSTM(h), GRU(h)             (T, D) -> (T, h) (or (h,) with return_sequences=False):
                                        one gate over the whole sequence (fnn.ops.recurrent: one
                                        input matmul, a `lax.scan` of the recurrent part, weight
                                        gradients as one matmul each), or with per_step=True the
                                        fused cell gate run over time by `lax.scan`
    MultiHeadAttention(heads)           (T, D) -> (T, D): q, k, v projections, the `attention`
                                        gate per head (causal by default), an output projection
    PositionalEncoding(kind)            adds learned or sinusoidal (Vaswani et al. 2017) positions
    TransformerBlock(heads)             pre-norm: x + attn(ln(x)), then x + mlp(ln(x))

Initializers as in the literature: input kernels glorot-uniform, recurrent kernels orthogonal
per gate (Saxe et al. 2014), biases zero except the LSTM's forget gate at 1 (Jozefowicz et al.
2015); attention and MLP kernels glorot, learned positions N(0, 0.02**2) (GPT-2).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fnn.autodiff import overrides
from fnn.autodiff.tape import current_scope
from fnn.ops import affine, reshape
from fnn.nn.activations import Activation
from fnn.nn.combinators import Layer, check_input_shape, residual, serial
from fnn.nn.initializers import get_initializer, normal
from fnn.nn.layers import Dense, Dropout
from fnn.nn.normalization import LayerNorm
from fnn.ops.recurrent import gru_sequence, lstm_sequence, rnn_sequence
from fnn.ops.sequence import attention, embedding, gru_cell, lstm_cell, rnn_cell


def _positive(v, what: str) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{what} must be a positive int, got {v!r}")
    return int(v)


def _sequence_shape(name: str, input_shape) -> tuple[int, int]:
    shape = check_input_shape(name, input_shape)
    if len(shape) != 2:
        raise ValueError(
            f"{name} takes sequences (T, D) per example ((batch, time, features) "
            f"batches), got input shape {shape}"
        )
    return shape


def _check_sequences(name: str, x, dim: int) -> None:
    if jnp.ndim(x) != 3 or x.shape[-1] != dim:
        raise ValueError(
            f"{name}: expects (batch, time, {dim}) inputs, got shape "
            f"{tuple(jnp.shape(x))} ({jnp.result_type(x)})"
        )


# ---- embedding ------------------------------------------------------------------------------------
def Embedding(
    vocab_size: int, dim: int, *, padding_idx: int | None = None, init=normal(1.0)
) -> Layer:
    """Token ids (batch, T) -> vectors (batch, T, dim): rows of a (vocab_size, dim) table.

    Args:
        vocab_size: the number of rows.
        dim: the width of each vector.
        padding_idx: that id reads (and trains) nothing: its row is zero.
        init: the table's initializer (default: N(0, 1) entries, PyTorch's).

    Returns:
        The Layer ("embedding"); params {"table"}.

    Raises:
        ValueError: `vocab_size` or `dim` is not a positive int, `padding_idx` is outside
            [0, vocab_size), the initializer is unknown; (from apply) the ids are not integers.
    """
    vocab_size = _positive(vocab_size, "Embedding vocab_size")
    dim = _positive(dim, "Embedding dim")
    if padding_idx is not None and not 0 <= padding_idx < vocab_size:
        raise ValueError(
            f"Embedding padding_idx must lie in [0, {vocab_size}), got {padding_idx!r}"
        )
    table_init = get_initializer(init)

    def init_fn(key, input_shape):
        shape = check_input_shape("Embedding", input_shape)
        table = table_init(key, (vocab_size, dim))
        if padding_idx is not None:
            table = table.at[padding_idx].set(0)
        return {"table": table}, {}, (*shape, dim)

    def apply(params, state, x, *, key=None, train=False):
        if not jnp.issubdtype(jnp.result_type(x), jnp.integer):
            raise ValueError(
                f"Embedding: expects integer token ids, got shape "
                f"{tuple(jnp.shape(x))} ({jnp.result_type(x)})"
            )
        return embedding(params["table"], x, padding_idx=padding_idx), state

    return Layer("embedding", init_fn, apply)


# ---- recurrent layers -----------------------------------------------------------------------------
_CELLS = {"rnn": (rnn_cell, 1), "lstm": (lstm_cell, 4), "gru": (gru_cell, 3)}
_SEQUENCES = {"rnn": rnn_sequence, "lstm": lstm_sequence, "gru": gru_sequence}


def Recurrent(
    kind: str,
    hidden: int,
    *,
    return_sequences: bool = True,
    init="glorot_uniform",
    recurrent_init="orthogonal",
    per_step: bool = False,
) -> Layer:
    """A recurrent layer of `kind` 'rnn' (tanh), 'lstm' or 'gru', over (batch, T, D) inputs.

    From a zero state: (batch, T, hidden) every step's hidden state, or (batch, hidden) the last
    one (return_sequences=False).

    Params: wx (D, k*hidden), wh (hidden, k*hidden), b (k*hidden,) (and the GRU's bh) with k
    the number of gates; gate order (i, f, o, g) for the LSTM, (r, z, n) for the GRU.

    The layer is one gate over the whole sequence (`rnn_sequence`, `lstm_sequence`,
    `gru_sequence`, fnn.ops.recurrent): the input projection of all steps as one matmul, a
    `lax.scan` of the recurrent part, and a hand-written backward whose weight gradients are one
    matmul each. per_step=True runs the per-step cell gate (`rnn_cell`, `lstm_cell`,
    `gru_cell`) in a `lax.scan` instead, differentiated by fnn's backpropagation through time
    step by step: the lecture's picture. The layer does so by itself where a rule override
    of its cell gate is in effect for its layer (`fnn.rules(lstm_cell=...)`,
    `fnn.grad(..., rules={"lstm_cell": fnn.only(rule, "1_lstm")})`), so that the override
    acts. Both give the same values and gradients up to rounding; trace and compile time do
    not grow with T.

    Args:
        kind: 'rnn', 'lstm' or 'gru'.
        hidden: the number of hidden units.
        return_sequences: every step's hidden state (True) or the last one.
        init: the initializer of wx.
        recurrent_init: the initializer of wh.
        per_step: run the per-step cell gate in a `lax.scan` (see above).

    Returns:
        The Layer (named after `kind`).

    Raises:
        ValueError: `kind` is not one of the three, `hidden` is not a positive int, an
            initializer is unknown; (from init or apply) the inputs are not (batch, T, D)
            sequences.
    """
    if kind not in _CELLS:
        raise ValueError(f"Recurrent kind must be one of {', '.join(_CELLS)}, got {kind!r}")
    hidden = _positive(hidden, f"{kind.upper()} hidden")
    w_init, r_init = get_initializer(init), get_initializer(recurrent_init)

    def init_fn(key, input_shape):
        t, d = _sequence_shape(kind.upper(), input_shape)
        params = _recurrent_params(kind, hidden, d, key, w_init, r_init)
        return params, {}, ((t, hidden) if return_sequences else (hidden,))

    def apply(params, state, x, *, key=None, train=False):
        _check_sequences(kind.upper(), x, params["wx"].shape[0])
        hs, last = _run_recurrent(kind, hidden, params, x, per_step)
        return (jnp.swapaxes(hs, 0, 1) if return_sequences else last), state

    return Layer(kind, init_fn, apply)


def _recurrent_params(kind: str, hidden: int, d: int, key, w_init, r_init) -> dict:
    """A Recurrent layer's params over `d` input features: wx, wh, b (and the GRU's bh)."""
    k = _CELLS[kind][1]
    kx, kh = jax.random.split(key)
    b = jnp.zeros((k * hidden,), jnp.float32)
    if kind == "lstm":  # forget gate bias 1: remember by default (Jozefowicz et al. 2015)
        b = b.at[hidden : 2 * hidden].set(1.0)
    params = {"wx": w_init(kx, (d, k * hidden)), "wh": r_init(kh, (hidden, k * hidden)), "b": b}
    if kind == "gru":
        params["bh"] = jnp.zeros((k * hidden,), jnp.float32)
    return params


def _run_recurrent(kind: str, hidden: int, params, x, per_step: bool):
    """(hs time-major, h_T) of a Recurrent layer from a zero state: its sequence gate, or its
    cell gate step by step (per_step, or a rule override of the cell gate in effect for the
    layer's scope)."""
    cell = _CELLS[kind][0]
    dtype = jnp.result_type(x, params["wh"])
    h0 = jnp.zeros((x.shape[0], hidden), dtype)
    extra = (params["bh"],) if kind == "gru" else ()
    if per_step or overrides.find(cell, current_scope()) is not None:
        return _over_cells(cell, kind, params, extra, x, h0)
    states = (h0, h0) if kind == "lstm" else (h0,)
    hs, last, *_ = _SEQUENCES[kind](
        jnp.swapaxes(x.astype(dtype), 0, 1),
        *states,
        params["wx"],
        params["wh"],
        params["b"],
        *extra,
    )
    return hs, last


def _over_cells(cell, kind, params, extra, x, h0):
    """(hs time-major, h_T): the cell gate applied at each step of a lax.scan."""

    def step(carry, xt):
        if kind == "lstm":
            h, c = cell(xt, carry[0], carry[1], params["wx"], params["wh"], params["b"])
            return (h, c), h
        h = cell(xt, carry, params["wx"], params["wh"], params["b"], *extra)
        return h, h

    last, hs = lax.scan(step, (h0, h0) if kind == "lstm" else h0, jnp.swapaxes(x, 0, 1))
    return hs, (last[0] if kind == "lstm" else last)


def RNN(hidden: int, **options) -> Layer:
    """A vanilla (tanh) RNN layer over time: h_t = tanh(x_t wx + h_{t-1} wh + b).

    `Recurrent("rnn", hidden, **options)`.

    Args:
        hidden: the number of hidden units.
        **options: Recurrent's keyword options (return_sequences, init, recurrent_init,
            per_step).

    Returns:
        The Layer.

    Raises:
        ValueError: as for Recurrent.
    """
    return Recurrent("rnn", hidden, **options)


def LSTM(hidden: int, **options) -> Layer:
    """An LSTM layer over time (forget-gate bias 1, orthogonal recurrent kernels).

    `Recurrent("lstm", hidden, **options)`.

    Args:
        hidden: the number of hidden units.
        **options: Recurrent's keyword options (return_sequences, init, recurrent_init,
            per_step).

    Returns:
        The Layer.

    Raises:
        ValueError: as for Recurrent.
    """
    return Recurrent("lstm", hidden, **options)


def GRU(hidden: int, **options) -> Layer:
    """A GRU layer over time (PyTorch's equations).

    `Recurrent("gru", hidden, **options)`.

    Args:
        hidden: the number of hidden units.
        **options: Recurrent's keyword options (return_sequences, init, recurrent_init,
            per_step).

    Returns:
        The Layer.

    Raises:
        ValueError: as for Recurrent.
    """
    return Recurrent("gru", hidden, **options)


# ---- attention -------------------------------------------------------------------------------------
def MultiHeadAttention(heads: int, *, causal: bool = True, init="glorot") -> Layer:
    """Multi-head self-attention over (batch, T, D).

    q, k, v = x wqkv + bqkv split into `heads` heads of D / heads features,
    softmax(q k^T / sqrt(D / heads) (+ causal mask)) v per head (the fused `attention` gate),
    heads concatenated and projected by wo, bo.

    Args:
        heads: the number of heads (it must divide D).
        causal: each position attends to itself and earlier positions only (a language model).
        init: the initializer of wqkv and wo.

    Returns:
        The Layer ("attention"); params {"wqkv", "bqkv", "wo", "bo"}.

    Raises:
        ValueError: `heads` is not a positive int, the initializer is unknown; (from init) the
            input is not (T, D) per example or D is not divisible by `heads`; (from apply) the
            inputs are not (batch, T, D).
    """
    heads = _positive(heads, "MultiHeadAttention heads")
    w_init = get_initializer(init)

    def init_fn(key, input_shape):
        t, d = _sequence_shape("MultiHeadAttention", input_shape)
        if d % heads:
            raise ValueError(
                f"MultiHeadAttention: the width {d} must be divisible by heads {heads}"
            )
        k1, k2 = jax.random.split(key)
        params = {
            "wqkv": w_init(k1, (d, 3 * d)),
            "bqkv": jnp.zeros((3 * d,), jnp.float32),
            "wo": w_init(k2, (d, d)),
            "bo": jnp.zeros((d,), jnp.float32),
        }
        return params, {}, (t, d)

    def apply(params, state, x, *, key=None, train=False):
        d = params["wo"].shape[0]
        _check_sequences("MultiHeadAttention", x, d)
        b, t = x.shape[:2]
        qkv = affine(reshape(x, shape=(b * t, d)), params["wqkv"], params["bqkv"])
        qkv = jnp.transpose(jnp.reshape(qkv, (b, t, 3, heads, d // heads)), (2, 0, 3, 1, 4))
        y = attention(qkv[0], qkv[1], qkv[2], causal=causal)  # (b, heads, t, d / heads)
        y = jnp.reshape(jnp.transpose(y, (0, 2, 1, 3)), (b * t, d))
        return reshape(affine(y, params["wo"], params["bo"]), shape=(b, t, d)), state

    return Layer("attention", init_fn, apply)


def sinusoids(length: int, dim: int) -> np.ndarray:
    """The (length, dim) sinusoidal encodings of Vaswani et al. 2017.

    sin(pos / 10000**(2i/dim)) at even features 2i, cos at odd features 2i+1.

    Args:
        length: the number of positions.
        dim: the width.

    Returns:
        A float32 NumPy array (length, dim).
    """
    pos = np.arange(length, dtype=np.float64)[:, None]
    rate = np.exp(-math.log(10000.0) * np.arange(0, dim, 2, dtype=np.float64) / dim)
    out = np.zeros((length, dim))
    out[:, 0::2] = np.sin(pos * rate)
    out[:, 1::2] = np.cos(pos * rate)[:, : dim // 2]
    return out.astype(np.float32)


def PositionalEncoding(kind: str = "learned", *, max_len: int | None = None) -> Layer:
    """x + the encoding of each position, on (batch, T, D) inputs.

    Args:
        kind: 'learned' (a (max_len, D) parameter, N(0, 0.02**2), GPT-2) or 'sinusoidal' (fixed,
            no parameters).
        max_len: the longest input (default: the T of the input shape); longer inputs are
            refused.

    Returns:
        The Layer (f"{kind}_positions").

    Raises:
        ValueError: `kind` is not valid; (from init) `max_len` is not a positive int or is
            shorter than the input; (from apply) the input is longer than `max_len` or not
            (batch, T, D).
    """
    if kind not in ("learned", "sinusoidal"):
        raise ValueError(f"PositionalEncoding kind must be 'learned' or 'sinusoidal', got {kind!r}")

    def init_fn(key, input_shape):
        t, d = _sequence_shape("PositionalEncoding", input_shape)
        n = t if max_len is None else _positive(max_len, "PositionalEncoding max_len")
        if n < t:
            raise ValueError(
                f"PositionalEncoding: max_len {n} is shorter than the input's {t} positions"
            )
        params = {"pos": normal(0.02)(key, (n, d))} if kind == "learned" else {}
        return params, {}, (t, d)

    def apply(params, state, x, *, key=None, train=False):
        t, d = x.shape[-2:]
        n = params["pos"].shape[0] if kind == "learned" else (max_len or t)
        if jnp.ndim(x) != 3 or t > n:
            raise ValueError(
                f"PositionalEncoding: expects (batch, T <= {n}, {d}) inputs, got "
                f"shape {tuple(jnp.shape(x))}"
            )
        pos = params["pos"][:t] if kind == "learned" else jnp.asarray(sinusoids(t, d), x.dtype)
        return x + pos, state

    return Layer(f"{kind}_positions", init_fn, apply)


def TransformerBlock(
    width: int,
    heads: int,
    *,
    mlp_ratio: int = 4,
    dropout: float = 0.0,
    causal: bool = True,
    activation: str = "gelu",
) -> Layer:
    """The pre-norm transformer block (GPT-2) on (batch, T, width).

    x + attention(LayerNorm(x)), then x + mlp(LayerNorm(x)) with
    mlp = Dense(mlp_ratio * width) - gelu - Dense(width) on each position; optional dropout at
    the end of each branch. A serial of two residuals, so layer paths read
    'transformer_block/0_attention/main/1_attention'.

    Args:
        width: the model's width.
        heads: the attention heads.
        mlp_ratio: the MLP's hidden width, as a multiple of `width`.
        dropout: the dropout rate at the end of each branch (0: none).
        causal: causal attention (a language model).
        activation: the MLP's activation (fnn.nn.ACTIVATIONS).

    Returns:
        The Layer (a serial named "transformer_block").

    Raises:
        ValueError: `width`, `heads` or `mlp_ratio` is not a positive int, the activation or the
            dropout rate is not valid; (from init) `width` is not divisible by `heads`.
    """
    width = _positive(width, "TransformerBlock width")
    mlp_ratio = _positive(mlp_ratio, "TransformerBlock mlp_ratio")
    drop = (Dropout(dropout),) if dropout else ()
    attend = serial(LayerNorm(), MultiHeadAttention(heads, causal=causal), *drop, name="attend")
    mlp = serial(
        LayerNorm(),
        Dense(mlp_ratio * width, init="glorot", flatten=False),
        Activation(activation),
        Dense(width, init="glorot", flatten=False),
        *drop,
        name="mlp",
    )
    return serial(
        residual(attend, name="attention"),
        residual(mlp, name="feedforward"),
        name="transformer_block",
    )
