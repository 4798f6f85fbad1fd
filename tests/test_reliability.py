"""Reliability: the gate behind a NaN loss is named (fit(check_nans=True), train --check-nans);
the same seed gives bitwise-identical parameters in two separate processes; a save killed
halfway leaves the previous checkpoint loadable."""

import dataclasses
import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn import nn, ops, train
from fnn.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("XLA_FLAGS", None)
    return env


@pytest.fixture(scope="module")
def digits():
    return train.load_dataset("digits", limit=300)


# ---- NaN origin --------------------------------------------------------------------------------
@fnn.defgate
def bad_inverse(x):
    """1 / (1 + x**2).  Its VJP below divides by zero on purpose."""
    return 1.0 / (1.0 + x * x), x


@bad_inverse.defvjp
def bad_inverse_vjp(g, x):
    return (-g / (x * 0.0),)


def log_relu_model():
    """Dense - log(relu(.)) - Dense: log of 0 wherever a hidden unit is off."""
    log_relu = nn.stateless("log_relu", lambda x: ops.log(ops.relu(x)))
    return nn.serial(nn.Flatten(), nn.Dense(16), log_relu, nn.Dense(10), name="logmodel")


@pytest.mark.parametrize("grad", ["custom", "builtin"])
def test_check_nans_names_log_of_zero(digits, grad):
    with pytest.raises(fnn.NanOriginError) as info:
        train.fit(
            log_relu_model(),
            train.make_optimizer("adam", 1e-3),
            digits,
            epochs=2,
            batch_size=32,
            grad=grad,
            check_nans=True,
        )
    e = info.value
    assert e.gate == "lax.log" and e.phase == "forward" and "test_reliability.py" in e.site
    msg = str(e)
    assert "non-finite loss (nan) at epoch 1, step 1 of the epoch" in msg
    assert "in layer logmodel/2_log_relu: debug_nans: gate 'lax.log' forward" in msg
    assert "-inf" in msg and "input 0: f32[32,16] in [0, " in msg


def test_check_nans_names_a_user_gate_whose_vjp_divides_by_zero(digits):
    layer = nn.stateless("bad_inverse", bad_inverse)
    model = nn.serial(nn.Flatten(), nn.Dense(8), layer, nn.Dense(10), name="net")
    with pytest.raises(fnn.NanOriginError) as info:
        train.fit(
            model,
            train.make_optimizer("sgd", 0.1),
            digits,
            epochs=1,
            batch_size=32,
            check_nans=True,
        )
    e = info.value  # step 1's loss is finite; its backward makes the update, and step 2, NaN
    assert e.gate == "bad_inverse" and e.phase == "backward (VJP)" and e.step == 1
    assert "at epoch 1, step 2 of the epoch" in str(e) and "upstream gradient" in str(e)


def test_check_nans_names_the_optimizer_update(digits):
    blow_up = optax.chain(optax.sgd(0.1), optax.scale(jnp.inf))
    with pytest.raises(fnn.NanOriginError) as info:
        train.fit(nn.mlp((8,)), blow_up, digits, epochs=1, batch_size=32, check_nans=True)
    assert info.value.phase == "optimizer update" and info.value.gate is None
    assert "the optimizer update made" in str(info.value)
    assert "/1_dense/w" in str(info.value)


def test_check_nans_watches_the_batch_norm_statistics(digits):
    """Inputs so large that a BatchNorm layer's batch variance overflows: the loss and the
    parameters stay finite (lr 0), only the running variance becomes inf, which used to pass
    --check-nans silently (and ruin every evaluation). Now it is named, at its step."""
    x = digits.x_train.copy()
    x[::7, 3, 3, 0] = 3e19
    data = dataclasses.replace(digits, x_train=x)
    model = nn.mlp((8,), batch_norm=True)
    ts, history = train.fit(model, train.make_optimizer("sgd", 0.0), data, epochs=1, batch_size=32)
    assert np.isfinite(history[0]["train_loss"])  # nothing else would tell
    assert not np.isfinite(np.asarray(ts.state["2_batch_norm"]["var"])).all()
    with pytest.raises(fnn.NanOriginError) as info:
        train.fit(
            model, train.make_optimizer("sgd", 0.0), data, epochs=1, batch_size=32, check_nans=True
        )
    message = str(info.value)
    assert message.startswith(
        "the model state (BatchNorm statistics) became non-finite at epoch 1, step 1 of the epoch"
    ), message
    assert "in layer mlp/2_batch_norm" in message and info.value.gate == "batch_norm"


def test_without_check_nans_the_divergence_error_points_to_it(digits):
    with pytest.raises(FloatingPointError, match="diverged at epoch 1.*check_nans=True"):
        train.fit(
            log_relu_model(), train.make_optimizer("adam", 1e-3), digits, epochs=1, batch_size=32
        )


def test_cli_check_nans_exits_1_naming_the_gate(tmp_path, capsys):
    argv = [
        "train",
        "--optimizer",
        "sgd",
        "--lr",
        "1e38",
        "--hidden",
        "8",
        "--limit",
        "200",
        "--epochs",
        "2",
        "--no-progress",
        "--check-nans",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("fnn train: error: training produced a non-finite loss")
    assert "in layer mlp/" in err and "gate 'affine' forward produced a NaN/inf" in err
    assert "Traceback" not in err


# ---- determinism -------------------------------------------------------------------------------
DETERMINISM = textwrap.dedent(r"""
    import hashlib, jax, numpy as np
    from fnn import nn, train
    data = train.load_dataset("digits", limit=240)
    runs = [("custom", "mlp"), ("builtin", "mlp"), ("custom", "cnn")]
    models = {"mlp": lambda: nn.mlp((16,), batch_norm=True, dropout=0.2),
              "cnn": lambda: nn.cnn((2,), dense=(8,))}
    for grad, name in runs:
        ts, _ = train.fit(models[name](), train.make_optimizer("adamw", 3e-3, weight_decay=1e-4),
                          data, epochs=2, batch_size=24, grad=grad, seed=11)
        h = hashlib.sha256()
        for leaf in jax.tree_util.tree_leaves((ts.params, ts.state, ts.opt_state)):
            h.update(np.asarray(leaf).tobytes())
        print(grad, name, h.hexdigest())
""")


def test_same_seed_same_bits_in_two_processes():
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DETERMINISM],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for _ in range(2)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        outs.append(sorted(line for line in out.splitlines() if line.count(" ") == 2))
    assert len(outs[0]) == 3 and outs[0] == outs[1]  # each of the 3 runs, bit for bit
    digests = {line.split()[2] for line in outs[0]}
    assert len(digests) == 3  # and the runs really differ from each other


# ---- safe checkpoints --------------------------------------------------------------------------
KILLED_SAVE = textwrap.dedent(r"""
    import os, sys, time
    import jax
    from fnn import nn, train
    path, stage = sys.argv[1], sys.argv[2]
    model, opt = nn.mlp((8,)), train.make_optimizer("adam")
    ts = train.init_train_state(model, opt, (4, 4, 1), seed=0)
    train.save_train_state(path, ts, {"version": 1})
    real = getattr(os, stage)

    def stall(*args, **kwargs):
        print("stalled in", stage, flush=True)  # the new file is written, not yet renamed
        time.sleep(600)
        return real(*args, **kwargs)

    setattr(os, stage, stall)
    bigger = train.TrainState(jax.tree_util.tree_map(lambda p: p + 1, ts.params), ts.state,
                              ts.opt_state, ts.key, 1, 10)
    train.save_train_state(path, bigger, {"version": 2})
""")


@pytest.mark.parametrize("stage", ["fsync", "replace"])
def test_a_save_killed_halfway_keeps_the_previous_checkpoint(tmp_path, stage):
    path = str(tmp_path / "last.safetensors")
    p = subprocess.Popen(
        [sys.executable, "-c", KILLED_SAVE, path, stage],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        line = p.stdout.readline()  # blocks until the child is inside the save
        assert line.startswith("stalled in"), (line, p.stderr.read() if p.poll() else "")
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL
    assert len(glob.glob(str(tmp_path / ".last.safetensors.*.tmp"))) == 1  # the unfinished save
    model, opt = nn.mlp((8,)), train.make_optimizer("adam")
    template = train.init_train_state(model, opt, (4, 4, 1), seed=0)
    loaded, meta = train.load_train_state(path, template)  # verified by its sha256
    assert meta["config"] == {"version": 1} and loaded.epoch == 0
    for a, b in zip(
        jax.tree_util.tree_leaves(loaded.params), jax.tree_util.tree_leaves(template.params)
    ):
        np.testing.assert_array_equal(a, b)
    train.save_train_state(path, loaded, {"version": 3})  # the stale temp file is in no one's way
    assert train.load_train_state(path, template)[1]["config"] == {"version": 3}


def test_checksum_covers_tensors_and_metadata(tmp_path):
    model, opt = nn.mlp((8,)), train.make_optimizer("adam")
    ts = train.init_train_state(model, opt, (4, 4, 1), seed=0)
    path = str(tmp_path / "ck.safetensors")
    train.save_train_state(path, ts, {"lr": 0.001})
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    stored = json.loads(header["__metadata__"]["sha256"])
    tensors, meta = train.read_checkpoint(path)
    assert meta["sha256"] == stored and len(stored) == 64
    # an edit of the metadata that keeps the file valid safetensors is still caught
    edited = raw.replace(b'\\"lr\\": 0.001', b'\\"lr\\": 0.101')
    assert edited != raw and len(edited) == len(raw)
    open(path, "wb").write(edited)
    with pytest.raises(train.CheckpointError, match="is damaged: the sha256"):
        train.read_checkpoint(path)
    # files written without fnn's digest and metadata (other tools) are no training state:
    # refused for a resume, loadable as parameters with a note
    import safetensors.numpy

    plain = str(tmp_path / "plain.safetensors")
    safetensors.numpy.save_file(
        {k: v for k, v in tensors.items()}, plain, metadata={"epoch": "0", "step": "0"}
    )
    with pytest.raises(train.CheckpointError, match="not an fnn training checkpoint"):
        train.load_train_state(plain, ts)
    notes = []
    params = fnn.train.checkpoint.load_params(plain, ts.params, log=notes.append)
    assert "no fnn metadata" in notes[0] and "unverified" in notes[0]
    assert (
        hashlib.sha256(np.asarray(params["1_dense"]["w"]).tobytes()).hexdigest()
        == hashlib.sha256(np.asarray(ts.params["1_dense"]["w"]).tobytes()).hexdigest()
    )
