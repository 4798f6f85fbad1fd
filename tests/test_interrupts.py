"""Prompt interrupts and memory: an epoch runs as compiled chunks, Ctrl-C stops between two of
them (about one step) with the state in the middle of the epoch, which resumes bit for bit as
an uninterrupted run; out-of-memory is explained (issue 16, item 6).

Before: Ctrl-C waited for the end of the epoch (9 s on a CNN epoch) and threw that epoch away;
XLA's out-of-memory reached the user as a raw JaxRuntimeError; a model that could not fit ground
on silently."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from fnn import nn, train
from fnn.train import Hook, TrainingInterrupted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tree_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y) for x, y in zip(la, lb)
    )


@pytest.fixture(scope="module")
def digits():
    return train.load_dataset("digits", limit=400)


def model():
    return nn.mlp((16,), batch_norm=True, dropout=0.2)  # state and PRNG keys both matter


def optimizer(data):
    total = 3 * (len(data.x_train) // 32)
    return train.make_optimizer(
        "adam", train.make_schedule("cosine", 3e-3, total_steps=total), weight_decay=1e-4
    )


class CtrlC(Hook):
    """Sends the process a real SIGINT when epoch `epoch` has done `at` steps (`times` of them:
    the second one is the user insisting)."""

    progress = True

    def __init__(self, epoch, at, times=1):
        self.epoch, self.at, self.times, self.current = epoch, at, times, None

    def on_epoch_start(self, ts, n_steps):
        self.current = ts.epoch + 1

    def on_progress(self, done):
        if self.current == self.epoch and done == self.at:
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGINT)


class Saved(Hook):
    def on_interrupt(self, ts):
        self.state = ts


def run(data, **kw):
    return train.fit(model(), optimizer(data), data, epochs=3, batch_size=32, seed=5, **kw)


def test_chunks_do_not_change_the_bits(digits):
    """One step a chunk, about 50 ms a chunk (the default) and the whole epoch in one chunk
    train the same bits: the chunk's bounds are arguments of one compiled program."""
    runs = [run(digits, chunk_seconds=c) for c in (0, None, 0.05)]
    for ts, history in runs[1:]:
        assert tree_equal(ts.params, runs[0][0].params) and tree_equal(ts.state, runs[0][0].state)
        assert tree_equal(ts.opt_state, runs[0][0].opt_state)
        assert [r["train_loss"] for r in history] == [r["train_loss"] for r in runs[0][1]]


def test_ctrl_c_stops_within_a_step_and_resumes_bit_for_bit(digits, tmp_path):
    straight, history = run(digits, chunk_seconds=0)
    saved, before = Saved(), signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as info:
        run(digits, chunk_seconds=0, hooks=[CtrlC(epoch=2, at=4), saved])
    assert signal.getsignal(signal.SIGINT) is before  # fit's handler is gone again
    mid = info.value.state
    n = len(digits.x_train) // 32
    assert (mid.epoch, mid.position, mid.step) == (1, 4, n + 4)  # the next step did not run
    assert saved.state is mid and info.value.waited_s < 5
    assert "interrupted at step 4 of epoch 2" in str(info.value)
    assert mid.partial["order"].shape == (n, 32)
    assert mid.partial["metrics"]["loss"].shape == (4,)
    # through a checkpoint, into a fresh template, with other chunks
    path = str(tmp_path / "last.safetensors")
    train.save_train_state(path, mid)
    template = train.init_train_state(model(), optimizer(digits), digits.input_shape, seed=9)
    start, meta = train.load_train_state(path, template)
    assert (start.epoch, start.position, meta["position"]) == (1, 4, 4)
    resumed, rest = run(digits, start=start, chunk_seconds=0.05)
    assert tree_equal(resumed.params, straight.params)
    assert tree_equal(resumed.state, straight.state)
    assert tree_equal(resumed.opt_state, straight.opt_state)
    keys = ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc")
    assert [{k: r[k] for k in keys} for r in rest] == [{k: r[k] for k in keys} for r in history[1:]]


def test_ctrl_c_before_the_first_step_and_a_second_ctrl_c(digits):
    saved = Saved()
    with pytest.raises(TrainingInterrupted) as info:
        run(digits, chunk_seconds=0, hooks=[CtrlC(epoch=1, at=1), saved])
    assert (info.value.state.epoch, info.value.state.position) == (0, 1)
    # the user insists: a second Ctrl-C is a plain KeyboardInterrupt, at once, nothing saved
    saved = Saved()
    with pytest.raises(KeyboardInterrupt) as info:
        run(digits, chunk_seconds=0, hooks=[CtrlC(epoch=1, at=2, times=2), saved])
    assert not isinstance(info.value, TrainingInterrupted) and not hasattr(saved, "state")


def test_a_resumed_state_of_other_data_is_refused(digits):
    saved = Saved()
    with pytest.raises(TrainingInterrupted) as info:
        run(digits, chunk_seconds=0, hooks=[CtrlC(epoch=1, at=3), saved])
    mid = info.value.state
    other = train.load_dataset("digits", limit=399)  # one example fewer: another order
    with pytest.raises(ValueError, match="batch order is not the one it was drawn with"):
        train.fit(model(), optimizer(digits), other, epochs=3, batch_size=32, start=mid)
    with pytest.raises(
        ValueError,
        match=r"saved at step 3 of an epoch with batches i32\[11,32\]"
        r".*have 5 batches of 64",
    ):
        train.fit(model(), optimizer(digits), digits, epochs=3, batch_size=64, start=mid)


# ---- out of memory ------------------------------------------------------------------------------
OOM = textwrap.dedent(r"""
    import resource, sys
    import numpy as np, jax, jax.numpy as jnp
    from fnn import nn, train
    import fnn.train.memory as memory
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 64, 64, 1)).astype(np.float32)
    y = rng.integers(0, 10, 512).astype(np.int32)
    data = train.Dataset("synthetic", x, y, x[:0], y[:0], x[:64], y[:64])
    jnp.ones(1).block_until_ready()
    vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
    if sys.argv[1] == "runtime":  # no check before training: XLA itself runs out
        memory.available_bytes = lambda device: (None, "unknown")
    resource.setrlimit(resource.RLIMIT_AS, (vm + (400 << 20), resource.RLIM_INFINITY))
    try:
        train.fit(nn.cnn((32,), dense=(16,)), train.make_optimizer("adam"), data, epochs=1,
                  batch_size=256)
        print("RESULT no error")
    except Exception as e:
        print("RESULT", type(e).__name__, str(e).replace("\n", " "))
""")


@pytest.mark.parametrize("when", ["before", "runtime"])
def test_out_of_memory_is_explained(when):
    """A CNN whose batch of 256 64x64 images needs ~500 MiB of XLA working memory, in a process
    with 400 MiB of address space to spare: refused before the first step ("before"), or, with
    that check switched off, XLA's RESOURCE_EXHAUSTED caught and explained ("runtime")."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("XLA_FLAGS", None)
    r = subprocess.run(
        [sys.executable, "-c", OOM, when], capture_output=True, text=True, env=env, timeout=300
    )
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT")), r.stderr[-2000:])
    print(line)
    assert line.startswith("RESULT OutOfMemoryError"), line
    if when == "before":
        assert "does not fit in memory: a step needs about" in line
        assert "address space left under ulimit -v" in line
    else:
        assert "out of memory while training (XLA: RESOURCE_EXHAUSTED" in line
    assert "activations of one batch of 256 320.0 MiB" in line and "--batch-size" in line


def test_is_out_of_memory_reads_only_jax_runtime_errors():
    from fnn.train.memory import is_out_of_memory

    assert is_out_of_memory(jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory"))
    assert not is_out_of_memory(jax.errors.JaxRuntimeError("INTERNAL: something else"))
    assert not is_out_of_memory(RuntimeError("RESOURCE_EXHAUSTED: not from XLA"))


# ---- a real Ctrl-C on `python -m fnn train` ------------------------------------------------------
def test_ctrl_c_on_the_command_line_saves_and_resumes_bit_for_bit(tmp_path):
    """A real SIGINT to `python -m fnn train` in the middle of training: it stops within a
    fraction of a second, exits 3 (its checkpoint saved) with how to continue; --resume then
    ends with exactly the
    checkpoint and metrics of an uninterrupted run."""
    from fnn.cli import main
    from fnn.train import read_checkpoint

    args = [
        "--model",
        "cnn",
        "--channels",
        "4",
        "--dropout",
        "0.1",
        "--batch-size",
        "1",
        "--epochs",
        "20",
        "--no-progress",
        "--chunk-seconds",
        "0.01",
    ]
    straight = str(tmp_path / "straight")
    assert main(["train", "--out", straight, *args]) == 0
    stopped = str(tmp_path / "stopped")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.Popen(
        [sys.executable, "-m", "fnn", "train", "--out", stopped, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    for line in p.stdout:  # wait for epoch 1 to end: the program is compiled and running
        if line.split()[:2] == ["epoch", "1/20"]:
            break
    time.sleep(0.1)  # into epoch 2 or 3 (1293 steps of one example each, 50 ms or more)
    t0 = time.perf_counter()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    exited = time.perf_counter() - t0
    print(f"exited {exited:.2f} s after SIGINT (exit status {p.returncode}); {err.strip()[-400:]}")
    mid_epoch = "interrupted at step" in err  # (else it landed between epochs: as good)
    assert p.returncode == 3, err[-2000:]
    assert "interrupted " in err and f"--resume {stopped}" in err and "Traceback" not in err
    assert "after Ctrl-C and saved" in err
    assert exited < 30
    assert main(["train", "--resume", stopped, "--no-progress"]) == 0
    print("resumed from the middle of an epoch" if mid_epoch else "resumed after an epoch")
    a, meta_a = read_checkpoint(os.path.join(straight, "last.safetensors"))
    b, meta_b = read_checkpoint(os.path.join(stopped, "last.safetensors"))
    assert sorted(a) == sorted(b) and meta_a["step"] == meta_b["step"]
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    def metrics(run):
        with open(os.path.join(run, "metrics.jsonl")) as f:
            return [
                {
                    k: v
                    for k, v in json.loads(line).items()
                    if k not in ("time_s", "steps_per_s", "examples_per_s", "compile_s")
                }
                for line in f
            ]

    assert metrics(stopped) == metrics(straight)
