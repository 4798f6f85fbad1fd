"""Parameter counts and a per-layer summary table, computed from shapes alone.

`summary` runs every layer's init under `jax.eval_shape`: no parameter is allocated and the
model is never applied, so it is instant even for large models.
"""

from __future__ import annotations

import jax
import numpy as np

from fnn.nn.combinators import Layer
from fnn.pytrees import key_name


def count_params(tree) -> int:
    """Number of scalars in a pytree of arrays (params, state, or their shapes).

    Args:
        tree: a pytree of arrays or jax.ShapeDtypeStructs.

    Returns:
        The number of scalars.
    """
    return int(sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(tree)))


def layer_shapes(layer: Layer, input_shape) -> tuple:
    """(params, state, output_shape) of `layer`, leaves jax.ShapeDtypeStruct (never allocated).

    Args:
        layer: the layer.
        input_shape: the shape of one example.

    Returns:
        `(params, state, output_shape)`, as `layer.init` gives them, by abstract evaluation.

    Raises:
        ValueError: what `layer.init` raises for this input shape.
    """
    out = {}

    def init(key):
        params, state, out["shape"] = layer.init(key, tuple(input_shape))
        return params, state

    params, state = jax.eval_shape(init, jax.random.PRNGKey(0))
    return params, state, tuple(out["shape"])


def _describe(tree) -> str:
    leaves = sorted(jax.tree_util.tree_leaves_with_path(tree), key=lambda pl: -len(pl[1].shape))
    if not leaves:
        return "-"
    return ", ".join(
        f"{key_name(path[-1])} {'x'.join(map(str, leaf.shape)) or 'scalar'}"
        for path, leaf in leaves
    )


def _rows(layer: Layer, input_shape, label: str, depth: int) -> tuple[list, tuple]:
    params, state, out = layer_shapes(layer, input_shape)
    indent = "  " * depth
    if layer.kind == "leaf":
        return [
            (indent + label, str(out), _describe(params) + _state_note(state), count_params(params))
        ], out
    rows = [(indent + label, str(out), "", count_params(params))] if depth >= 0 else []
    shape = tuple(input_shape)
    for key, child in layer.children:
        child_rows, child_out = _rows(
            child, shape if layer.kind == "serial" else input_shape, key, depth + 1
        )
        rows += child_rows
        if layer.kind == "serial":
            shape = child_out
    return rows, out


def _state_note(state) -> str:
    n = count_params(state)
    return f" (+{n} state)" if n else ""


def summary(model: Layer, input_shape) -> str:
    """A table of every layer: name, output shape (per example), parameter shapes and counts.

    Args:
        model: the model.
        input_shape: the shape of one example.

    Returns:
        The table, as text (its first line: the model, its input and output shapes).

    Raises:
        ValueError: what `model.init` raises for this input shape.
    """
    rows, out = _rows(model, input_shape, model.name, -1)
    params, state, _ = layer_shapes(model, input_shape)
    header = ("layer", "output shape", "parameters", "count")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(3)]
    lines = [
        f"{model.name}: input {tuple(input_shape)} -> output {out}",
        f"{header[0]:<{widths[0]}}  {header[1]:<{widths[1]}}  {header[2]:<{widths[2]}}"
        f"  {header[3]:>10}",
    ]
    lines.append("-" * len(lines[-1]))
    for name, shape, desc, n in rows:
        lines.append(f"{name:<{widths[0]}}  {shape:<{widths[1]}}  {desc:<{widths[2]}}  {n:>10,}")
    lines.append("-" * len(lines[1]))
    lines.append(
        f"trainable parameters: {count_params(params):,}    "
        f"state (non-trainable): {count_params(state):,}"
    )
    return "\n".join(lines)
