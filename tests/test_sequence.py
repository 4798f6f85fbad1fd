"""Sequence models (issue 13): layers against jax.grad (eager, jit, vmap), backpropagation
through a long scan, the text dataset, training beyond (N, C) classification, custom/builtin
parity over 100 steps, the CLI's train and sample on text."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn import nn
from fnn.cli import main
from fnn.ops import softmax_cross_entropy
from fnn.train import fit, make_optimizer
from fnn.train.data import Dataset
from fnn.train.state import init_train_state
from fnn.train.step import make_train_step
from fnn.train.text import DataError, Vocab, load_text, windows

V, T, B = 7, 6, 3


def _f64(tree):
    return jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
    )


def _close(a, b, rtol=1e-9, atol=1e-11):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


LAYERS = {  # name -> (layer, one example's input shape, integer ids?)
    "embedding": (nn.Embedding(V, 4, padding_idx=0), (T,), True),
    "rnn": (nn.RNN(5), (T, 3), False),
    "lstm": (nn.LSTM(5), (T, 3), False),
    "gru": (nn.GRU(5), (T, 3), False),
    "lstm_last": (nn.LSTM(5, return_sequences=False), (T, 3), False),
    "gru_last": (nn.GRU(5, return_sequences=False), (T, 3), False),
    "lstm_per_step": (nn.LSTM(5, per_step=True), (T, 3), False),
    "attention": (nn.MultiHeadAttention(2), (T, 4), False),
    "learned_positions": (nn.PositionalEncoding("learned"), (T, 4), False),
    "sinusoidal_positions": (nn.PositionalEncoding("sinusoidal"), (T, 4), False),
    "transformer_block": (nn.TransformerBlock(4, 2), (T, 4), False),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_gradients_match_jax_eager_jit_and_vmap(name):
    jax.config.update("jax_enable_x64", True)
    try:
        layer, shape, ids = LAYERS[name]
        params, state, out = layer.init(jax.random.PRNGKey(1), shape)
        params = _f64(params)
        r = np.random.default_rng(0)
        x = (
            jnp.asarray(r.integers(0, V, (B, *shape)))
            if ids
            else jnp.asarray(r.standard_normal((B, *shape)))
        )
        w = jnp.asarray(r.standard_normal((B, *out)))  # a random linear read-out

        def loss(p, x):
            y, _ = layer.apply(p, state, x)
            assert y.shape == (x.shape[0], *out)
            return jnp.sum(jnp.sin(y) * w[: x.shape[0]])

        # fnn.grad eagerly and under jit; per-example gradients (vmap) under jit: the
        # references and the vmaps compiled, not run op by op (4-5x faster, same values)
        want = jax.jit(jax.grad(loss))(params, x)
        _close(fnn.grad(loss)(params, x), want)
        _close(jax.jit(fnn.grad(loss))(params, x), want)
        per_example = jax.jit(jax.vmap(fnn.grad(lambda p, x: loss(p, x[None])), (None, 0)))
        _close(
            per_example(params, x),
            jax.jit(jax.vmap(jax.grad(lambda p, x: loss(p, x[None])), (None, 0)))(params, x),
        )
    finally:
        jax.config.update("jax_enable_x64", False)


def _gate_names(records) -> set:
    """Names of the gates of a tape's records, and of those inside scan bodies' templates."""
    names = set()
    for rec in records:
        names.add(rec.gate.name)
        if rec.gate.name == "lax.scan":
            names |= _gate_names(shell for shell, _, _ in rec.saved[0].records)
    return names


def _lm_names(name, **options):
    """The gate names of the tape of a small language model's loss (`options` for the layer)."""
    model = nn.build_model(
        name,
        V,
        **({"width": 8, "depth": 1, "heads": 2} if name == "transformer" else {"hidden": (4,)}),
    )
    params, state, _ = model.init(jax.random.PRNGKey(0), (T,))
    ids = jnp.zeros((2, T), jnp.int32)
    tr = fnn.trace(lambda p: softmax_cross_entropy(model.apply(p, state, ids)[0], ids), params)
    return _gate_names(tr.tape.records)


def test_the_sequence_gates_and_attention_rules_are_used_inside_the_trace():
    for name, gate in (
        ("lstm", "lstm_sequence"),
        ("rnn", "rnn_sequence"),
        ("gru", "gru_sequence"),
        ("transformer", "attention"),
    ):
        names = _lm_names(name)
        assert {"embedding", gate} <= names, names
        assert "lax.logistic" not in names and "lax.tanh" not in names  # no cell internals
        assert "lax.scan" not in names and not any(n.endswith("_cell") for n in names), names


def test_a_cell_override_runs_the_cells_where_it_applies():
    """An override of a cell gate acts: the layer runs its cells (in a scan) in the layers the
    override applies to, and the sequence gate elsewhere."""

    def rule(g, *inputs, original):
        return original(g)

    with fnn.rules(lstm_cell=rule):
        names = _lm_names("lstm")
    assert {"lax.scan", "lstm_cell"} <= names and "lstm_sequence" not in names, names
    with fnn.rules(lstm_cell=fnn.only(rule, "9_lstm")):
        names = _lm_names("lstm")
    assert "lstm_sequence" in names and "lstm_cell" not in names, names
    with fnn.rules(gru_cell=rule):  # another kind's cell changes nothing here
        assert "lstm_sequence" in _lm_names("lstm")


@pytest.mark.parametrize(
    "kind, last", [("rnn", False), ("lstm", False), ("lstm", True), ("gru", True)]
)
def test_sequence_gate_and_per_step_cells_agree(kind, last, x64):
    """The layer's two paths, float64: the same outputs, and gradients (params and inputs) by
    fnn.grad and jax.grad, also per example under vmap."""
    r = np.random.default_rng(2)
    x = jnp.asarray(r.standard_normal((B, 9, 3)))
    fused, cells = (
        nn.Recurrent(kind, 4, return_sequences=not last, per_step=p) for p in (False, True)
    )
    params, state, out = fused.init(jax.random.PRNGKey(4), (9, 3))
    params = _f64(params)
    w = jnp.asarray(r.standard_normal((B, *out)))

    def loss(layer):
        return lambda p, x: jnp.sum(jnp.tanh(layer.apply(p, state, x)[0]) * w[: x.shape[0]])

    def all_of(p, x):  # one compiled program: op by op is several times slower
        grads = [
            g(loss(layer), argnums=(0, 1))(p, x)
            for g in (fnn.grad, jax.grad)
            for layer in (fused, cells)
        ]
        per_example = [
            jax.vmap(
                fnn.grad(lambda p, x: loss(layer)(p, x[None])),  # noqa: B023 (called in this iteration)
                (None, 0),
            )(p, x)
            for layer in (fused, cells)
        ]
        return [layer.apply(p, state, x)[0] for layer in (fused, cells)], grads, per_example

    outs, grads, per_example = jax.jit(all_of)(params, x)
    _close(outs[0], outs[1], 1e-12, 1e-14)
    for got in grads[:3]:  # fnn: sequence gate, cells; jax.grad: sequence gate
        _close(got, grads[3], 1e-10, 1e-12)
    _close(per_example[0], per_example[1], 1e-10, 1e-12)


@pytest.mark.parametrize("kind, per_step", [("lstm", False), ("gru", False), ("lstm", True)])
def test_backprop_through_512_steps_matches_jax_without_nan(kind, per_step, x64):
    layer = nn.Recurrent(kind, 8, return_sequences=False, per_step=per_step)
    params, state, _ = layer.init(jax.random.PRNGKey(3), (512, 2))
    params = _f64(params)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 512, 2)))

    def loss(p, x):
        return jnp.sum(layer.apply(p, state, x)[0] ** 2)

    got = jax.jit(fnn.grad(loss, argnums=(0, 1)))(params, x)
    want = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(got))
    _close(got, want, rtol=1e-10, atol=1e-12)


def test_initializers_follow_the_literature():
    params, _, _ = nn.LSTM(6).init(jax.random.PRNGKey(0), (T, 3))
    wh = np.asarray(params["wh"])
    for k in range(4):  # one orthogonal block per gate
        block = wh[:, 6 * k : 6 * (k + 1)]
        np.testing.assert_allclose(block @ block.T, np.eye(6), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(params["b"][6:12]), 1.0)  # forget gate
    np.testing.assert_array_equal(np.asarray(params["b"][:6]), 0.0)
    pe = nn.sinusoids(50, 8)
    np.testing.assert_allclose(pe[7, 0], np.sin(7.0), rtol=1e-6)
    np.testing.assert_allclose(pe[7, 3], np.cos(7 / 10000 ** (2 / 8)), rtol=1e-6)


def test_causal_attention_ignores_the_future():
    layer = nn.MultiHeadAttention(2)
    params, state, _ = layer.init(jax.random.PRNGKey(0), (T, 4))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, T, 4)), jnp.float32)
    y1, _ = layer.apply(params, state, x)
    y2, _ = layer.apply(params, state, x.at[:, 4:].set(9.0))
    np.testing.assert_allclose(np.asarray(y1[:, :4]), np.asarray(y2[:, :4]), rtol=1e-6)
    assert not np.allclose(np.asarray(y1[:, 4:]), np.asarray(y2[:, 4:]))


@pytest.mark.parametrize("t", [127, 130, 256, 300])
def test_causal_attention_by_row_blocks_is_the_full_masked_softmax(t, x64):
    """From 128 positions the causal gate computes by blocks of query rows (the scores right of
    each block never formed): its values and gradients are those of the one full masked
    product, in float64, and its gradient is JAX's gradient of that product."""
    r = np.random.default_rng(t)
    q, k, v, w = (jnp.asarray(r.standard_normal((2, t, 3))) for _ in range(4))

    def full(q, k, v):
        s = jnp.einsum("...td,...sd->...ts", q, k) / np.sqrt(3.0)
        s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -jnp.inf)
        return jnp.einsum("...ts,...sd->...td", jax.nn.softmax(s, axis=-1), v)

    gate = fnn.registry["attention"]
    _close(gate(q, k, v, causal=True), full(q, k, v), rtol=1e-12, atol=1e-13)
    _close(
        fnn.grad(lambda *a: jnp.sum(gate(*a, causal=True) * w), argnums=(0, 1, 2))(q, k, v),
        jax.grad(lambda *a: jnp.sum(full(*a) * w), argnums=(0, 1, 2))(q, k, v),
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.parametrize("causal", [False, True])
def test_attention_with_keys_and_values_broadcast_over_the_queries_batch(causal, x64):
    """One k, v (S, d) for a batch of q (B, T, d): the gradients of k and v are summed over the
    batch they were broadcast to, as jax.grad's are."""
    r = np.random.default_rng(3)
    q, w = (jnp.asarray(r.standard_normal((2, 130, 3))) for _ in range(2))
    k, v = (jnp.asarray(r.standard_normal((130, 3))) for _ in range(2))
    gate = fnn.registry["attention"]

    def f(grad):
        return grad(lambda *a: jnp.sum(gate(*a, causal=causal) * w), argnums=(0, 1, 2))(q, k, v)

    got, want = f(fnn.grad), f(jax.grad)
    assert [a.shape for a in got] == [(2, 130, 3), (130, 3), (130, 3)]
    _close(got, want, rtol=1e-10, atol=1e-12)


def test_layers_refuse_bad_inputs_with_their_shapes():
    params, state, _ = nn.LSTM(4).init(jax.random.PRNGKey(0), (T, 3))
    with pytest.raises(ValueError, match=r"LSTM: expects \(batch, time, 3\).*\(2, 6, 5\)"):
        nn.LSTM(4).apply(params, state, jnp.zeros((2, T, 5)))
    with pytest.raises(ValueError, match="divisible by heads"):
        nn.MultiHeadAttention(3).init(jax.random.PRNGKey(0), (T, 4))
    with pytest.raises(ValueError, match="integer token ids"):
        emb = nn.Embedding(V, 2)
        p, s, _ = emb.init(jax.random.PRNGKey(0), (T,))
        emb.apply(p, s, jnp.zeros((1, T)))
    with pytest.raises(ValueError, match="max_len 4 is shorter"):
        nn.PositionalEncoding(max_len=4).init(jax.random.PRNGKey(0), (T, 4))


# ---- text data ------------------------------------------------------------------------------------
def _corpus(tmp_path, n=4000):
    folder = tmp_path / "corpus"
    folder.mkdir()
    text = "".join(f"def f{i}(x):\n    return x * {i % 7}\n" for i in range(n // 28 + 1))[:n]
    (folder / "a.py").write_text(text[: n // 2])
    (folder / "b.txt").write_text(text[n // 2 :])
    (folder / "blob.bin").write_bytes(b"\x00\x01binary")
    return folder, text


def test_text_dataset_splits_by_position_and_shifts_targets(tmp_path):
    folder, text = _corpus(tmp_path)
    d = load_text(str(folder), context=16, val_fraction=0.1)
    vocab = d["vocab"]
    assert vocab.decode(vocab.encode(text)) == text.encode()  # the binary file is skipped
    ids = vocab.encode(text)
    np.testing.assert_array_equal(d["x_train"][0], ids[:16])
    np.testing.assert_array_equal(d["y_train"][0], ids[1:17])
    n_train = len(ids) - int(len(ids) * 0.05) - int(len(ids) * 0.95 * 0.1)
    np.testing.assert_array_equal(d["x_val"][0], ids[n_train : n_train + 16])
    np.testing.assert_array_equal(
        d["x_test"][-1][-1], ids[len(ids) - 1 - ((int(len(ids) * 0.05) - 1) % 16) - 1]
    )
    assert d["unigram_loss"] > 0 and "3 files" not in d["description"]
    vocab.save(str(tmp_path))
    assert Vocab.load(str(tmp_path)) == vocab
    with pytest.raises(DataError, match="never saw"):
        vocab.encode("é")
    with pytest.raises(DataError, match="does not exist"):
        load_text(str(tmp_path / "missing"))
    with pytest.raises(DataError, match="too few"):
        load_text(str(folder / "a.py"), context=4000)
    x, y = windows(np.arange(10), 3)
    assert x.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]] and y[-1].tolist() == [7, 8, 9]


def test_default_corpus_is_the_standard_library():
    from fnn.train.text import read_corpus, stdlib_files

    files = stdlib_files()
    assert any(f.endswith("os.py") for f in files) and files == sorted(files)
    text, used = read_corpus(None)
    assert len(text) > 1_000_000 and len(used) == len(files)


# ---- training beyond (N, C) ----------------------------------------------------------------------
def _text_data(n=32, t=8, v=V, seed=0):
    r = np.random.default_rng(seed)
    ids = r.integers(0, v, (n + 4, t + 1)).astype(np.int32)
    x, y = ids[:, :-1], ids[:, 1:]
    return Dataset(
        "text",
        x[:n],
        y[:n],
        x[n:],
        y[n:],
        x[n:],
        y[n:],
        v,
        vocab=Vocab(tuple(range(v))),
        unigram_loss=float(np.log(v)),
    )


def test_fit_takes_per_token_labels_and_a_callable_loss():
    data = _text_data()
    model = nn.build_model("gru", V, hidden=(8,))

    def masked_ce(logits, labels):  # a user's loss: the padding token 0 counts for nothing
        return softmax_cross_entropy(logits, labels, ignore_index=0)

    ts, history = fit(
        model, make_optimizer("adam", 1e-2), data, epochs=2, batch_size=8, loss=masked_ce
    )
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert 0 <= history[-1]["val_acc"] <= 1 and np.isfinite(history[-1]["val_loss"])


def test_fit_regression_with_mse_reports_no_accuracy():
    r = np.random.default_rng(0)
    x = r.standard_normal((64, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]])).astype(np.float32)
    data = Dataset("regression", x[:48], y[:48], x[48:], y[48:], x[48:], y[48:], 1)
    model = nn.serial(nn.Dense(1, init="glorot"))
    ts, history = fit(
        model, make_optimizer("adam", 5e-2), data, epochs=20, batch_size=16, loss="mse"
    )
    assert history[-1]["val_loss"] < 0.05 * history[0]["val_loss"]
    assert "train_acc" not in history[-1] and "val_acc" not in history[-1]


def test_a_loss_that_does_not_fit_the_labels_is_named_before_training():
    data = _text_data()
    with pytest.raises(
        ValueError,
        match=r"the loss 'mse' cannot take the model's scores "
        r"\(N, 8, 7\) with labels y_train \(N, 8\) \(float32\)",
    ):
        fit(
            nn.build_model("rnn", V, hidden=(4,)),
            make_optimizer("sgd", 0.1),
            Dataset(
                "text", data.x_train, data.y_train.astype(np.float32), None, None, None, None, V
            ),
            epochs=1,
            loss="mse",
        )


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru", "transformer"])
def test_custom_and_builtin_losses_agree_over_100_steps(name):
    opts = {"width": 16, "depth": 1, "heads": 2} if name == "transformer" else {"hidden": (16,)}
    model = nn.build_model(name, V, **opts)
    opt = optax.adam(3e-3)
    data = _text_data(n=40, t=12)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    losses = {}
    for grad in ("custom", "builtin"):
        ts = init_train_state(model, opt, (12,), 0)
        step = make_train_step(model, opt, grad=grad, jit=False)

        def run(carry, i):
            p, s, o = carry
            idx = (jnp.arange(8) + 8 * i) % 40
            p, s, o, m = step(p, s, o, (x[idx], y[idx]), jax.random.PRNGKey(0))  # noqa: B023 (called in this iteration)
            return (p, s, o), m["loss"]

        _, losses[grad] = jax.jit(lambda c: jax.lax.scan(run, c, jnp.arange(100)))(
            (ts.params, ts.state, ts.opt_state)
        )
    np.testing.assert_allclose(
        np.asarray(losses["custom"]), np.asarray(losses["builtin"]), rtol=1e-4
    )
    assert losses["custom"][-1] < losses["custom"][0]


# ---- the command line ------------------------------------------------------------------------------
def test_cli_trains_a_text_model_resumes_and_samples(tmp_path, capsys):
    folder, text = _corpus(tmp_path, 6000)
    out = str(tmp_path / "run")
    args = [
        "--model",
        "transformer",
        "--dataset",
        "text",
        "--data-dir",
        str(folder),
        "--context",
        "16",
        "--width",
        "16",
        "--depth",
        "1",
        "--heads",
        "2",
        "--batch-size",
        "16",
        "--no-progress",
        "--out",
        out,
    ]
    assert main(["train", *args, "--epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "bits/char" in printed and "unigram baseline" in printed
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["test_bpc"] == pytest.approx(results["test_loss"] / np.log(2))
    assert results["test_ppl"] == pytest.approx(np.exp(results["test_loss"]))
    assert json.load(open(os.path.join(out, "vocab.json")))["kind"] == "bytes"
    assert main(["train", "--resume", out, "--epochs", "2", "--no-progress"]) == 0
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["epoch"] for r in records] == [1, 2] and "val_bpc" in records[-1]
    capsys.readouterr()
    assert main(["sample", out, "--prompt", "def ", "--length", "40", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("def ") and len(first.encode()) >= 44
    assert main(["sample", out, "--prompt", "def ", "--length", "40", "--seed", "1"]) == 0
    assert capsys.readouterr().out == first  # an explicit key: the same text again
    assert main(["sample", out, "--prompt", "é"]) == 1
    assert "never saw" in capsys.readouterr().err


def test_cli_gru_builtin_and_mismatched_model_and_data(tmp_path, capsys):
    folder, _ = _corpus(tmp_path)
    out = str(tmp_path / "gru")
    assert (
        main(
            [
                "train",
                "--model",
                "gru",
                "--data-dir",
                str(folder),
                "--context",
                "32",
                "--hidden",
                "8",
                "--grad",
                "builtin",
                "--no-progress",
                "--out",
                out,
            ]
        )
        == 0
    )
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["dataset"] == "text" and config["epochs"] == 2  # text's defaults
    capsys.readouterr()
    assert (
        main(["train", "--model", "lstm", "--dataset", "digits", "--out", str(tmp_path / "x")]) == 1
    )
    assert "train it with --dataset text" in capsys.readouterr().err
    assert main(["train", "--model", "mlp", "--dataset", "text", "--out", str(tmp_path / "y")]) == 1
    assert "needs a sequence model" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "nowhere")]) == 1


def test_cli_mse_on_digits_trains_against_one_hot_targets(tmp_path, capsys):
    out = str(tmp_path / "mse")
    assert (
        main(
            [
                "train",
                "--loss",
                "mse",
                "--epochs",
                "6",
                "--lr",
                "0.01",
                "--limit",
                "600",
                "--no-progress",
                "--out",
                out,
            ]
        )
        == 0
    )
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["test_acc"] > 0.5


def test_label_smoothing_reaches_the_training_loss(tmp_path):
    from fnn.train.run import TrainConfig
    from fnn.train.step import cross_entropy, get_loss

    loss = TrainConfig(label_smoothing=0.1).training_loss()
    logits, labels = jnp.zeros((2, 4)), jnp.array([0, 3])
    assert float(loss(logits, labels)) == pytest.approx(np.log(4))  # uniform logits
    logits = jnp.array([[5.0, 0, 0, 0]])
    want = (
        -(0.9 + 0.1 / 4) * jax.nn.log_softmax(logits)[0, 0]
        - 0.1 / 4 * 3 * jax.nn.log_softmax(logits)[0, 1]
    )
    assert float(loss(logits, jnp.array([0]))) == pytest.approx(float(want), rel=1e-6)
    assert get_loss("softmax_cross_entropy") is cross_entropy()
    with pytest.raises(ValueError, match="label_smoothing applies to the cross-entropy"):
        TrainConfig(loss="mse", label_smoothing=0.1).training_loss()
    out = str(tmp_path / "ls")
    assert (
        main(
            [
                "train",
                "--label-smoothing",
                "0.1",
                "--epochs",
                "1",
                "--limit",
                "200",
                "--no-progress",
                "--out",
                out,
            ]
        )
        == 0
    )
    assert json.load(open(os.path.join(out, "config.json")))["label_smoothing"] == 0.1


def test_a_layer_limited_override_reaches_the_cell_inside_the_scan():
    model = nn.build_model("lstm", V, hidden=(4,))
    params, state, _ = model.init(jax.random.PRNGKey(0), (T,))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, V, (2, T)))

    def loss(p):
        return softmax_cross_entropy(model.apply(p, state, ids)[0], ids)

    def no_input_grad(g, *inputs, original, **static):  # the cell's rule, dx zeroed
        d = list(original(g))
        d[0] = jnp.zeros_like(inputs[0])
        return tuple(d)

    exact = fnn.grad(loss)(params)
    elsewhere = fnn.grad(loss, rules={"lstm_cell": fnn.only(no_input_grad, "9_lstm")})(params)
    here = fnn.grad(loss, rules={"lstm_cell": fnn.only(no_input_grad, "1_lstm")})(params)
    _close(elsewhere, exact, rtol=0, atol=0)
    assert not np.any(np.asarray(here["0_embedding"]["table"]))  # nothing reaches the table
    _close(here["2_dense"], exact["2_dense"], rtol=1e-6, atol=1e-7)


def test_graph_of_a_recurrent_model_names_its_layers():
    from fnn.check.graph import graph_layers
    from fnn.check.zoo import small_model

    model, params, state, x, y = small_model("gru")
    text = graph_layers(model, params, state, x, y).to_text()
    assert "1_gru" in text and "gru_sequence" in text and "2_dense" in text


def test_attention_in_bfloat16_stays_bfloat16():
    """The default scale is weakly typed: bfloat16 q, k, v give bfloat16 scores, output and
    gradients (a float64 scale promoted them to float32, and fnn.grad refused the VJP's
    float32 gradient of a bfloat16 input: the transformer's bfloat16 step did not trace)."""
    q, k, v = (
        jnp.asarray(np.random.default_rng(i).standard_normal((2, 3, 4)), jnp.bfloat16)
        for i in range(3)
    )
    out = fnn.registry["attention"](q, k, v, causal=True)
    assert out.dtype == jnp.bfloat16
    grads = fnn.grad(
        lambda q, k, v: jnp.sum(
            fnn.registry["attention"](q, k, v, causal=True).astype(jnp.float32)
        ),
        argnums=(0, 1, 2),
    )(q, k, v)
    assert [g.dtype for g in grads] == [jnp.bfloat16] * 3
