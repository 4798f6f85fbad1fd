"""Bad input, clear errors: one table of wrong inputs across gates, engine, layers, data, training,
checkpoints and the command line. Each must raise fnn's own error (or a plain ValueError/
TypeError raised by fnn) whose message names the gate or argument and the shapes/dtypes involved,
never an error thrown from deep inside JAX; the CLI prints the message and exits 1 (2 for
argparse's own usage errors) without a traceback."""

import dataclasses
import json
import os
import re
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import nn, ops, train
from fnn.cli import main
from fnn.train import CheckpointError, DataError

from test_data import write_cifar, write_mnist

JAX_DIR = os.path.dirname(jax.__file__)
FNN_DIR = os.path.dirname(fnn.__file__)


# ---- user gates with broken VJPs --------------------------------------------------------------
def _gate(name, vjp):
    gate = fnn.defgate(lambda x: (x * 2.0, None), name=name)
    gate.defvjp(vjp)
    return gate


too_many = _gate("too_many", lambda g, saved: (2.0 * g, g))
wrong_shape = _gate("wrong_shape", lambda g, saved: (jnp.sum(g, axis=0),))
wrong_dtype = _gate("wrong_dtype", lambda g, saved: ((2.0 * g).astype(jnp.float16),))
not_a_tuple = _gate("not_a_tuple", lambda g, saved: 2.0 * g)


def grad_through(gate):
    return lambda tmp: fnn.grad(lambda x: ops.sum(gate(x)))(jnp.ones((3, 4)))


# ---- small fixtures ---------------------------------------------------------------------------
X = jnp.ones((3, 4))
KEY = jax.random.PRNGKey(0)


@dataclasses.dataclass
class Tiny:
    """A Dataset-like object: 64 examples of 4x4x1, 10 classes."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray = None
    y_val: np.ndarray = None

    @property
    def input_shape(self):
        return tuple(self.x_train.shape[1:])


def tiny(**changes):
    rng = np.random.default_rng(0)
    d = Tiny(
        rng.standard_normal((64, 4, 4, 1)).astype(np.float32),
        rng.integers(0, 10, 64).astype(np.int32),
    )
    return dataclasses.replace(d, **changes)


def fit_tiny(model=None, **changes):
    model = model or nn.mlp((4,))
    start = changes.pop("start", None)
    data = tiny(**changes)
    return lambda tmp: train.fit(
        model, train.make_optimizer("sgd", 0.1), data, epochs=1, batch_size=16, start=start
    )


def with_nan():
    x = tiny().x_train.copy()
    x[5, 1, 2, 0], x[9, 0, 0, 0] = np.nan, np.inf
    return x


def mlp_apply(x):
    model = nn.mlp((8,))
    params, state, _ = model.init(KEY, (4, 4, 1))
    return lambda tmp: model.apply(params, state, x)


def other_params_apply(tmp):
    params, state, _ = nn.mlp((8,)).init(KEY, (4, 4, 1))
    return nn.mlp((8,), dropout=0.5).apply(params, state, jnp.ones((2, 4, 4, 1)))


def truncated_idx(tmp):
    write_mnist(tmp / "m", compress=False)
    path = tmp / "m" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    return train.read_idx(str(path))


def truncated_cifar(tmp):
    write_cifar(tmp / "c", n_per_file=2)
    path = tmp / "c" / "data_batch_1.bin"
    path.write_bytes(path.read_bytes()[:-100])
    return train.read_cifar10_file(str(path))


def tiny_state(hidden=(8,), seed=0):
    model = nn.mlp(hidden)
    return train.init_train_state(model, train.make_optimizer("adam"), (4, 4, 1), seed)


def saved_state(tmp, hidden=(8,)):
    path = str(tmp / "ck.safetensors")
    train.save_train_state(path, tiny_state(hidden))
    return path


def load_other_model(tmp):
    return train.load_train_state(saved_state(tmp, (8,)), tiny_state((16,)))


def load_flipped(tmp):
    path = saved_state(tmp)
    raw = bytearray(open(path, "rb").read())
    raw[-5] ^= 0x10  # one bit of one tensor
    open(path, "wb").write(bytes(raw))
    return train.load_train_state(path, tiny_state())


def load_truncated(tmp):
    path = saved_state(tmp)
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) - 100])
    return train.load_train_state(path, tiny_state())


def load_not_safetensors(tmp):
    path = tmp / "ck.safetensors"
    path.write_text('{"params": "this is JSON, not a checkpoint"}')
    return train.load_train_state(str(path), tiny_state())


def resume_not_a_run(tmp):
    (tmp / "somedir").mkdir()
    return train.read_config(str(tmp / "somedir"))


def resume_broken_config(tmp):
    (tmp / "run").mkdir()
    (tmp / "run" / "config.json").write_text('{"model": "mlp", "epo')
    return train.read_config(str(tmp / "run"))


# (id, call(tmp_path), expected exception type, regex the message must match)
BAD = [
    # gates: shapes, ranks, broadcasting, labels, empty batches
    (
        "matmul inner dims",
        lambda tmp: ops.matmul(X, jnp.ones((5, 2))),
        fnn.GateError,
        r"gate 'matmul'.*x f32\[3,4\] has 4, w f32\[5,2\] has 5",
    ),
    (
        "affine x vs w",
        lambda tmp: ops.affine(X, jnp.ones((5, 2)), jnp.ones(2)),
        fnn.GateError,
        r"gate 'affine'.*f32\[3,4\].*w f32\[5,2\]",
    ),
    (
        "conv2d channels",
        lambda tmp: ops.conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 1, 2))),
        fnn.GateError,
        r"gate 'conv2d'.*f32\[1,4,4,2\] has 2 channels.*f32\[3,3,1,2\] expects 1",
    ),
    (
        "conv2d rank",
        lambda tmp: ops.conv2d(jnp.ones((4, 4, 1)), jnp.ones((3, 3, 1, 2))),
        fnn.GateError,
        r"gate 'conv2d'.*rank 4.*f32\[4,4,1\]",
    ),
    (
        "broadcasting (a gate)",
        lambda tmp: ops.add(X, jnp.ones(3)),
        fnn.GateError,
        r"gate 'add'.*f32\[3,4\], f32\[3\].*broadcast",
    ),
    (
        "labels out of range",
        lambda tmp: ops.softmax_cross_entropy(X, jnp.array([0, 4, 7])),
        fnn.GateError,
        r"softmax_cross_entropy.*\[0, 4\).*f32\[3,4\].*values \[4, 7\]",
    ),
    (
        "float labels",
        lambda tmp: ops.softmax_cross_entropy(X, jnp.zeros(3)),
        fnn.GateError,
        r"softmax_cross_entropy.*integer.*f32\[3\]",
    ),
    (
        "labels wrong shape",
        lambda tmp: ops.svm_loss(X, jnp.zeros((3, 1), jnp.int32)),
        fnn.GateError,
        r"svm_loss.*shape \(3,\).*i32\[3,1\]",
    ),
    (
        "empty batch",
        lambda tmp: ops.softmax_cross_entropy(jnp.ones((0, 4)), jnp.zeros(0, jnp.int32)),
        fnn.GateError,
        r"empty batch.*f32\[0,4\]",
    ),
    (
        "sequence gate, batch-major x",
        lambda tmp: ops.lstm_sequence(
            jnp.ones((2, 6, 3)),
            *[jnp.ones((2, 4))] * 2,
            jnp.ones((3, 16)),
            jnp.ones((4, 16)),
            jnp.ones(16),
        ),
        fnn.GateError,
        r"gate 'lstm_sequence': x must be \(T, N, D\) \(time-major\) and h0 "
        r"\(N, H\), got x f32\[2,6,3\], h0 f32\[2,4\]",
    ),
    (
        "sequence gate, bias shape",
        lambda tmp: ops.gru_sequence(
            jnp.ones((6, 2, 3)),
            jnp.ones((2, 4)),
            jnp.ones((3, 12)),
            jnp.ones((4, 12)),
            jnp.ones(12),
            jnp.ones(4),
        ),
        fnn.GateError,
        r"gate 'gru_sequence': bh must be \(12,\) for x f32\[6,2,3\] and h0 "
        r"f32\[2,4\], got bh f32\[4\]",
    ),
    (
        "sequence gate, mixed dtypes",
        lambda tmp: ops.rnn_sequence(
            jnp.ones((6, 2, 3)),
            jnp.ones((2, 4), jnp.bfloat16),
            jnp.ones((3, 4)),
            jnp.ones((4, 4)),
            jnp.ones(4),
        ),
        fnn.GateError,
        r"gate 'rnn_sequence': every input must be a float array of one dtype, "
        r"got x f32\[6,2,3\] and h0 bf16\[2,4\]",
    ),
    (
        "NaN input (debug_nans)",
        lambda tmp: _debug(ops.log, jnp.array([1.0, -1.0])),
        fnn.NanOriginError,
        r"gate 'log' forward.*nan.*input 0: f32\[2\] in \[-1, 1\]",
    ),
    # engine
    (
        "VJP: too many gradients",
        grad_through(too_many),
        fnn.VJPContractError,
        r"gate 'too_many' returned 2 gradients for 1 inputs \(f32\[3,4\]\)",
    ),
    (
        "VJP: wrong shape",
        grad_through(wrong_shape),
        fnn.VJPContractError,
        r"gate 'wrong_shape' returned gradient f32\[4\] for input 0 which is f32\[3,4\]",
    ),
    (
        "VJP: wrong dtype",
        grad_through(wrong_dtype),
        fnn.VJPContractError,
        r"gate 'wrong_dtype' returned gradient f16\[3,4\] for input 0 which is f32\[3,4\]",
    ),
    (
        "VJP: not a tuple",
        grad_through(not_a_tuple),
        fnn.VJPContractError,
        r"gate 'not_a_tuple' returned f32\[3,4\]; it must return a tuple",
    ),
    (
        "argnums out of range",
        lambda tmp: fnn.grad(lambda a, b: ops.sum(a * b), argnums=2)(X, X),
        ValueError,
        r"argnums=2 but f was called with 2 positional",
    ),
    (
        "argnums on an int argument",
        lambda tmp: fnn.grad(lambda a, y: ops.sum(a), argnums=1)(X, jnp.array([1, 2])),
        TypeError,
        r"argument 1 has a leaf of dtype int32.*float inputs",
    ),
    (
        "non-scalar output",
        lambda tmp: fnn.grad(lambda a: a * 2.0)(X),
        TypeError,
        r"one scalar output, got f32\[3,4\]",
    ),
    (
        "a primitive without a rule",  # (JAX has no derivative of igamma's derivative either)
        lambda tmp: fnn.grad(lambda a: jnp.sum(jax.lax.igamma_grad_a(a, a)))(X),
        fnn.MissingRuleError,
        r"(?s)no hand-written rule for the JAX primitive 'igamma_grad_a'.*"
        r"f32\[3,4\].*test_bad_input.py.*fnn.primitive_gate",
    ),
    (
        "betainc in a",
        lambda tmp: fnn.grad(lambda a: jnp.sum(jax.lax.betainc(a, a, X * 0 + 0.5)))(X),
        fnn.GateError,
        r"'lax.regularized_incomplete_beta': no gradient with respect to a "
        r"\(f32\[3,4\]\).*jax.grad refuses it too.*Hold a fixed",
    ),
    (
        "select_and_gather_add with window dilation",
        lambda tmp: fnn.grad(
            lambda t: jnp.sum(
                jax.extend.core.primitives.select_and_gather_add_p.bind(
                    t,
                    X,
                    select_prim=jax.lax.ge_p,
                    window_dimensions=(2, 2),
                    window_strides=(1, 1),
                    padding=((0, 0), (0, 0)),
                    base_dilation=(1, 1),
                    window_dilation=(2, 1),
                )
            )
        )(X),
        fnn.GateError,
        r"'lax.select_and_gather_add': no gradient with window_dilation=\(2, 1\) "
        r"\(tangents float32\[3, 4\]\).*jax.grad refuses it too",
    ),
    (
        "polygamma in m",
        lambda tmp: fnn.grad(lambda m: jnp.sum(jax.lax.polygamma(m, X)))(X),
        fnn.GateError,
        r"'lax.polygamma': no gradient with respect to m \(f32\[3,4\]\)",
    ),
    # layers and models
    ("Dense(0)", lambda tmp: nn.Dense(0), ValueError, r"Dense features must be a positive int.*0"),
    (
        "input shape with a batch axis",
        lambda tmp: nn.mlp((8,)).init(KEY, (None, 64)),
        ValueError,
        r"mlp: input_shape must be the shape of one example.*\(None, 64\)",
    ),
    (
        "Conv2D on flat input",
        lambda tmp: nn.cnn((4,)).init(KEY, (64,)),
        ValueError,
        r"in layer cnn/0_conv2d: Conv2D takes images \(H, W, C\).*\(64,\)",
    ),
    (
        "apply on the wrong image size",
        mlp_apply(jnp.ones((2, 28, 28, 1))),
        fnn.GateError,
        r"in layer mlp/1_dense: gate 'affine': x f32\[2,784\].*w f32\[16,8\]",
    ),
    (
        "params of another model",
        other_params_apply,
        ValueError,
        r"mlp: params do not fit this model.*3_dropout",
    ),
    (
        "unknown model",
        lambda tmp: nn.build_model("vgg"),
        ValueError,
        r"unknown model 'vgg'; choose one of mlp, cnn, resnet",
    ),
    # optimizers and training
    (
        "unknown optimizer",
        lambda tmp: train.make_optimizer("adagrad"),
        ValueError,
        r"unknown optimizer 'adagrad'.*adam",
    ),
    (
        "negative learning rate",
        lambda tmp: train.make_optimizer("sgd", -0.1),
        ValueError,
        r"learning rate must be a finite number >= 0.*-0.1",
    ),
    (
        "unknown grad mode",
        lambda tmp: train.make_train_step(nn.mlp((4,)), train.make_optimizer(), grad="numeric"),
        ValueError,
        r"grad must be one of custom, builtin, got 'numeric'",
    ),
    (
        "training labels out of range",
        fit_tiny(y_train=np.arange(64, dtype=np.int32) % 12),
        DataError,
        r"y_train: labels must lie in \[0, 10\).*10, 11 at examples 10, 11, 22",
    ),
    (
        "float training labels",
        fit_tiny(y_train=np.zeros(64, np.float32)),
        DataError,
        r"the loss 'softmax_cross_entropy' cannot take the model's scores \(N, 10\) with labels "
        r"y_train \(N\) \(float32\).*integer class indices",
    ),
    (
        "x and y lengths differ",
        fit_tiny(y_train=np.zeros(60, np.int32)),
        DataError,
        r"x_train holds 64 examples but y_train holds 60 labels.*f32\[64,4,4,1\].*i32\[60\]",
    ),
    (
        "NaN/inf in the data",
        fit_tiny(x_train=with_nan()),
        DataError,
        r"x_train f32\[64,4,4,1\] holds 1 NaN and 1 inf values, in examples 5, 9",
    ),
    (
        "empty training set",
        fit_tiny(x_train=np.zeros((0, 4, 4, 1), np.float32), y_train=np.zeros(0, np.int32)),
        DataError,
        r"x_train is empty \(f32\[0,4,4,1\]\)",
    ),
    (
        "process id out of range",
        lambda tmp: train.distributed.initialize("127.0.0.1:1", 2, 2),
        train.DistributedError,
        r"process id 2 is out of range for 2 processes \(0 to 1; from the "
        r"arguments\)",
    ),
    (
        "batch larger than the data",
        lambda tmp: train.steps_per_epoch(10, 32),
        ValueError,
        r"batch size 32 does not fit in the 10 training examples",
    ),
    (
        "model without class scores",
        fit_tiny(nn.serial(nn.Conv2D(2))),
        ValueError,
        r"maps one example \(4, 4, 1\) to \(4, 4, 2\).*needs one score per class",
    ),
    (
        "start state of another model",
        fit_tiny(start=tiny_state((16,))),
        ValueError,
        r"(?s)start: the TrainState does not fit.*params/1_dense/w: \(16, 16\) in start, \(16, 4\)",
    ),
    # issue 16: API inputs that used to reach raw Python errors
    (
        "start state of another optimizer",
        lambda tmp: train.fit(
            nn.mlp((4,)),
            train.make_optimizer("sgd", 0.1),
            tiny(),
            epochs=1,
            batch_size=16,
            start=train.init_train_state(nn.mlp((4,)), train.make_optimizer("adam"), (4, 4, 1), 0),
        ),
        ValueError,
        r"start: its opt_state is not a state of this optimizer \(start holds "
        r"\(ScaleByAdamState, .*this optimizer makes \(EmptyState",
    ),
    (
        "eval_batch_size=0",
        lambda tmp: train.fit(
            nn.mlp((4,)), train.make_optimizer(), tiny(), epochs=1, batch_size=16, eval_batch_size=0
        ),
        ValueError,
        r"eval_batch_size must be a positive integer, got 0",
    ),
    (
        "epochs=0",
        lambda tmp: train.fit(nn.mlp((4,)), train.make_optimizer(), tiny(), epochs=0),
        ValueError,
        r"epochs must be a positive integer, got 0",
    ),
    (
        "negative clip",
        lambda tmp: train.make_optimizer("adam", clip=-1),
        ValueError,
        r"clip must be a finite number > 0 .*got -1",
    ),
    (
        "NaN weight decay",
        lambda tmp: train.make_optimizer("adamw", weight_decay=float("nan")),
        ValueError,
        r"weight_decay must be a finite number >= 0, got nan",
    ),
    (
        "seed beyond 64 bits",
        lambda tmp: train.init_train_state(nn.mlp((4,)), train.make_optimizer(), (4, 4, 1), 2**64),
        ValueError,
        r"seed must be an integer in \[0, 2\*\*64-1\], got 18446744073709551616",
    ),
    (
        "more devices than JAX sees",
        lambda tmp: train.make_train_step(
            nn.mlp((4,)), train.make_optimizer(), devices=jax.device_count() + 1
        ),
        ValueError,
        r"devices=\d+ but JAX sees \d+ device.*xla_force_host_platform_device_count",
    ),
    (
        "batch not divisible by devices",
        lambda tmp: _not_divisible(),
        ValueError,
        r"batch size 30 is not divisible by the 4 devices.*multiple of 4 \(e.g. 28\)",
    ),
    (
        "unknown shard",
        lambda tmp: train.make_train_step(
            nn.mlp((4,)), train.make_optimizer(), devices=1, shard="weights"
        ),
        ValueError,
        r"shard must be one of 'none', 'params' \(or None\), got 'weights'",
    ),
    (
        "shard params on one device",
        lambda tmp: fnn.train.parallel.data_parallel(1, "params"),
        ValueError,
        r"shard='params' splits parameters across several devices, but the mesh's "
        r"'fsdp' axis has 1",
    ),
    (
        "shard params, mesh without fsdp",
        lambda tmp: fnn.train.parallel.data_parallel(
            jax.sharding.Mesh(np.array(jax.devices()[:1] * 4), ("data",)), "params"
        ),
        ValueError,
        r"splits parameters along the mesh axis 'fsdp', but this mesh has axes "
        r"\('data',\)",
    ),
    # data files
    (
        "unknown dataset",
        lambda tmp: train.load_dataset("imagenet"),
        ValueError,
        r"unknown dataset 'imagenet'; choose one of digits, mnist",
    ),
    (
        "missing data file",
        lambda tmp: train.load_dataset("mnist", str(tmp)),
        DataError,
        r"expected file train-images-idx3-ubyte \(or train-images-idx3-ubyte.gz\), not found",
    ),
    (
        "truncated IDX file",
        truncated_idx,
        DataError,
        r"train-images-idx3-ubyte: IDX header says shape \(40, 6, 6\) \(1440 bytes.*holds 1433 "
        r"bytes.*truncated",
    ),
    (
        "truncated CIFAR-10 file",
        truncated_cifar,
        DataError,
        r"data_batch_1.bin: .*records of 3073 bytes.*size 6046 is not a positive multiple",
    ),
    # checkpoints and run directories
    (
        "checkpoint of another model",
        load_other_model,
        CheckpointError,
        r"params/1_dense/w: \(16, 8\) in the checkpoint, \(16, 16\) in the model",
    ),
    (
        "altered checkpoint",
        load_flipped,
        CheckpointError,
        r"ck.safetensors is damaged: the sha256.*altered or corrupted",
    ),
    (
        "truncated checkpoint",
        load_truncated,
        CheckpointError,
        r"ck.safetensors is truncated: its header describes \d+ bytes.*holds \d+",
    ),
    (
        "not a checkpoint",
        load_not_safetensors,
        CheckpointError,
        r"truncated or not a safetensors checkpoint",
    ),
    (
        "not a run directory",
        resume_not_a_run,
        FileNotFoundError,
        r"somedir is not a run directory: it has no config.json",
    ),
    (
        "damaged config.json",
        resume_broken_config,
        ValueError,
        r"run is not a usable run directory: .*config.json is damaged",
    ),
]


def _debug(gate, x):
    with fnn.debug_nans():
        return gate(x)


def _not_divisible():
    # a DataParallel over 4 "devices" (one device named 4 times is enough for the check)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1] * 4), ("data",))
    fnn.train.parallel.DataParallel(mesh).check_batch_size(30)


def test_the_table_covers_at_least_25_kinds():
    assert len(BAD) >= 25 and len({name for name, *_ in BAD}) == len(BAD)


@pytest.mark.parametrize("call, exc, pattern", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_gives_a_clear_error(call, exc, pattern, tmp_path):
    with pytest.raises(exc, match=pattern) as info:
        call(tmp_path)
    e = info.value
    assert isinstance(e, (fnn.FnnError, ValueError, TypeError, OSError))
    # raised by fnn (or a file system call it made), not thrown from inside JAX
    frames = traceback.extract_tb(e.__traceback__)
    assert not frames[-1].filename.startswith(JAX_DIR), frames[-1]
    assert any(f.filename.startswith(FNN_DIR) for f in frames)


# ---- the command line -------------------------------------------------------------------------
TINY = ["--hidden", "8", "--limit", "200", "--epochs", "1", "--no-progress"]


def write_run(tmp, name="run", hidden=(8,), saved_hidden=(8,)):
    """A run directory made by hand: config.json and last.safetensors of an MLP on digits."""
    run = tmp / name
    run.mkdir()
    config = train.TrainConfig(hidden=hidden, limit=200, epochs=1)
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    model = nn.mlp(saved_hidden)
    ts = train.init_train_state(model, train.make_optimizer("adam"), (8, 8, 1), 0)
    train.save_train_state(str(run / "last.safetensors"), ts, config.to_dict())
    return run


def cli_other_model(tmp):
    return ["train", "--resume", str(write_run(tmp, saved_hidden=(16,)))]


def cli_corrupt_checkpoint(tmp):
    run = write_run(tmp)
    path = run / "last.safetensors"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    return ["train", "--resume", str(run)]


def cli_truncated_mnist(tmp):
    write_mnist(tmp / "m", compress=False)
    path = tmp / "m" / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-3])
    return [
        "train",
        "--dataset",
        "mnist",
        "--data-dir",
        str(tmp / "m"),
        "--out",
        str(tmp / "out"),
        *TINY,
    ]


CLI = [
    (
        "missing data",
        lambda tmp: ["train", "--dataset", "cifar10", "--data-dir", str(tmp)],
        r"data_batch_1.bin",
    ),
    (
        "truncated data file",
        cli_truncated_mnist,
        r"train-labels-idx1-ubyte: IDX header says "
        r"shape \(40,\).*truncated",
    ),
    ("not a run directory", lambda tmp: ["train", "--resume", str(tmp)], r"is not a run directory"),
    (
        "checkpoint of another model",
        cli_other_model,
        r"does not fit this model.*params/1_dense/w: \(64, 16\) in the checkpoint, \(64, 8\)",
    ),
    ("corrupted checkpoint", cli_corrupt_checkpoint, r"last.safetensors is damaged: the sha256"),
    (
        "batch larger than the data",
        lambda tmp: ["train", "--batch-size", "5000", "--out", str(tmp / "o"), *TINY],
        r"batch size 5000",
    ),
    (
        "more devices than JAX sees",
        lambda tmp: ["train", "--devices", str(jax.device_count() + 1), *TINY],
        r"devices=\d+ but JAX sees",
    ),
    # issue 16
    (
        "--data-dir names a file",
        lambda tmp: [
            "train",
            "--dataset",
            "mnist",
            "--data-dir",
            str(write_run(tmp) / "config.json"),
        ],
        r"config.json' is a file, not a directory",
    ),
    # refused by the command from the options alone: bad usage, exit status 2
    (
        "--out is empty",
        lambda tmp: ["train", "--out", "", *TINY],
        r"--out must name a directory, got an empty string",
        2,
    ),
    (
        "--resume is empty",
        lambda tmp: ["train", "--resume", ""],
        r"--resume must name a run directory, got an empty string",
        2,
    ),
]
USAGE = [
    ["train", "--model", "vgg"],
    ["train", "--optimizer", "adagrad"],
    ["train", "--dataset", "imagenet"],
    ["train", "--lr", "inf"],
    ["train", "--lr", "-1"],
    ["train", "--devices", "0"],
    ["train", "--epochs", "0"],
    ["train", "--hidden", "a,b"],
    ["train", "--clip", "-1"],
    ["train", "--weight-decay", "nan"],
    ["train", "--limit", "0"],
    ["train", "--seed", str(2**64)],
    ["train", "--seed", "-1"],
    ["train", "--seed", "1.5"],
    ["train", "--chunk-seconds", "-1"],
]


@pytest.mark.parametrize(
    "argv, pattern, status",
    [(*c[1:3], c[3] if len(c) > 3 else 1) for c in CLI],
    ids=[c[0] for c in CLI],
)
def test_cli_prints_the_message_and_exits_1(argv, pattern, status, tmp_path, capsys):
    """Exit status 1: what the command found running; 2: options it refuses (bad usage)."""
    assert main(argv(tmp_path)) == status
    captured = capsys.readouterr()
    assert captured.err.startswith("fnn train: error: ")
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert re.search(pattern, captured.err, re.S), captured.err


@pytest.mark.parametrize("argv", USAGE, ids=[" ".join(a[1:]) for a in USAGE])
def test_cli_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument" in err and "Traceback" not in err
