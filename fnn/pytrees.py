"""Names of pytree leaves, one spelling for all of fnn: a key path as "1_dense/w".

Checkpoints (safetensors keys), gradient reports, graphs, summaries and error messages all name a
leaf by the keys on its path (dict keys, sequence indices, attribute names) joined with "/".
"""

from __future__ import annotations


def key_name(k) -> str:
    """One entry of a jax.tree_util key path: 'w' for DictKey('w'), '0' for SequenceKey(0)..."""
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def path_name(path, prefix: str = "") -> str:
    """The key path `path` as "a/b/0", after `prefix` when one is given ("params/a/b/0")."""
    return "/".join(([prefix] if prefix else []) + [key_name(k) for k in path])
