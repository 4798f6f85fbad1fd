"""Text from a trained language model: what `python -m fnn sample RUN_DIR` does.

    text = sample_run("runs/transformer-text-...", prompt="def ", length=300, temperature=0.8)

The whole generation is one compiled loop (jax.jit of a lax.fori_loop over bytes start..stop,
the bounds being arguments) with an explicit PRNG key; `Sampling` runs it in pieces of about a
quarter of a second, for a progress bar and a Ctrl-C between two (`python -m fnn sample`), with
the same bytes as one call. The model reads a window of its training context: the prompt (its
last `context` bytes) sits at the start of the window and each new byte is written after it,
the window sliding by one once it is full. Causal models (the transformer's masked attention, the recurrent layers)
give the logits at position n - 1 from the first n bytes only, so the unused end of the window
changes nothing.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
from jax import lax

from fnn.nn import SEQUENCE_MODELS, build_model
from fnn.train.checkpoint import load_checkpoint
from fnn.train.files import Folder
from fnn.train.memory import OutOfMemoryError, is_out_of_memory
from fnn.train.run import BEST, LAST, read_config
from fnn.train.state import make_key
from fnn.train.text import Vocab


def make_sampler(
    model, context: int, length: int, *, temperature: float = 0.8, top_k: int | None = None
):
    """sample(params, state, window (context,) int32, n (), key) -> (length,) new token ids.

    window holds the prompt's ids in its first n places (1 <= n <= context). temperature 0 is
    greedy (the most likely byte each time); top_k keeps only the k most likely bytes.
    `sample.chunk(params, state, (window, n, out), key, start, stop) -> (window, n, out)` runs
    the bytes start..stop only (out: the (length,) ids so far); its bounds are arguments, so
    every piece is the same compiled program, and byte i is drawn with fold_in(key, i) whatever
    the pieces: the same ids as one call (what `Sampling` runs piece by piece).
    """
    if not temperature >= 0 or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be an integer >= 1 (bytes to generate), got {length!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 or None, got {top_k!r}")

    @jax.jit
    def chunk(params, state, carry, key, start, stop):
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
                token = jax.random.categorical(
                    jax.random.fold_in(key, i), last / temperature
                ).astype(jnp.int32)
            full = n >= context
            window = jnp.where(
                full,
                jnp.roll(window, -1).at[context - 1].set(token),
                window.at[jnp.minimum(n, context - 1)].set(token),
            )
            return window, jnp.minimum(n + 1, context), out.at[i].set(token)

        return lax.fori_loop(start, stop, body, carry)

    def sample(params, state, window, n, key):
        out = jnp.zeros((length,), jnp.int32)
        return chunk(params, state, (window, n, out), key, jnp.int32(0), jnp.int32(length))[2]

    sample.chunk = chunk
    return sample


def load_run(run_dir: str, checkpoint: str = "best"):
    """(model, params, state, vocab, config) of a text run: `checkpoint` 'best' (falls back to
    'last' when the run has no best) or 'last'. Every file is read with a size bound and
    checked (fnn.train.run.read_config, Vocab.load); the checkpoint's header is checked
    against the model before any of its data is read, and only the parameters and model state
    are kept."""
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"{run_dir} is not a run directory: no such folder")
    with Folder(run_dir) as folder:
        config = read_config(run_dir, folder=folder)
        if config.model not in SEQUENCE_MODELS:
            raise ValueError(
                f"{run_dir} holds a {config.model!r} run; sampling needs a "
                f"language model ({', '.join(SEQUENCE_MODELS)}) trained on "
                "--dataset text"
            )
        vocab = Vocab.load(run_dir, folder=folder)
        model = build_model(config.model, len(vocab), **config.model_options())
        name = BEST if checkpoint == "best" else LAST
        if checkpoint == "best" and not folder.exists(name):
            name = LAST
        if not folder.exists(name):
            raise FileNotFoundError(
                f"{run_dir} has no checkpoint ({BEST} or {LAST}): the run "
                "stopped before its first epoch ended"
            )
        template = jax.eval_shape(lambda k: model.init(k, (config.context,))[:2], make_key(0))
        trees, _ = load_checkpoint(
            name, {"params": template[0], "state": template[1]}, folder=folder
        )
    return model, trees["params"], trees["state"], vocab, config


class Sampling:
    """`length` bytes generated after `prompt` by the run's model, in pieces: what sample_run
    does, for a caller that shows progress or stops between two pieces (`python -m fnn sample`).

        sampling = Sampling("runs/transformer-text-...", "def ", length=100_000)
        while sampling.done < sampling.length:
            sampling.step()            # the next piece: about `seconds` long (at least a byte)
        sampling.text                  # the bytes so far (the prompt not included)

    Every piece is the same compiled program (make_sampler's chunk), and the bytes do not
    depend on how they are cut. seed: any integer in [0, 2**64-1] (fnn.train.make_key)."""

    def __init__(
        self,
        run_dir: str,
        prompt: str | bytes = "\n",
        *,
        length: int = 300,
        temperature: float = 0.8,
        top_k: int | None = None,
        seed: int = 0,
        checkpoint: str = "best",
        seconds: float = 0.25,
    ):
        self.key = make_key(seed)  # a bad seed fails before anything is read
        make_sampler(None, 1, length, temperature=temperature, top_k=top_k)  # the options
        model, self.params, self.state, self.vocab, config = load_run(run_dir, checkpoint)
        if top_k is not None and top_k > len(self.vocab):
            raise ValueError(
                f"top_k must be at most the vocabulary's {len(self.vocab)} bytes, got {top_k}"
            )
        ids = self.vocab.encode(prompt)
        if ids.size == 0:
            raise ValueError("the prompt is empty: give at least one character to start from")
        ids = ids[-config.context :]
        window = jnp.zeros((config.context,), jnp.int32).at[: ids.size].set(jnp.asarray(ids))
        self.sampler = make_sampler(
            model, config.context, length, temperature=temperature, top_k=top_k
        )
        self.carry = (window, jnp.int32(ids.size), jnp.zeros((length,), jnp.int32))
        self.run_dir, self.context, self.length, self.seconds = (
            run_dir,
            config.context,
            length,
            seconds,
        )
        self.done, self.per_byte = 0, None

    @property
    def next_size(self) -> int:
        """Bytes the next step generates: 16 until a piece that did not compile has been
        timed, then about `seconds` worth at the speed measured (at least one)."""
        left = self.length - self.done
        if self.per_byte is None:
            return min(left, 16)
        return max(1, min(left, int(self.seconds / max(self.per_byte, 1e-9))))

    def step(self, n: int | None = None) -> bytes:
        """Generate the next n bytes (default next_size; at most what is left); return them."""
        n = min(self.next_size if n is None else n, self.length - self.done)
        t0 = time.perf_counter()
        try:
            carry = self.sampler.chunk(
                self.params,
                self.state,
                self.carry,
                self.key,
                jnp.int32(self.done),
                jnp.int32(self.done + n),
            )
            ids = jax.device_get(carry[2][self.done : self.done + n])
        except jax.errors.JaxRuntimeError as e:
            if not is_out_of_memory(e):
                raise
            raise OutOfMemoryError(
                f"out of memory while sampling from {self.run_dir} (XLA: "
                f"{str(e).strip().splitlines()[0][:200]}): the model's "
                f"parameters and one window of {self.context} bytes do not "
                f"fit; sample on a device with more memory"
            ) from None
        if self.done:  # the first piece also compiled
            self.per_byte = (time.perf_counter() - t0) / n
        self.carry, self.done = carry, self.done + n
        return self.vocab.decode(ids)

    @property
    def text(self) -> bytes:
        """The bytes generated so far."""
        return self.vocab.decode(jax.device_get(self.carry[2][: self.done]))


def sample_run(
    run_dir: str,
    prompt: str | bytes = "\n",
    *,
    length: int = 300,
    temperature: float = 0.8,
    top_k: int | None = None,
    seed: int = 0,
    checkpoint: str = "best",
) -> bytes:
    """`length` bytes generated after `prompt` by the run's model (the prompt not included),
    in one call of the compiled loop (Sampling, in one piece).
    seed: any integer in [0, 2**64-1] (fnn.train.make_key), as for training."""
    sampling = Sampling(
        run_dir,
        prompt,
        length=length,
        temperature=temperature,
        top_k=top_k,
        seed=seed,
        checkpoint=checkpoint,
    )
    return sampling.step(length)
