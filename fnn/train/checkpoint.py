"""Checkpoints in safetensors (no pickle): named arrays plus JSON metadata, written atomically.

A checkpoint maps each leaf of each saved pytree to a tensor named by its path, e.g.

    params/1_dense/w    state/2_batch_norm/mean    opt_state/0/mu/1_dense/w    key

and stores the rest (step, epoch, config, ...) as JSON strings in the safetensors metadata.
Loading needs templates of the trees (a freshly initialized model and optimizer state): the
file is matched against them key by key and shape by shape, and every mismatch is reported.
Saving writes a temporary file in the same directory, fsyncs it and renames it over the target
(os.replace), so a crash or a failed save leaves the previous checkpoint intact (a killed save
may leave a stale `.NAME.*.tmp` beside it, which nothing reads).
The metadata also holds `sha256`, a digest of every tensor (name, dtype, shape, bytes) and of
the other metadata: loading recomputes it, so a truncated, altered or bit-flipped file raises
CheckpointError instead of loading wrong numbers. A file that says it is fnn-checkpoint/2 must
carry the digest; older fnn-checkpoint/1 files and safetensors files from other tools have none
and load unverified.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from fnn.errors import FnnError
from fnn.pytrees import path_name
from fnn.train.state import TrainState

FORMAT = "fnn-checkpoint/2"  # /2: with the sha256 digest (required); /1 files load unverified


class CheckpointError(FnnError, ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model it is loaded into."""


def _to_numpy(leaf):
    if jnp.issubdtype(jnp.result_type(leaf), jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    leaf = np.asarray(leaf)
    return leaf if leaf.flags.c_contiguous else leaf.copy(order="C")  # (keeps 0-d arrays 0-d)


def flatten(tree, prefix: str) -> dict[str, np.ndarray]:
    """{'prefix/path/to/leaf': numpy array} for every leaf of `tree`."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = path_name(path, prefix)
        if name in out:
            raise CheckpointError(f"two leaves of '{prefix}' have the same name {name!r}")
        out[name] = _to_numpy(leaf)
    return out


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a part."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; use the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def digest(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> str:
    """sha256 (hex) of every tensor's name, dtype, shape and bytes, and of the metadata strings
    (all but the digest itself), in sorted order: independent of the file's layout."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    h.update(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    return h.hexdigest()


def save_checkpoint(path: str, trees: dict, metadata: dict | None = None) -> None:
    """Save pytrees {'params': .., 'opt_state': .., ...} and JSON-able metadata to `path`."""
    tensors = {}
    for prefix, tree in trees.items():
        tensors.update(flatten(tree, prefix))
    meta = {"format": json.dumps(FORMAT)}
    for k, v in (metadata or {}).items():
        if k == "sha256":
            raise CheckpointError("metadata key 'sha256' is reserved for the checkpoint's digest")
        meta[k] = json.dumps(v)
    meta["sha256"] = json.dumps(digest(tensors, meta))
    atomic_write(path, safetensors.numpy.save(tensors, metadata=meta))


def _check_length(path: str, raw: bytes) -> None:
    """CheckpointError if the file is shorter than its safetensors header says it is."""
    if len(raw) < 8:
        raise CheckpointError(f"{path} is truncated or empty: {len(raw)} bytes, fewer than the "
                              "8-byte header size of a safetensors file")
    n = int.from_bytes(raw[:8], "little")
    if 8 + n > len(raw):
        raise CheckpointError(f"{path} is truncated or not a safetensors checkpoint: its first 8 "
                              f"bytes announce a {n}-byte header but the file holds {len(raw)} "
                              "bytes")
    try:
        header = json.loads(raw[8:8 + n])
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except Exception:
        return  # a malformed header: safetensors' own error says what is wrong
    need = 8 + n + max(ends, default=0)
    if len(raw) < need:
        raise CheckpointError(f"{path} is truncated: its header describes {need} bytes of "
                              f"tensors and metadata but the file holds {len(raw)} (cut short "
                              "while being copied, or a disk filled up?)")


def read_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """All tensors of a checkpoint by name, and its metadata (JSON-decoded)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from None
    _check_length(path, raw)
    try:  # the format: 8-byte little-endian header size, a JSON header, the tensor bytes
        n = int.from_bytes(raw[:8], "little")
        raw_meta = json.loads(raw[8:8 + n]).get("__metadata__") or {}
        if not all(isinstance(v, str) for v in raw_meta.values()):
            raise ValueError("metadata values must be strings")
        tensors = safetensors.numpy.load(raw)
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint: {e}") from None
    except BaseException as e:  # a panic in safetensors' Rust code (pyo3's PanicException)
        if type(e).__name__ != "PanicException":
            raise
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint: {e}") from None
    stored = raw_meta.get("sha256")
    if stored is None and raw_meta.get("format") == json.dumps(FORMAT):
        raise CheckpointError(f"{path} is damaged: it is an {FORMAT} file but its sha256 digest "
                              "is missing from its metadata")
    if stored is not None:
        computed = json.dumps(digest(tensors, raw_meta))
        if computed != stored:
            raise CheckpointError(
                f"{path} is damaged: the sha256 of its tensors and metadata is "
                f"{computed.strip(chr(34))[:16]}..., not the {str(stored).strip(chr(34))[:16]}... "
                "recorded when it was saved. It was altered or corrupted after it was written; "
                "load another checkpoint (best.safetensors, an older copy) instead")
    meta = {}
    for k, v in raw_meta.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return tensors, meta


def restore(tensors: dict[str, np.ndarray], templates: dict, *, source: str = "checkpoint"):
    """Trees shaped like `templates` ({'params': tree, ...}) filled from `tensors`.

    Raises CheckpointError listing every missing key, unexpected key and shape mismatch.
    """
    missing, mismatched, trees = [], [], {}
    expected = set()
    for prefix, template in templates.items():
        paths, treedef = jax.tree_util.tree_flatten_with_path(template)
        leaves = []
        for path, leaf in paths:
            name = path_name(path, prefix)
            expected.add(name)
            shape = _shape(leaf)
            if name not in tensors:
                missing.append(f"{name} {shape}")
                leaves.append(leaf)
                continue
            got = tensors[name]
            if tuple(got.shape) != shape:
                mismatched.append(f"{name}: {tuple(got.shape)} in the checkpoint, {shape} "
                                  "in the model")
            leaves.append(_like(got, leaf))
        trees[prefix] = jax.tree_util.tree_unflatten(treedef, leaves)
    order = {prefix: i for i, prefix in enumerate(templates)}  # params first, as given
    unexpected = sorted((k for k in tensors if k.split("/")[0] in order and k not in expected),
                        key=lambda k: (order[k.split("/")[0]], k))
    if missing or mismatched or unexpected:
        lines = [f"the {source} does not fit this model/optimizer:"]
        for title, items in (("shape mismatches", mismatched),
                             ("missing from the checkpoint", missing),
                             ("in the checkpoint but not in the model", unexpected)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines += [f"    {item}" for item in items[:20]]
                if len(items) > 20:
                    lines.append(f"    ... and {len(items) - 20} more")
        raise CheckpointError("\n".join(lines))
    return trees


def load_checkpoint(path: str, templates: dict) -> tuple[dict, dict]:
    """(trees shaped like `templates`, metadata) from a checkpoint written by save_checkpoint."""
    tensors, meta = read_checkpoint(path)
    return restore(tensors, templates, source=f"checkpoint {path}"), meta


def _shape(leaf) -> tuple:
    if jnp.issubdtype(jnp.result_type(leaf), jax.dtypes.prng_key):
        return tuple(jax.random.key_data(leaf).shape)
    return tuple(getattr(leaf, "shape", np.shape(leaf)))


def _like(array: np.ndarray, template):
    if jnp.issubdtype(jnp.result_type(template), jax.dtypes.prng_key):
        return jax.random.wrap_key_data(jnp.asarray(array), impl=jax.random.key_impl(template))
    return jnp.asarray(array, dtype=jnp.result_type(template))


def save_train_state(path: str, ts: TrainState, config: dict | None = None,
                     **metadata) -> None:
    """Save a TrainState (params, state, opt_state, key, epoch, step) with the run's config."""
    save_checkpoint(path, {"params": ts.params, "state": ts.state, "opt_state": ts.opt_state,
                           "key": ts.key},
                    {"epoch": ts.epoch, "step": ts.step, "config": config or {}, **metadata})


def load_train_state(path: str, template: TrainState) -> tuple[TrainState, dict]:
    """A TrainState from `path`, shaped like `template` (e.g. init_train_state of the same
    model and optimizer); and the checkpoint's metadata (config, ...)."""
    tensors, meta = read_checkpoint(path)
    trees = restore(tensors, {"params": template.params, "state": template.state,
                              "opt_state": template.opt_state, "key": template.key},
                    source=f"checkpoint {path}")
    ts = TrainState(trees["params"], trees["state"], trees["opt_state"], trees["key"],
                    int(meta.get("epoch", 0)), int(meta.get("step", 0)))
    return ts, meta
