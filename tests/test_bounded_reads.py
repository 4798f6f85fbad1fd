"""Bounded reads: a file's header is checked against the file's size before its data is read,
and memory stays near the size of the real data. The two bombs of issue 16, each read in a
subprocess whose address space is limited (RLIMIT_AS) to what it uses plus 512 MiB:

- a 1.5 MB .gz IDX file: a valid 1x28x28 header, its 784 bytes, then 1.5 GB of zeros (the
  reader used to decompress it whole: 3.25 GB);
- a sparse 20 GB checkpoint whose header declares a tensor larger than the file, and one whose
  header is consistent with its 20 GB but not with the model it is loaded into (both used to be
  read whole before anything was checked).

Each child prints the error and how much its resident memory grew (ru_maxrss)."""

import gzip
import json
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fnn import nn, train
from fnn.train import CheckpointError, DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADROOM = 512 << 20  # the address space a child may add to what it has after its imports


def child_env():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("XLA_FLAGS", None)
    return env


LIMITED = textwrap.dedent(r"""
    import json, resource, sys
    import jax, jax.numpy as jnp
    from fnn import nn, train
    jnp.ones(1).block_until_ready()  # the backend is up: its address space is counted
    model = nn.mlp((8,))
    template = train.init_train_state(model, train.make_optimizer("adam"), (28, 28, 1), 0)

    def vm():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

    limit = vm() + int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kind, path = sys.argv[1], sys.argv[2]
    try:
        if kind == "idx":
            train.read_idx(path)
        elif kind == "mnist":
            train.load_dataset("mnist", path)
        elif kind == "checkpoint":
            train.read_checkpoint(path)
        else:
            train.load_train_state(path, template)
        error = None
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB
    print("RESULT " + json.dumps({"error": error, "rss_growth_kib": grew}))
""")


def run_limited(kind, path):
    r = subprocess.run(
        [sys.executable, "-c", LIMITED, kind, str(path), str(HEADROOM)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    print(
        f"{kind} {os.path.basename(str(path))}: rss grew {out['rss_growth_kib'] / 1024:.1f} MiB;"
        f" {out['error']}"
    )
    return out


def gzip_bomb(path, header: bytes, zeros: int, chunk: int = 16 << 20):
    """A gzip file of `header` followed by `zeros` zero bytes, made of concatenated gzip members
    (valid gzip: readers decompress them one after the other), in about a second."""
    member = gzip.compress(b"\0" * chunk, compresslevel=9)
    with open(path, "wb") as f:
        f.write(gzip.compress(header))
        for _ in range(zeros // chunk):
            f.write(member)
    return os.path.getsize(path)


def test_gzip_idx_bomb_stops_at_the_declared_size(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    header = (
        bytes([0, 0, 8, 3]) + struct.pack(">3I", 1, 28, 28) + bytes(range(256)) * 3 + b"\x01" * 16
    )
    size = gzip_bomb(path, header, zeros=1536 << 20)  # 1.5 GiB of zeros after the data
    assert size < 2 << 20
    out = run_limited("idx", path)
    assert out["error"].startswith("DataError") and "train-images-idx3-ubyte.gz" in out["error"]
    assert "more than 784 bytes after the header" in out["error"]
    assert out["rss_growth_kib"] < 64 << 10  # well under 64 MiB (the file expands to 1.5 GiB)


def test_gzip_idx_header_larger_than_the_file_can_hold(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">3I", 60000, 2800, 2800)))
    with pytest.raises(
        DataError,
        match=r"t10k-images-idx3-ubyte.gz: IDX header says shape "
        r"\(60000, 2800, 2800\).*decompresses to at most",
    ):
        train.read_idx(str(path))


def test_idx_reads_exactly_the_declared_bytes(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=">i2").reshape(2, 3, 4)
    raw = bytes([0, 0, 0x0B, 3]) + struct.pack(">3I", 2, 3, 4) + data.tobytes()
    for name, content in (("plain-idx", raw), ("packed-idx.gz", gzip.compress(raw))):
        (tmp_path / name).write_bytes(content)
        out = train.read_idx(str(tmp_path / name))
        assert out.dtype == np.int16 and np.array_equal(out, data)
    (tmp_path / "long-idx.gz").write_bytes(gzip.compress(raw + b"\0"))
    with pytest.raises(DataError, match="long-idx.gz.*more than 48 bytes after the header"):
        train.read_idx(str(tmp_path / "long-idx.gz"))
    (tmp_path / "cut-idx.gz").write_bytes(gzip.compress(raw[:-5]))
    with pytest.raises(DataError, match="cut-idx.gz.*holds 43 bytes after the header"):
        train.read_idx(str(tmp_path / "cut-idx.gz"))


def sparse_checkpoint(path, tensors: dict, size: int | None = None):
    """A safetensors file whose header declares `tensors` {name: (dtype code, shape, begin,
    end)}, then a hole up to `size` bytes (default: as long as the header says; a sparse file,
    no disk used)."""
    header = {
        name: {"dtype": d, "shape": list(s), "data_offsets": [b, e]}
        for name, (d, s, b, e) in tensors.items()
    }
    header["__metadata__"] = {
        "format": json.dumps("fnn-checkpoint/2"),
        "epoch": "1",
        "step": "10",
        "sha256": json.dumps("0" * 64),
    }
    text = json.dumps(header).encode()
    if size is None:
        size = 8 + len(text) + max(e for _, _, _, e in tensors.values())
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(size)


GIB = 1 << 30


def test_sparse_checkpoint_declaring_more_than_the_file(tmp_path):
    path = tmp_path / "huge.safetensors"
    big = 1 << 40  # 1 TiB of float32
    sparse_checkpoint(path, {"params/1_dense/w": ("F32", (1 << 38,), 0, big)}, 20 * GIB)
    assert os.stat(path).st_size == 20 * GIB and os.stat(path).st_blocks * 512 < 1 << 20
    out = run_limited("checkpoint", path)
    assert (
        out["error"].startswith("CheckpointError")
        and "huge.safetensors is truncated" in out["error"]
        and "holds 21474836480" in out["error"]
    )
    assert out["rss_growth_kib"] < 64 << 10


def test_sparse_checkpoint_that_does_not_fit_the_model_is_not_read(tmp_path):
    path = tmp_path / "last.safetensors"
    n = 20 * GIB // 4 - 64  # a consistent header: one float32 tensor filling the 20 GiB file
    sparse_checkpoint(path, {"params/1_dense/w": ("F32", (n,), 0, 4 * n)})
    out = run_limited("train_state", path)
    assert out["error"].startswith("CheckpointError")
    assert "does not fit this model" in out["error"] and f"({n},) in the checkpoint" in out["error"]
    assert out["rss_growth_kib"] < 64 << 10
    # without a model to compare with, the whole 20 GiB must be read: refused, not a crash
    out = run_limited("checkpoint", path)
    assert out["error"].startswith("CheckpointError") and "need 21474836224 bytes" in out[
        "error"
    ].replace(",", "")


def test_checkpoint_header_checks(tmp_path):
    model = nn.mlp((4,))
    ts = train.init_train_state(model, train.make_optimizer("adam"), (3, 3, 1), 0)
    path = str(tmp_path / "ck.safetensors")
    train.save_train_state(path, ts)
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])

    def write(h, tail=b""):
        text = json.dumps(h).encode()
        open(path, "wb").write(struct.pack("<Q", len(text)) + text + raw[8 + n :] + tail)

    h = json.loads(json.dumps(header))
    h["params/1_dense/w"]["shape"] = [9, 5]  # 45 floats declared over 36 floats of data
    write(h)
    with pytest.raises(
        CheckpointError,
        match=r"ck.safetensors.*'params/1_dense/w' is declared "
        r"float32\[9, 5\] \(180 bytes\) but its data "
        r"spans 144",
    ):
        train.read_checkpoint(path)
    h = json.loads(json.dumps(header))
    h["params/1_dense/w"]["dtype"] = "Q9"
    write(h)
    with pytest.raises(CheckpointError, match="ck.safetensors.*'params/1_dense/w': unknown dtype"):
        train.read_checkpoint(path)
    write(header, tail=b"junk")
    with pytest.raises(CheckpointError, match="ck.safetensors.*4 bytes follow its last tensor"):
        train.read_checkpoint(path)


def test_cifar10_size_checked_before_reading_and_gzip_refused(tmp_path):
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(b"\0" * 3073)
    os.truncate(path, 3073 * 10 + 1)
    with pytest.raises(DataError, match="data_batch_1.bin.*size 30731 is not a positive multiple"):
        train.read_cifar10_file(str(path))
    path.write_bytes(gzip.compress(b"\0" * 3073))
    with pytest.raises(DataError, match="data_batch_1.bin is gzip-compressed"):
        train.read_cifar10_file(str(path))
