"""Checkpoints in safetensors (no pickle): named arrays plus JSON metadata, written atomically.

A checkpoint maps each leaf of each saved pytree to a tensor named by its path, e.g.

    params/1_dense/w    state/2_batch_norm/mean    opt_state/0/mu/1_dense/w    key

and stores the rest (step, epoch, config, ...) as JSON strings in the safetensors metadata.
Loading needs templates of the trees (a freshly initialized model and optimizer state): the
file is matched against them key by key and shape by shape, and every mismatch is reported.
Saving writes a temporary file in the same directory, fsyncs it and renames it over the target
(os.replace), so a crash or a failed save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from fnn.errors import FnnError
from fnn.train.state import TrainState

FORMAT = "fnn-checkpoint/1"


class CheckpointError(FnnError, ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model it is loaded into."""


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _to_numpy(leaf):
    if jnp.issubdtype(jnp.result_type(leaf), jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    leaf = np.asarray(leaf)
    return leaf if leaf.flags.c_contiguous else leaf.copy(order="C")  # (keeps 0-d arrays 0-d)


def flatten(tree, prefix: str) -> dict[str, np.ndarray]:
    """{'prefix/path/to/leaf': numpy array} for every leaf of `tree`."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = "/".join([prefix] + [_key_name(k) for k in path])
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


def save_checkpoint(path: str, trees: dict, metadata: dict | None = None) -> None:
    """Save pytrees {'params': .., 'opt_state': .., ...} and JSON-able metadata to `path`."""
    tensors = {}
    for prefix, tree in trees.items():
        tensors.update(flatten(tree, prefix))
    meta = {"format": json.dumps(FORMAT)}
    for k, v in (metadata or {}).items():
        meta[k] = json.dumps(v)
    atomic_write(path, safetensors.numpy.save(tensors, metadata=meta))


def read_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """All tensors of a checkpoint by name, and its metadata (JSON-decoded)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    with open(path, "rb") as f:
        raw = f.read()
    try:  # the format: 8-byte little-endian header size, a JSON header, the tensor bytes
        n = int.from_bytes(raw[:8], "little")
        raw_meta = json.loads(raw[8:8 + n]).get("__metadata__") or {}
        tensors = safetensors.numpy.load(raw)
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint: {e}") from None
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
            name = "/".join([prefix] + [_key_name(k) for k in path])
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
