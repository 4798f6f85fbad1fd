"""Checkpoints in safetensors (no pickle): named arrays plus JSON metadata, written atomically.

A checkpoint maps each leaf of each saved pytree to a tensor named by its path, e.g.

    params/1_dense/w    state/2_batch_norm/mean    opt_state/0/mu/1_dense/w    key

and stores the rest (step, epoch, config, ...) as JSON strings in the safetensors metadata.
Loading needs templates of the trees (a freshly initialized model and optimizer state): the
file is matched against them key by key, shape by shape and dtype by dtype (exactly: a float16
tensor does not load into a float32 model unless cast=True says so), and every mismatch is
reported. Every dtype fnn computes in round-trips, bfloat16 and float8 included (ml_dtypes).

Saving goes through fnn.train.files.write_file: a temporary file in the same directory, fsynced
and renamed over the target, so a crash or a failed save leaves the previous checkpoint intact
(a killed save may leave a stale `.NAME.*.tmp` beside it, which nothing reads and the next run
in that folder removes). The file is streamed, tensor by tensor, in safetensors' layout
(`safetensors_chunks`), never assembled whole in memory; running out of memory while saving is
fnn.train.OutOfMemoryError. save_train_state(verify=True) reads the file back and checks its
digest (the run directory's best.safetensors), so a checkpoint damaged as it is written is
found at once, not when the run ends.
The metadata also holds `sha256`, a digest of every tensor (name, dtype, shape, bytes) and of
the other metadata: loading recomputes it, so a truncated, altered or bit-flipped file raises
CheckpointError instead of loading wrong numbers. A file that says it is fnn-checkpoint/2 must
carry the digest; older fnn-checkpoint/1 files and safetensors files from other tools have none
and load unverified. A training state (load_train_state, what --resume uses) needs fnn's
metadata (format, epoch, step): a file without it is refused; load_params takes its tensors as
parameters.

Reading is bounded: the 8-byte header size and the JSON header are read and checked first,
every tensor's declared dtype and shape against its byte range and all of them against the
file's size, and (when templates are given) against the model, before any tensor data is read;
the data is then read tensor by tensor while the digest is computed, keeping only the tensors
asked for. safetensors' own Python loaders read the whole file first and cannot give bfloat16
as numpy, so the header (a JSON object of names, dtypes, shapes, byte offsets) is parsed here.
In a run directory (folder=, a fnn.train.files.Folder) a checkpoint that is a symbolic link is
refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from fnn.errors import FnnError
from fnn.pytrees import path_name
from fnn.train.files import open_file, write_file
from fnn.train.memory import OutOfMemoryError, is_out_of_memory
from fnn.train.state import TrainState

FORMAT = "fnn-checkpoint/2"  # /2: with the sha256 digest (required); /1 files load unverified
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
PARTIAL = "epoch"  # tensors of a mid-epoch state: epoch/order, epoch/metrics/<name>

DTYPES = {
    "BOOL": np.bool_,
    "U8": np.uint8,
    "I8": np.int8,
    "U16": np.uint16,
    "I16": np.int16,
    "U32": np.uint32,
    "I32": np.int32,
    "U64": np.uint64,
    "I64": np.int64,
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
    "C64": np.complex64,
    "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
    "F8_E4M3FNUZ": ml_dtypes.float8_e4m3fnuz,
    "F8_E5M2FNUZ": ml_dtypes.float8_e5m2fnuz,
}
DTYPES = {code: np.dtype(t) for code, t in DTYPES.items()}


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


def _dtype_tag(dtype: np.dtype) -> str:
    """The dtype as the digest spells it: numpy's '<f4' for numpy's own types (as fnn always
    did), the name for ml_dtypes' (whose .str is an opaque '<V2')."""
    return dtype.name if dtype.isbuiltin == 2 else dtype.str


def _bytes(a: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array, without a copy (any dtype, 0-d included)."""
    return memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8))


def _tensor_tag(name: str, dtype: np.dtype, shape: tuple) -> bytes:
    return f"{name}\0{_dtype_tag(dtype)}\0{tuple(shape)}\0".encode()


def _meta_tag(meta: dict[str, str]) -> bytes:
    return json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode()


def digest(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> str:
    """sha256 (hex) of every tensor's name, dtype, shape and bytes, and of the metadata strings
    (all but the digest itself), in sorted order: independent of the file's layout."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        h.update(_tensor_tag(name, a.dtype, a.shape))
        h.update(_bytes(a))
    h.update(_meta_tag(meta))
    return h.hexdigest()


CODES = {dtype: code for code, dtype in DTYPES.items()}


def safetensors_chunks(tensors: dict[str, np.ndarray], meta: dict[str, str]):
    """The bytes of a safetensors file of `tensors` (in name order) and `meta`, as chunks: the
    header, then each tensor's own buffer, so a file is written without assembling it in
    memory (safetensors' own writer builds the whole file first, and aborts the process when
    that allocation fails). The layout is safetensors' (its loaders read it)."""
    header, at = {}, 0
    for name in sorted(tensors):
        a = tensors[name]
        if a.dtype not in CODES:
            raise CheckpointError(f"tensor {name!r}: dtype {a.dtype} cannot be saved")
        n = a.size * a.dtype.itemsize
        header[name] = {
            "dtype": CODES[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [at, at + n],
        }
        at += n
    header["__metadata__"] = meta
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the data to 8 bytes
    yield len(text).to_bytes(8, "little") + text
    for name in sorted(tensors):
        yield _bytes(tensors[name])


def save_checkpoint(
    path: str, trees: dict, metadata: dict | None = None, *, folder=None, verify: bool = False
) -> None:
    """Save pytrees {'params': .., 'opt_state': .., ...} and JSON-able metadata to `path`.

    Written through fnn.train.files.write_file. Running out of memory leaves the previous file
    as it was.

    Args:
        path: a name in `folder`, or any path.
        trees: {'params': .., 'opt_state': .., ...}.
        metadata: JSON-able metadata ('sha256' is reserved).
        folder: a fnn.train.files.Folder `path` is a name in.
        verify: read the new file back and check its digest before it replaces the previous
            one, so a checkpoint damaged as it is written (a failing disk) is found at once and
            never replaces a good one.

    Raises:
        CheckpointError: metadata uses 'sha256', or (verify) the file was damaged as written.
        OutOfMemoryError: running out of memory while saving.
    """
    try:
        tensors = {}
        for prefix, tree in trees.items():
            tensors.update(flatten(tree, prefix))
        meta = _checkpoint_meta(tensors, metadata)
        write_file(
            path,
            safetensors_chunks(tensors, meta),
            folder=folder,
            check=_read_back(path, folder, meta["sha256"]) if verify else None,
        )
    except (MemoryError, jax.errors.JaxRuntimeError) as e:
        if not isinstance(e, MemoryError) and not is_out_of_memory(e):
            raise
        raise OutOfMemoryError(
            f"out of memory while saving {path}: the host could not hold a copy of the "
            f"training state ({_state_size(trees)}); the previous {os.path.basename(path)} "
            "is unchanged. Free memory (other processes), or train a smaller model "
            "(--hidden, --channels)"
        ) from None


def _checkpoint_meta(tensors: dict[str, np.ndarray], metadata: dict | None) -> dict[str, str]:
    """The safetensors metadata of a checkpoint of `tensors`: fnn's format, each entry of
    `metadata` as JSON, and `sha256`, the digest of the tensors and of all of these."""
    meta = {"format": json.dumps(FORMAT)}
    for k, v in (metadata or {}).items():
        if k == "sha256":
            raise CheckpointError("metadata key 'sha256' is reserved for the checkpoint's digest")
        meta[k] = json.dumps(v)
    meta["sha256"] = json.dumps(digest(tensors, meta))
    return meta


def _read_back(path: str, folder, sha256: str):
    """write_file's check(tmp, folder) of a new checkpoint at `path`: the temporary file, read
    back, must be a valid checkpoint holding the digest `sha256` that was saved; else
    CheckpointError, and write_file leaves the previous file at `path` unchanged."""
    shown = path if folder is None else folder.join(os.path.basename(path))

    def check(tmp: str, where) -> None:
        try:
            header = read_header(tmp, folder=where)
            _read_tensors(header, keep=())
        except CheckpointError as e:
            raise CheckpointError(
                f"{shown} was damaged as it was written (read back: {e}); "
                f"the previous {os.path.basename(path)} is unchanged; the "
                "disk or file system may be failing"
            ) from None
        if header.raw_meta.get("sha256") != sha256:
            raise CheckpointError(
                f"{shown} was damaged as it was written: read back, it "
                "holds another digest than the one saved"
            )

    return check


def _state_size(trees) -> str:
    try:
        n = sum(
            int(np.prod(np.shape(leaf))) * np.dtype(jnp.result_type(leaf)).itemsize
            for leaf in jax.tree_util.tree_leaves(trees)
        )
    except Exception:  # a leaf of an odd kind: no figure
        return "size unknown"
    return f"{n / 2**20:.1f} MiB"


# ---- reading: the header first, bounded by the file's size -----------------------------------
class Header:
    """A checkpoint's parsed header: `entries` {name: (dtype, shape, begin, end)} with byte
    offsets into the data, `raw_meta` (the metadata strings), `data_start`, `size`."""

    def __init__(self, path, entries, raw_meta, data_start, size, folder=None):
        self.path, self.entries, self.raw_meta = path, entries, raw_meta
        self.data_start, self.size, self.folder = data_start, size, folder

    def meta(self) -> dict:
        """The metadata, JSON-decoded where it is JSON."""
        out = {}
        for k, v in self.raw_meta.items():
            try:
                out[k] = json.loads(v)
            except json.JSONDecodeError:
                out[k] = v
        return out

    @property
    def is_fnn(self) -> bool:
        """Written by fnn's save_checkpoint (any version)."""
        fmt = self.meta().get("format")
        return isinstance(fmt, str) and fmt.startswith("fnn-checkpoint/")


def _unreadable(path: str, why: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a readable safetensors checkpoint: {why}")


def _open(path: str, folder):
    """A binary file object of checkpoint `path`: a name in `folder` (a Folder: a link there
    is refused, fnn.train.files.open_file), or any path."""
    if folder is None:
        return open(path, "rb")
    return os.fdopen(open_file(path, folder=folder), "rb")


def read_header(path: str, *, folder=None) -> Header:
    """The header of checkpoint `path` (a name in `folder`, or any path), checked against the
    file's size; no tensor is read."""
    shown = path if folder is None else folder.join(os.path.basename(path))
    if not (os.path.isfile(path) if folder is None else folder.exists(os.path.basename(path))):
        raise CheckpointError(f"no checkpoint at {shown}")
    path = shown
    try:
        with _open(os.path.basename(path) if folder is not None else path, folder) as f:
            size = os.fstat(f.fileno()).st_size
            first = f.read(8)
            if len(first) < 8:
                raise CheckpointError(
                    f"{path} is truncated or empty: {size} bytes, fewer than "
                    "the 8-byte header size of a safetensors file"
                )
            n = int.from_bytes(first, "little")
            if 8 + n > size or n > MAX_HEADER:
                raise CheckpointError(
                    f"{path} is truncated or not a safetensors checkpoint: its first 8 bytes "
                    f"announce a {n}-byte header but the file holds {size} bytes"
                )
            text = f.read(n)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from None
    try:
        header = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise _unreadable(path, f"its header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise _unreadable(path, f"its header is a JSON {type(header).__name__}, not an object")
    raw_meta = header.pop("__metadata__", None) or {}
    if not isinstance(raw_meta, dict) or not all(isinstance(v, str) for v in raw_meta.values()):
        raise _unreadable(path, "its __metadata__ must map names to strings")
    entries, at = _entries(path, header)
    start = 8 + len(text)
    if start + at > size:
        raise CheckpointError(
            f"{path} is truncated: its header describes {start + at} bytes "
            f"of tensors and metadata but the file holds {size} (cut short "
            "while being copied, or a disk filled up?)"
        )
    if start + at < size:
        raise _unreadable(path, f"{size - start - at} bytes follow its last tensor")
    return Header(path, entries, raw_meta, start, size, folder)


def _entries(path: str, header: dict) -> tuple[dict, int]:
    """(name -> (dtype, shape, begin, end), the bytes of data they span) of a checkpoint's
    parsed header (its __metadata__ taken out), each entry checked, the tensors' data one
    after the other from byte 0 (CheckpointError naming the tensor otherwise)."""
    entries, spans = {}, []
    for name, e in header.items():
        try:
            dtype = DTYPES[e["dtype"]]
            shape = tuple(e["shape"])
            begin, end = e["data_offsets"]
            if not all(isinstance(d, int) and d >= 0 for d in (*shape, begin, end)):
                raise TypeError
        except KeyError as err:
            raise _unreadable(
                path, f"tensor {name!r}: unknown dtype or missing field ({err})"
            ) from None
        except (TypeError, ValueError):
            raise _unreadable(path, f"tensor {name!r}: malformed entry {e!r}") from None
        nbytes = math.prod(shape) * dtype.itemsize
        if end - begin != nbytes:
            raise _unreadable(
                path,
                f"tensor {name!r} is declared {dtype.name}{list(shape)} "
                f"({nbytes} bytes) but its data spans {end - begin} bytes",
            )
        entries[name] = (dtype, shape, begin, end)
        spans.append((begin, end, name))
    at = 0
    for begin, end, name in sorted(spans):
        if begin != at:
            raise _unreadable(
                path,
                f"tensor {name!r} starts at byte {begin} of the data, "
                f"expected {at} (overlapping or missing data)",
            )
        at = end
    return entries, at


def _read_tensors(header: Header, keep=None) -> dict[str, np.ndarray]:
    """The tensors of `header`'s file whose first name part is in `keep` (None: all), read
    tensor by tensor in name order while the digest of all of them is computed and checked:
    the memory used is that of the tensors kept, whatever else the file holds."""
    path = header.path
    stored = header.raw_meta.get("sha256")
    if stored is None and header.raw_meta.get("format") == json.dumps(FORMAT):
        raise CheckpointError(
            f"{path} is damaged: it is an {FORMAT} file but its sha256 digest "
            "is missing from its metadata"
        )
    h = hashlib.sha256()
    out = {}
    name_in = os.path.basename(path) if header.folder is not None else path
    try:
        with _open(name_in, header.folder) as f:
            for name in sorted(header.entries):
                dtype, shape, begin, end = header.entries[name]
                h.update(_tensor_tag(name, dtype, shape))
                f.seek(header.data_start + begin)
                wanted = keep is None or name.split("/")[0] in keep
                if wanted:
                    data = bytearray(end - begin)
                    got = f.readinto(data)
                    if got != end - begin:
                        raise CheckpointError(f"{path} is truncated: it shrank while being read")
                    h.update(data)
                    out[name] = np.frombuffer(data, dtype).reshape(shape)
                    continue
                left = end - begin
                while left:
                    chunk = f.read(min(left, 1 << 20))
                    if not chunk:
                        raise CheckpointError(f"{path} is truncated: it shrank while being read")
                    h.update(chunk)
                    left -= len(chunk)
    except MemoryError:
        total = sum(
            e[3] - e[2]
            for n, e in header.entries.items()
            if keep is None or n.split("/")[0] in keep
        )
        raise CheckpointError(
            f"{path}: its tensors need {total:,} bytes of memory, more than this process can get"
        ) from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from None
    if stored is not None:
        h.update(_meta_tag(header.raw_meta))
        computed = json.dumps(h.hexdigest())
        if computed != stored:
            raise CheckpointError(
                f"{path} is damaged: the sha256 of its tensors and metadata is "
                f"{computed.strip(chr(34))[:16]}..., not the {str(stored).strip(chr(34))[:16]}... "
                "recorded when it was saved. It was altered or corrupted after it was written; "
                "load another checkpoint (best.safetensors, an older copy) instead"
            )
    return out


def verify_checkpoint(path: str, *, folder=None) -> Header:
    """The header of checkpoint `path` after its digest was checked (all its data read once,
    none of it kept): CheckpointError when it is damaged."""
    header = read_header(path, folder=folder)
    _read_tensors(header, keep=())
    return header


def read_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """All tensors of a checkpoint by name, and its metadata (JSON-decoded).

    The header is checked against the file's size before the tensors are read (their memory:
    the file's).

    Args:
        path: the checkpoint file.

    Returns:
        (the tensors by name, the metadata).

    Raises:
        CheckpointError: the file is not a valid checkpoint.
    """
    header = read_header(path)
    tensors = _read_tensors(header)
    return tensors, header.meta()


# ---- matching a checkpoint with the trees it is loaded into ----------------------------------
def _leaf_spec(leaf) -> tuple[tuple, np.dtype]:
    """(shape, dtype) a leaf is stored as (a typed PRNG key as its uint32 key data)."""
    if jnp.issubdtype(jnp.result_type(leaf), jax.dtypes.prng_key):
        data = jax.eval_shape(jax.random.key_data, leaf)
        return tuple(data.shape), np.dtype(data.dtype)
    return tuple(getattr(leaf, "shape", np.shape(leaf))), np.dtype(jnp.result_type(leaf))


def _mismatches(specs: dict, templates: dict, source: str, cast: bool) -> None:
    """CheckpointError listing every missing key, unexpected key, shape and dtype mismatch
    between `specs` {name: (shape, dtype)} (a checkpoint) and `templates` {prefix: tree}."""
    missing, shapes, dtypes, expected = [], [], [], set()
    for prefix, template in templates.items():
        for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
            name = path_name(path, prefix)
            expected.add(name)
            shape, dtype = _leaf_spec(leaf)
            if name not in specs:
                missing.append(f"{name} {shape}")
                continue
            got_shape, got_dtype = specs[name]
            if tuple(got_shape) != shape:
                shapes.append(f"{name}: {tuple(got_shape)} in the checkpoint, {shape} in the model")
            elif got_dtype != dtype and not cast:
                dtypes.append(
                    f"{name}: {got_dtype.name} in the checkpoint, {dtype.name} in the model"
                )
    order = {prefix: i for i, prefix in enumerate(templates)}  # params first, as given
    unexpected = sorted(
        (k for k in specs if k.split("/")[0] in order and k not in expected),
        key=lambda k: (order[k.split("/")[0]], k),
    )
    if missing or shapes or dtypes or unexpected:
        lines = [f"the {source} does not fit this model/optimizer:"]
        for title, items in (
            ("shape mismatches", shapes),
            ("dtype mismatches (cast=True converts them)", dtypes),
            ("missing from the checkpoint", missing),
            ("in the checkpoint but not in the model", unexpected),
        ):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines += [f"    {item}" for item in items[:20]]
                if len(items) > 20:
                    lines.append(f"    ... and {len(items) - 20} more")
        raise CheckpointError("\n".join(lines))


def restore(
    tensors: dict[str, np.ndarray],
    templates: dict,
    *,
    source: str = "checkpoint",
    cast: bool = False,
):
    """Trees shaped like `templates` ({'params': tree, ...}) filled from `tensors`.

    Args:
        tensors: the tensors by name (read_checkpoint's).
        templates: {'params': tree, ...}: the trees to fill.
        source: what the tensors come from (for the messages).
        cast: convert dtypes to the templates'; else they must match.

    Returns:
        The trees.

    Raises:
        CheckpointError: listing every missing key, unexpected key, shape mismatch and (unless
            cast=True, which converts) dtype mismatch.
    """
    _mismatches({k: (v.shape, v.dtype) for k, v in tensors.items()}, templates, source, cast)
    trees = {}
    for prefix, template in templates.items():
        paths, treedef = jax.tree_util.tree_flatten_with_path(template)
        leaves = [_like(tensors[path_name(path, prefix)], leaf) for path, leaf in paths]
        trees[prefix] = jax.tree_util.tree_unflatten(treedef, leaves)
    return trees


def _like(array: np.ndarray, template):
    if jnp.issubdtype(jnp.result_type(template), jax.dtypes.prng_key):
        return jax.random.wrap_key_data(jnp.asarray(array), impl=jax.random.key_impl(template))
    sharding = getattr(template, "sharding", None)
    if isinstance(template, jax.Array) and len(sharding.device_set) > 1:
        # split across devices like the template (shard="params"): each device gets its slice
        # from the host, the whole array is never on one device
        host = np.asarray(array, dtype=jnp.result_type(template))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    return jnp.asarray(array, dtype=jnp.result_type(template))


def _load(
    path: str, templates: dict, cast: bool, folder=None, also=()
) -> tuple[dict, dict, Header]:
    """Header checked against the templates, then the data read (the templates' tensors and
    those under the prefixes `also`), verified and restored."""
    header = read_header(path, folder=folder)
    source = f"checkpoint {header.path}"
    _mismatches(
        {k: (shape, dtype) for k, (dtype, shape, _, _) in header.entries.items()},
        templates,
        source,
        cast,
    )
    tensors = _read_tensors(header, keep={*templates, *also})
    return restore(tensors, templates, source=source, cast=cast), tensors, header


def load_checkpoint(
    path: str, templates: dict, *, cast: bool = False, folder=None
) -> tuple[dict, dict]:
    """Load (trees shaped like `templates`, metadata) from a checkpoint written by save_checkpoint.

    Its header is checked against the templates before any data is read, and only their
    tensors are kept (the digest covers all of them).

    Args:
        path: the checkpoint (a name in `folder`, or any path).
        templates: {'params': tree, ...}: the trees to fill.
        cast: convert dtypes to the templates'; else they must match exactly.
        folder: a fnn.train.files.Folder `path` is a name in (None: any path).

    Returns:
        (the trees, the metadata).

    Raises:
        CheckpointError: the file is not a valid checkpoint, or does not match the templates.
    """
    trees, _, header = _load(path, templates, cast, folder)
    return trees, header.meta()


def load_params(path: str, template, *, prefix: str = "params", cast: bool = False, log=None):
    """Parameters shaped like `template` from an fnn checkpoint or another safetensors file.

    An fnn checkpoint gives its `prefix` tree; a safetensors file from elsewhere must have the
    template's leaf names as tensor names ("1_dense/w", with or without "params/" in front).

    Args:
        path: the file.
        template: the parameter tree to fill.
        prefix: the tree of an fnn checkpoint to read.
        cast: convert dtypes to the template's; else they must match exactly.
        log: log(note) says when the file has no fnn metadata (loaded unverified, and not
            resumable as a training state).

    Returns:
        The parameters.

    Raises:
        CheckpointError: the file is not valid or does not match the template.
    """
    header = read_header(path)
    if not header.is_fnn:
        names = set(header.entries)
        bare = not any(n.startswith(prefix + "/") for n in names)
        if log is not None:
            log(
                f"note: {path} has no fnn metadata (format, epoch, step, sha256): its tensors "
                "were loaded as parameters unverified; it holds no training state to resume"
            )
        if bare:  # names without the prefix: match the template's leaf names directly
            source = f"safetensors file {path}"
            _mismatches(
                {k: (shape, dtype) for k, (dtype, shape, _, _) in header.entries.items()},
                {"": template},
                source,
                cast,
            )
            return restore(_read_tensors(header), {"": template}, source=source, cast=cast)[""]
    return _load(path, {prefix: template}, cast)[0][prefix]


def save_train_state(
    path: str,
    ts: TrainState,
    config: dict | None = None,
    *,
    folder=None,
    verify: bool = False,
    **metadata,
) -> None:
    """Save a TrainState with the run's config.

    It saves params, state, opt_state, key, epoch, step; in the middle of an epoch also its
    position and partial results.

    Args:
        path: a name in `folder`, or any path.
        ts: the TrainState.
        config: the run's config (a dict).
        folder: save_checkpoint's.
        verify: save_checkpoint's.
        **metadata: further JSON-able metadata.

    Raises:
        CheckpointError: as save_checkpoint.
    """
    trees = _state_trees(ts)
    meta = {"epoch": ts.epoch, "step": ts.step, "config": config or {}}
    if ts.position:
        partial = ts.partial or {}
        trees[PARTIAL] = {"order": partial["order"], "metrics": partial.get("metrics", {})}
        meta["position"] = ts.position
    save_checkpoint(path, trees, {**meta, **metadata}, folder=folder, verify=verify)


def _counter(meta: dict, key: str, path: str) -> int:
    v = meta.get(key, 0 if key == "position" else None)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise CheckpointError(f"{path}: its metadata '{key}' must be a count >= 0, got {v!r}")
    return v


def _state_trees(ts: TrainState) -> dict:
    """The trees of a TrainState that a checkpoint holds, by their prefix."""
    return {"params": ts.params, "state": ts.state, "opt_state": ts.opt_state, "key": ts.key}


def _check_resumable(header) -> None:
    """CheckpointError unless `header` is an fnn checkpoint's with an epoch and a step."""
    if not header.is_fnn or "epoch" not in header.raw_meta or "step" not in header.raw_meta:
        raise CheckpointError(
            f"{header.path} is not an fnn training checkpoint: its metadata has no fnn format, "
            "epoch and step, so where training stopped is unknown and it cannot be resumed. "
            "Load its tensors as parameters with fnn.train.load_params(path, params) instead"
        )


def _partial_epoch(tensors: dict, position: int, path: str) -> dict:
    """The partial results of an epoch saved at step `position`: its batch order and metrics,
    from the checkpoint's tensors under PARTIAL."""
    if f"{PARTIAL}/order" not in tensors:
        raise CheckpointError(
            f"{path}: saved at step {position} of an epoch but without "
            f"the epoch's batch order ({PARTIAL}/order)"
        )
    head = f"{PARTIAL}/metrics/"
    return {
        "order": tensors[f"{PARTIAL}/order"],
        "metrics": {k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)},
    }


def load_train_state(
    path: str, template: TrainState, *, cast: bool = False, folder=None
) -> tuple[TrainState, dict]:
    """A TrainState from `path`, shaped like `template`, and the checkpoint's metadata.

    The file must be an fnn checkpoint (format, epoch and step in its metadata).

    Args:
        path: the checkpoint.
        template: a TrainState to fill (e.g. init_train_state of the same model and optimizer).
        cast: convert dtypes to the template's; else they must match.
        folder: a fnn.train.files.Folder `path` is a name in (a run directory).

    Returns:
        (the TrainState, the checkpoint's metadata (config, ...)).

    Raises:
        CheckpointError: the file is not an fnn training checkpoint or does not match.
    """
    header = read_header(path, folder=folder)
    path = header.path
    _check_resumable(header)
    trees, tensors, header = _load(path, _state_trees(template), cast, folder, also=(PARTIAL,))
    meta = header.meta()
    epoch, step = _counter(meta, "epoch", path), _counter(meta, "step", path)
    position = _counter(meta, "position", path)
    partial = _partial_epoch(tensors, position, path) if position else None
    ts = TrainState(
        trees["params"],
        trees["state"],
        trees["opt_state"],
        trees["key"],
        epoch,
        step,
        position,
        partial,
    )
    return ts, meta
