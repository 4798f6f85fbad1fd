"""Text from a trained language model: what `python -m fnn sample RUN_DIR` does.

    text = sample_run("runs/transformer-text-...", prompt="def ", length=300, temperature=0.8)

The whole generation is one compiled loop (jax.jit of a lax.fori_loop) with an explicit PRNG
key. The model reads a window of its training context: the prompt (its last `context` bytes)
sits at the start of the window and each new byte is written after it, the window sliding by
one once it is full. Causal models (the transformer's masked attention, the recurrent layers)
give the logits at position n - 1 from the first n bytes only, so the unused end of the window
changes nothing.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from jax import lax

from fnn.nn import SEQUENCE_MODELS, build_model
from fnn.train.checkpoint import read_checkpoint, restore
from fnn.train.run import BEST, LAST, read_config
from fnn.train.text import Vocab


def make_sampler(model, context: int, length: int, *, temperature: float = 0.8,
                 top_k: int | None = None):
    """sample(params, state, window (context,) int32, n (), key) -> (length,) new token ids.

    window holds the prompt's ids in its first n places (1 <= n <= context). temperature 0 is
    greedy (the most likely byte each time); top_k keeps only the k most likely bytes.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length!r}")

    def sample(params, state, window, n, key):
        def body(i, carry):
            window, n, out = carry
            logits, _ = model.apply(params, state, window[None], train=False)
            last = jnp.take(logits[0], jnp.minimum(n, context) - 1, axis=0)
            if top_k:
                kth = lax.top_k(last, top_k)[0][-1]
                last = jnp.where(last < kth, -jnp.inf, last)
            if temperature == 0:
                token = jnp.argmax(last).astype(jnp.int32)
            else:
                token = jax.random.categorical(jax.random.fold_in(key, i),
                                               last / temperature).astype(jnp.int32)
            full = n >= context
            window = jnp.where(full, jnp.roll(window, -1).at[context - 1].set(token),
                               window.at[jnp.minimum(n, context - 1)].set(token))
            return window, jnp.minimum(n + 1, context), out.at[i].set(token)

        out = jnp.zeros((length,), jnp.int32)
        return lax.fori_loop(0, length, body, (window, n, out))[2]

    return jax.jit(sample)


def load_run(run_dir: str, checkpoint: str = "best"):
    """(model, params, state, vocab, config) of a text run: `checkpoint` 'best' (falls back to
    'last' when the run has no best) or 'last'."""
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    config = read_config(run_dir)
    if config.model not in SEQUENCE_MODELS:
        raise ValueError(f"{run_dir} holds a {config.model!r} run; sampling needs a language "
                         f"model ({', '.join(SEQUENCE_MODELS)}) trained on --dataset text")
    vocab = Vocab.load(run_dir)
    model = build_model(config.model, len(vocab), **config.model_options())
    path = os.path.join(run_dir, BEST if checkpoint == "best" else LAST)
    if checkpoint == "best" and not os.path.isfile(path):
        path = os.path.join(run_dir, LAST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir} has no checkpoint ({BEST} or {LAST}): the run "
                                "stopped before its first epoch ended")
    template = jax.eval_shape(lambda k: model.init(k, (config.context,))[:2],
                              jax.random.PRNGKey(0))
    tensors, _ = read_checkpoint(path)
    trees = restore(tensors, {"params": template[0], "state": template[1]})
    return model, trees["params"], trees["state"], vocab, config


def sample_run(run_dir: str, prompt: str | bytes = "\n", *, length: int = 300,
               temperature: float = 0.8, top_k: int | None = None, seed: int = 0,
               checkpoint: str = "best") -> bytes:
    """`length` bytes generated after `prompt` by the run's model (the prompt not included)."""
    model, params, state, vocab, config = load_run(run_dir, checkpoint)
    ids = vocab.encode(prompt)
    if ids.size == 0:
        raise ValueError("the prompt is empty: give at least one character to start from")
    ids = ids[-config.context:]
    window = jnp.zeros((config.context,), jnp.int32).at[:ids.size].set(jnp.asarray(ids))
    sampler = make_sampler(model, config.context, length, temperature=temperature, top_k=top_k)
    out = sampler(params, state, window, jnp.int32(ids.size), jax.random.PRNGKey(seed))
    return vocab.decode(jax.device_get(out))
