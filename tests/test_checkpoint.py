"""Checkpoints: safetensors round trip of a whole TrainState, errors naming the keys and shapes
that do not fit, atomic writes (a failed save keeps the last good file), and a resumed run that
ends with exactly the parameters of an uninterrupted one."""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import nn
from fnn.train import (
    CheckpointError,
    TrainState,
    fit,
    init_train_state,
    load_checkpoint,
    load_dataset,
    load_train_state,
    make_optimizer,
    make_schedule,
    read_checkpoint,
    save_checkpoint,
    save_train_state,
)


def tree_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y) for x, y in zip(la, lb)
    )


def make_state(hidden=(8,), seed=0):
    model = nn.mlp(hidden, batch_norm=True)
    opt = make_optimizer("adamw", 1e-3, schedule="cosine", total_steps=10, clip=1.0)
    ts = init_train_state(model, opt, (4, 4, 1), seed)
    # make every leaf distinctive: a step of the optimizer on random gradients
    grads = jax.tree_util.tree_map(lambda p: jnp.ones_like(p) * 0.5, ts.params)
    _, opt_state = opt.update(grads, ts.opt_state, ts.params)
    state = jax.tree_util.tree_map(lambda s: s + 0.25, ts.state)
    return model, opt, TrainState(ts.params, state, opt_state, ts.key, epoch=3, step=42)


def test_round_trip(tmp_path):
    _, _, ts = make_state()
    path = str(tmp_path / "ck.safetensors")
    save_train_state(path, ts, {"model": "mlp", "lr": 0.001}, note="hello")
    _, _, template = make_state(seed=1)
    loaded, meta = load_train_state(path, template)
    assert tree_equal(loaded.params, ts.params) and tree_equal(loaded.state, ts.state)
    assert tree_equal(loaded.opt_state, ts.opt_state) and tree_equal(loaded.key, ts.key)
    assert (loaded.epoch, loaded.step) == (3, 42)
    assert meta["config"] == {"model": "mlp", "lr": 0.001} and meta["note"] == "hello"


def test_file_is_safetensors_with_path_keys(tmp_path):
    _, _, ts = make_state()
    path = str(tmp_path / "ck.safetensors")
    save_train_state(path, ts, {"a": 1})
    raw = open(path, "rb").read()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])  # plain JSON header, then raw tensor bytes
    assert header["__metadata__"]["format"] == '"fnn-checkpoint/2"'
    tensors, meta = read_checkpoint(path)
    assert "params/1_dense/w" in tensors and "state/2_batch_norm/mean" in tensors
    assert "key" in tensors and tensors["key"].dtype == np.uint32
    assert any(k.startswith("opt_state/") and k.endswith("mu/1_dense/w") for k in tensors)
    assert meta["epoch"] == 3 and meta["step"] == 42


def test_wrong_model_names_keys_and_shapes(tmp_path):
    _, _, ts = make_state(hidden=(8,))
    path = str(tmp_path / "ck.safetensors")
    save_train_state(path, ts)
    _, _, wider = make_state(hidden=(16,))
    with pytest.raises(CheckpointError) as e:
        load_train_state(path, wider)
    msg = str(e.value)
    assert "params/1_dense/w: (16, 8) in the checkpoint" in msg and "(16, 16) in the model" in msg
    _, _, deeper = make_state(hidden=(8, 8))
    with pytest.raises(CheckpointError) as e:
        load_train_state(path, deeper)
    msg = str(e.value)
    assert "missing from the checkpoint" in msg and "params/7_dense/w (8, 10)" in msg
    assert "params/4_dense/w: (8, 10) in the checkpoint, (8, 8) in the model" in msg
    path2 = str(tmp_path / "deep.safetensors")
    save_train_state(path2, deeper)
    with pytest.raises(
        CheckpointError, match="(?s)in the checkpoint but not in the model.*params/7_dense/b"
    ):
        load_train_state(path2, ts)


def test_generic_trees_and_typed_keys(tmp_path):
    path = str(tmp_path / "t.safetensors")
    tree = {"a": [jnp.arange(3.0), (jnp.ones((2, 2), jnp.int32),)], "k": jax.random.key(7)}
    save_checkpoint(path, {"tree": tree, "scalar": jnp.float32(2.5)}, {"x": [1, 2]})
    out, meta = load_checkpoint(path, {"tree": tree, "scalar": jnp.float32(0)})
    assert tree_equal(out["tree"]["a"], tree["a"]) and float(out["scalar"]) == 2.5
    assert np.array_equal(jax.random.key_data(out["tree"]["k"]), jax.random.key_data(tree["k"]))
    assert meta["x"] == [1, 2]


def test_failed_save_keeps_last_good(tmp_path, monkeypatch):
    _, _, ts = make_state()
    path = str(tmp_path / "last.safetensors")
    save_train_state(path, ts, {"version": 1})
    good = open(path, "rb").read()
    changed = TrainState(
        jax.tree_util.tree_map(lambda p: p + 1, ts.params), ts.state, ts.opt_state, ts.key, 4, 50
    )

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        save_train_state(path, changed, {"version": 2})
    monkeypatch.undo()
    assert open(path, "rb").read() == good
    assert glob.glob(str(tmp_path / ".*tmp")) == []  # the partial file was removed
    loaded, meta = load_train_state(path, ts)
    assert meta["config"] == {"version": 1} and loaded.epoch == 3
    # an unserializable leaf fails before anything is written, too
    with pytest.raises(TypeError):
        save_checkpoint(path, {"params": {"w": "not an array"}})
    assert open(path, "rb").read() == good


def test_missing_and_corrupt_files(tmp_path):
    _, _, ts = make_state()
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_train_state(str(tmp_path / "none.safetensors"), ts)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_train_state(str(bad), ts)


def test_resume_gives_the_same_final_params(tmp_path):
    """3 epochs straight vs 1 epoch, checkpoint, interruption, load, 2 more: identical bits.
    The model has dropout (PRNG keys) and BatchNorm (state); the schedule is cosine."""
    data = load_dataset("digits", limit=400)
    model = nn.mlp((16,), batch_norm=True, dropout=0.2)
    total = 3 * (len(data.x_train) // 32)
    schedule = make_schedule("cosine", 3e-3, total_steps=total)

    def optimizer():
        return make_optimizer("adam", schedule, weight_decay=1e-4)

    straight, _ = fit(model, optimizer(), data, epochs=3, batch_size=32, seed=5)

    path = str(tmp_path / "last.safetensors")

    def stop_after_first(ts, record):
        save_train_state(path, ts, {"seed": 5})
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(model, optimizer(), data, epochs=3, batch_size=32, seed=5, callback=stop_after_first)
    template = init_train_state(model, optimizer(), data.input_shape, seed=123)
    start, _ = load_train_state(path, template)
    assert start.epoch == 1
    resumed, _ = fit(model, optimizer(), data, epochs=3, batch_size=32, seed=5, start=start)
    assert resumed.epoch == 3 and resumed.step == straight.step == total
    assert tree_equal(resumed.params, straight.params)
    assert tree_equal(resumed.state, straight.state)
    assert tree_equal(resumed.opt_state, straight.opt_state)


# ---- every dtype, and checkpoints from elsewhere (issue 16) -----------------------------------
DTYPES = [
    "bfloat16",
    "float16",
    "float32",
    "float8_e4m3fn",
    "float8_e5m2",
    "int8",
    "int16",
    "int32",
    "uint8",
    "uint16",
    "uint32",
    "bool",
    "complex64",
]


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_round_trips(tmp_path, dtype):
    """A bfloat16 checkpoint used to save but not load ('BF16' unknown to safetensors.numpy)."""
    values = jnp.asarray(np.linspace(-3, 3, 12).reshape(3, 4)).astype(dtype)
    tree = {"w": values, "scalar": values[0, 0]}
    path = str(tmp_path / "ck.safetensors")
    save_checkpoint(path, {"params": tree}, {"dtype": dtype})
    out, meta = load_checkpoint(path, {"params": tree})
    assert tree_equal(out["params"], tree) and out["params"]["w"].dtype == jnp.dtype(dtype)
    tensors, _ = read_checkpoint(path)  # verified by its sha256, numpy arrays of that dtype
    assert tensors["params/w"].dtype == np.dtype(values.dtype) and meta["dtype"] == dtype


def test_float64_and_int64_round_trip(tmp_path, x64):
    tree = {"w": jnp.linspace(0, 1, 5, dtype=jnp.float64), "n": jnp.arange(3, dtype=jnp.int64)}
    path = str(tmp_path / "ck.safetensors")
    save_checkpoint(path, {"params": tree})
    out, _ = load_checkpoint(path, {"params": tree})
    assert tree_equal(out["params"], tree)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_low_precision_train_state_resumes(tmp_path, dtype):
    model, opt, ts = make_state()
    low = TrainState(
        jax.tree_util.tree_map(lambda p: p.astype(dtype), ts.params),
        ts.state,
        ts.opt_state,
        ts.key,
        1,
        5,
    )
    path = str(tmp_path / "last.safetensors")
    save_train_state(path, low, {"dtype": dtype})
    loaded, _ = load_train_state(path, low)
    assert tree_equal(loaded.params, low.params) and loaded.epoch == 1
    # into a float32 model: refused, the dtypes named, unless asked to cast
    with pytest.raises(
        CheckpointError,
        match=rf"(?s)dtype mismatches.*params/1_dense/w: {dtype} in "
        r"the checkpoint, float32 in the model",
    ):
        load_train_state(path, ts)
    cast, _ = load_train_state(path, ts, cast=True)
    assert cast.params["1_dense"]["w"].dtype == jnp.float32


def test_checkpoints_from_elsewhere(tmp_path):
    """A safetensors file from another tool: float16/int tensors used to load by silent casts,
    and without epoch metadata a resume restarted at epoch 0 over best.safetensors."""
    import safetensors.numpy

    from fnn.train.checkpoint import load_params

    _, _, ts = make_state()
    flat = {
        f"params/{k}": np.asarray(v)
        for k, v in {
            "1_dense/w": ts.params["1_dense"]["w"],
            "1_dense/b": ts.params["1_dense"]["b"],
            "4_dense/w": ts.params["4_dense"]["w"],
            "4_dense/b": ts.params["4_dense"]["b"],
            "2_batch_norm/gamma": ts.params["2_batch_norm"]["gamma"],
            "2_batch_norm/beta": ts.params["2_batch_norm"]["beta"],
        }.items()
    }
    half = {k: v.astype(np.float16) for k, v in flat.items()}
    path = str(tmp_path / "other.safetensors")
    safetensors.numpy.save_file(half, path, metadata={"format": "pt"})
    with pytest.raises(
        CheckpointError, match="not an fnn training checkpoint.*cannot be resumed.*load_params"
    ):
        load_train_state(path, ts)
    notes = []
    with pytest.raises(
        CheckpointError,
        match=r"(?s)dtype mismatches.*params/1_dense/w: float16 "
        r"in the checkpoint, float32",
    ):
        load_params(path, ts.params, log=notes.append)
    params = load_params(path, ts.params, cast=True, log=notes.append)
    assert params["1_dense"]["w"].dtype == jnp.float32 and "no fnn metadata" in notes[-1]
    np.testing.assert_allclose(params["1_dense"]["w"], ts.params["1_dense"]["w"], rtol=1e-3)
    bare = str(tmp_path / "bare.safetensors")  # names without "params/"
    safetensors.numpy.save_file({k[len("params/") :]: v for k, v in flat.items()}, bare)
    assert tree_equal(load_params(bare, ts.params), ts.params)
    ints = str(tmp_path / "ints.safetensors")
    safetensors.numpy.save_file({k: v.astype(np.int32) for k, v in flat.items()}, ints)
    with pytest.raises(CheckpointError, match="int32 in the checkpoint, float32 in the model"):
        load_params(ints, ts.params)


def test_an_older_fnn_checkpoint_without_digest_still_resumes(tmp_path):
    """fnn-checkpoint/1 files carry epoch, step and config but no sha256: they load
    unverified, with exact dtypes."""
    import safetensors.numpy

    from fnn.train.checkpoint import flatten

    _, _, ts = make_state()
    tensors = {
        **flatten(ts.params, "params"),
        **flatten(ts.state, "state"),
        **flatten(ts.opt_state, "opt_state"),
        "key": np.asarray(ts.key),
    }
    path = str(tmp_path / "v1.safetensors")
    safetensors.numpy.save_file(
        tensors,
        path,
        metadata={
            "format": json.dumps("fnn-checkpoint/1"),
            "epoch": "3",
            "step": "42",
            "config": json.dumps({"model": "mlp"}),
        },
    )
    loaded, meta = load_train_state(path, ts)
    assert (loaded.epoch, loaded.step) == (3, 42) and tree_equal(loaded.params, ts.params)
