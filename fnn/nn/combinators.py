"""What a layer is, and how layers combine: Layer, stateless, serial, residual; remat.

Naming conventions for the whole of fnn.nn (after stax):

    init(key, input_shape) -> (params, state, output_shape)
        input_shape / output_shape: the shape of ONE example, without the batch axis,
        e.g. (28, 28, 1) for an MNIST image in NHWC layout or (64,) for a feature vector.
        params: dict of trainable arrays (the pytree that gradients are taken of);
        state:  dict of non-trainable arrays (BatchNorm's running statistics).
        Layers without parameters or state return {} for them.
    apply(params, state, x, *, key=None, train=False) -> (y, new_state)
        x and y carry a leading batch axis. `key` is a PRNG key used by stochastic layers
        (Dropout) when train=True; `train` switches BatchNorm and Dropout to training mode.

`apply` is written with fnn's gates only (fnn.ops and the operators of traced values), so the
same model is differentiated by `fnn.grad` (hand-written rules) and by `jax.grad`.

Combinators (serial, residual: a Layer with `children`) also take `observe`, a function
`observe(path, layer, y)` called with the output `y` of every layer inside them, `path` being
the params keys from the combinator down to that layer ("1_dense", or "3_block", "main",
"2_relu"). That is how gradient health reads activations, without a second copy of the walk:

    acts = {}
    y, _ = model.apply(params, state, x, observe=lambda path, layer, y: acts.update(
        {"/".join(path): y}))
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Mapping
from typing import Callable

import jax
import numpy as np
from jax.extend import source_info_util

from fnn.autodiff.nans import NanOriginError
from fnn.errors import GateError


@dataclasses.dataclass(frozen=True)
class Layer:
    """A layer: a pure (init, apply) pair (fnn.nn's conventions) and a name.

        init(key, input_shape) -> (params, state, output_shape)     # shapes of ONE example
        apply(params, state, x, *, key=None, train=False) -> (y, new_state)

    `init, apply = layer` unpacks it, as with stax. Combinators list their sub-layers in
    `children` as (params key, layer) pairs; `kind` says how: "serial" (a chain, each child takes
    the previous output) or "parallel" (every child takes the same input). Their apply takes
    `observe`, a function `observe(path, layer, y)` called with the output of every layer inside
    them.

    Attributes:
        name: the layer's name (params keys read '<i>_<name>' in a serial).
        init: `init(key, input_shape) -> (params, state, output_shape)`.
        apply: `apply(params, state, x, *, key=None, train=False) -> (y, new_state)`.
        children: a combinator's (params key, layer) pairs; () for a leaf.
        kind: "leaf", "serial" or "parallel".
        remat: its apply recomputes its activations in the backward (fnn.nn.remat).
    """

    name: str
    init: Callable
    apply: Callable
    children: tuple = ()
    kind: str = "leaf"
    remat: bool = False

    def __iter__(self):  # `init, apply = layer`, as with stax
        return iter((self.init, self.apply))

    def __repr__(self):
        if not self.children:
            return f"<Layer {self.name}>"
        return f"<Layer {self.name}: {', '.join(k for k, _ in self.children)}>"


def check_input_shape(name: str, input_shape) -> tuple:
    """`input_shape` as a tuple of positive ints (the shape of ONE example), or a ValueError."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if shape is None or not all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in shape
    ):
        raise ValueError(
            f"{name}: input_shape must be the shape of one example without the "
            f"batch axis, a tuple of positive ints such as (28, 28, 1); got "
            f"{input_shape!r}"
        )
    return tuple(int(d) for d in shape)


def in_layer(error: Exception, model: str, key: str) -> None:
    """Prefix `error`'s message with the layer it came from, 'in layer mlp/1_dense: ...'.

    Nested combinators each add their key, so the message ends up with the full path from the
    outermost model. The error keeps its type and traceback (it is changed in place).
    """
    bare = getattr(error, "_fnn_bare", None)
    bare = str(error) if bare is None else bare
    path = (key,) + getattr(error, "_fnn_path", ())
    error._fnn_bare, error._fnn_path = bare, path
    error.args = (f"in layer {'/'.join((model,) + path)}: {bare}",)


LAYER_ERRORS = (ValueError, GateError, NanOriginError)  # get the layer path in front


def stateless(name: str, fn: Callable, output_shape: Callable = lambda s: s) -> Layer:
    """A layer without parameters or state: y = fn(x).

    Args:
        name: the layer's name.
        fn: `fn(x) -> y`, on a batch, written with fnn's gates.
        output_shape: `output_shape(input_shape) -> the shape of y` (of one example; default:
            the input's).

    Returns:
        The Layer.
    """

    def init(key, input_shape):
        return {}, {}, tuple(output_shape(tuple(input_shape)))

    def apply(params, state, x, *, key=None, train=False):
        return fn(x), state

    return Layer(name, init, apply)


def layer_scope(model: str):
    """jax.named_scope(model) for the outermost combinator, nothing inside another: each child
    then runs in jax.named_scope(its key), so a gate's scope reads as its layer path
    ('mlp/1_dense'), which rule overrides (fnn.only), NaN reports and graphs name."""
    if str(source_info_util.current_name_stack()) or _REMAT_OUTER.get():
        return contextlib.nullcontext()
    return jax.named_scope(model)


# the layer path around the remat layer being traced: JAX traces a checkpoint's body with an
# empty name stack (its equations' paths are relative to the checkpoint's), so a combinator
# inside must not take itself for the outermost one (layer_scope)
_REMAT_OUTER: contextvars.ContextVar[str] = contextvars.ContextVar("fnn_remat_outer", default="")


def split_key(key, n: int) -> list:
    """n keys from `key`, or n Nones when there is no key (deterministic apply)."""
    return [None] * n if key is None else list(jax.random.split(key, n))


def check_keys(model: str, keys, tree, what: str) -> None:
    """`tree` (params or state of a combinator) must be a dict with exactly `keys`."""
    if not isinstance(tree, Mapping) or set(tree) != set(keys):
        have = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
        raise ValueError(
            f"{model}: {what} do not fit this model: expected keys "
            f"{sorted(keys)}, got {have} (were they made by another model's init?)"
        )


def _init_child(model: str, k: str, child: Layer, key, shape):
    """child.init(key, shape), its errors named 'in layer model/k'."""
    try:
        return child.init(key, shape)
    except LAYER_ERRORS as e:
        in_layer(e, model, k)
        raise


def _apply_child(model: str, k: str, child: Layer, params, state, x, key, train, observe):
    """child.apply, its errors named 'in layer model/k'; its output (and, for a combinator,
    every output inside it) shown to `observe` under the path (k, ...)."""
    try:
        with jax.named_scope(k):  # the gate records' scope reads as the layer path
            if observe is not None and child.children:

                def inner(path, layer, y):
                    observe((k,) + path, layer, y)

                y, new_state = child.apply(params, state, x, key=key, train=train, observe=inner)
            else:
                y, new_state = child.apply(params, state, x, key=key, train=train)
    except LAYER_ERRORS as e:
        in_layer(e, model, k)
        raise
    if observe is not None:
        observe((k,), child, y)
    return y, new_state


def serial(*layers: Layer, name: str = "serial") -> Layer:
    """Layers applied one after the other.

    Params and state are dicts keyed '<i>_<name>' (the i-th layer's name). Errors from a layer's
    init or apply are prefixed with its path ('in layer mlp/1_dense: ...').

    Args:
        *layers: the layers, in order.
        name: the combinator's name.

    Returns:
        The Layer (kind "serial").

    Raises:
        ValueError: no layer is given; (from init) the input shape is not a tuple of positive
            ints; (from apply) params or state do not have this model's keys.
        TypeError: an argument is not a Layer (`nn.Relu` instead of `nn.Relu()`).
    """
    if not layers:
        raise ValueError("serial() needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(
                f"serial(): argument {i} is {type(layer).__name__}, not a Layer "
                "(did you write nn.Relu instead of nn.Relu()?)"
            )
    keys = tuple(f"{i}_{layer.name}" for i, layer in enumerate(layers))

    def init(key, input_shape):
        params, state, shape = {}, {}, check_input_shape(name, input_shape)
        for k, layer, sub in zip(keys, layers, jax.random.split(key, len(layers))):
            params[k], state[k], shape = _init_child(name, k, layer, sub, shape)
        return params, state, shape

    def apply(params, state, x, *, key=None, train=False, observe=None):
        check_keys(name, keys, params, "params")
        check_keys(name, keys, state, "state")
        new_state = {}
        with layer_scope(name):
            for k, layer, sub in zip(keys, layers, split_key(key, len(layers))):
                x, new_state[k] = _apply_child(
                    name, k, layer, params[k], state[k], x, sub, train, observe
                )
        return x, new_state

    apply.chains_children = True  # remat(layer, segments) may rebuild it from its children
    return Layer(name, init, apply, tuple(zip(keys, layers)), "serial")


def is_plain_serial(layer: Layer) -> bool:
    """Whether `layer`'s apply is exactly serial's chain of its children.

    Not a wrapper that keeps a serial's children and kind but does more, e.g. casts: rebuilding
    it from its children would drop what it adds.

    Args:
        layer: the layer.

    Returns:
        True for a layer made by `serial` (and not wrapped since).
    """
    return layer.kind == "serial" and getattr(layer.apply, "chains_children", False)


def residual(main: Layer, shortcut: Layer | None = None, *, name: str = "residual") -> Layer:
    """main(x) + shortcut(x); the shortcut is the identity when None (shapes must then match).

    Params and state are {"main": .., "shortcut": ..}. The add gate distributes the upstream
    gradient to both branches, which is what lets gradients skip through deep stacks.

    Args:
        main: the main branch.
        shortcut: the shortcut branch (None: the identity).
        name: the combinator's name.

    Returns:
        The Layer (kind "parallel").

    Raises:
        ValueError: (from init) the branches give different shapes, or an identity shortcut's
            main branch changes the shape.
    """
    children = (("main", main),) + ((("shortcut", shortcut),) if shortcut is not None else ())

    def init(key, input_shape):
        params, state = {}, {}
        out = None
        for (k, layer), sub in zip(children, split_key(key, 2)):
            params[k], state[k], shape = _init_child(name, k, layer, sub, tuple(input_shape))
            if out is not None and shape != out:
                raise ValueError(f"{name}: main branch gives {out} but shortcut gives {shape}")
            out = shape
        if shortcut is None and out != tuple(input_shape):
            raise ValueError(
                f"{name}: main branch maps {tuple(input_shape)} to {out}; an identity "
                "shortcut needs them equal (pass a projection shortcut)"
            )
        return params, state, out

    def apply(params, state, x, *, key=None, train=False, observe=None):
        new_state, outs = {}, []
        with layer_scope(name):
            for (k, layer), sub in zip(children, split_key(key, 2)):
                y, new_state[k] = _apply_child(
                    name, k, layer, params[k], state[k], x, sub, train, observe
                )
                outs.append(y)
        return (outs[0] + outs[1] if len(outs) == 2 else outs[0] + x), new_state

    return Layer(name, init, apply, children, "parallel")


def named_layers(layer: Layer):
    """Every layer inside `layer` at any depth, with its path, in the order of its children.

    The paths are those `observe` receives and rule overrides (`fnn.only`) name.

    Args:
        layer: the layer (a model).

    Yields:
        `(path, layer)`, path a tuple of params keys ("3_block", "main", "2_relu"); a layer
        without children is itself, at path ().
    """
    if not layer.children:
        yield (), layer
        return
    for k, child in layer.children:
        yield (k,), child
        if child.children:
            yield from (((k,) + path, inner) for path, inner in named_layers(child))


def _checkpointed(fn, params, state, x, key, observe, prevent_cse):
    """fn(params, state, x, key, observe) -> (y, new_state), run under fnn.checkpoint. What fn
    shows `observe` leaves the checkpoint as extra outputs and is shown to it afterwards (a
    value inside the checkpoint cannot be handed out any other way)."""
    from fnn.transforms import checkpoint  # layer 4, below fnn.nn

    shown_at = []
    outer = str(source_info_util.current_name_stack()) or _REMAT_OUTER.get()

    def body(params, state, x, key):
        shown = []
        inner = None if observe is None else (lambda path, layer, y: shown.append((path, layer, y)))
        token = _REMAT_OUTER.set(outer)
        try:
            y, new_state = fn(params, state, x, key, inner)
        finally:
            _REMAT_OUTER.reset(token)
        shown_at[:] = [(path, layer) for path, layer, _ in shown]
        return y, new_state, [y for _, _, y in shown]

    y, new_state, ys = checkpoint(body, prevent_cse=prevent_cse)(params, state, x, key)
    for (path, layer), v in zip(shown_at, ys):
        observe(path, layer, v)
    return y, new_state


def _segment_sizes(name: str, segments, n: int) -> list:
    """The lengths of the runs of consecutive children that remat checkpoints one by one."""
    if isinstance(segments, str) and segments != "sqrt":
        raise ValueError(
            f"remat({name}): segments must be None, 'sqrt', a positive int or a "
            f"sequence of positive ints adding up to its {n} layers, got "
            f"{segments!r}"
        )
    if segments == "sqrt":
        size = max(1, round(math.sqrt(n)))
        return [min(size, n - i) for i in range(0, n, size)]
    if isinstance(segments, (int, np.integer)) and not isinstance(segments, bool):
        if segments < 1:
            raise ValueError(f"remat({name}): segments must be at least 1, got {segments}")
        return [min(int(segments), n - i) for i in range(0, n, int(segments))]
    try:
        sizes = [int(k) for k in segments]
        ok = (
            all(
                isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k > 0
                for k in segments
            )
            and sum(sizes) == n
        )
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(
            f"remat({name}): segments must be None, 'sqrt', a positive int or a "
            f"sequence of positive ints adding up to its {n} layers, got "
            f"{segments!r}"
        )
    return sizes


def remat(layer: Layer, segments=None, *, prevent_cse: bool = True) -> Layer:
    """`layer` whose activations are recomputed in the backward instead of kept (fnn.checkpoint).

    Rematerialization: the same name, init, params, state and children, so a model's checkpoints
    load either way; key and train are passed as before (train static).

    Checkpointing a single cheap layer (a Dense alone, a Relu alone) saves nothing: its input is
    what its backward needs anyway; a run of several layers is what saves memory.
    Cost: about one more forward of the checkpointed layers per training step.

    Args:
        layer: the layer.
        segments: None checkpoints the whole layer: in the backward it keeps only the layer's
            input and recomputes the rest. For a serial layer, segments cuts its children into
            runs that are checkpointed one by one (only each run's input is kept, the activations
            of one run at a time are recomputed): an int k (runs of k layers), 'sqrt' (runs of
            about sqrt(n) of its n layers, Chen et al. 2016's O(sqrt(n)) memory), or the run
            lengths (adding up to n).
        prevent_cse: as for fnn.checkpoint.

    Returns:
        The checkpointed Layer (`remat=True`).

    Raises:
        TypeError: `layer` is not a Layer, or `prevent_cse` is not a bool.
        ValueError: `segments` is not valid, or is given for a layer that is checkpointed already
            or is not a plain serial.
    """
    if not isinstance(layer, Layer):
        raise TypeError(
            f"remat(): layer must be a fnn.nn Layer, got {type(layer).__name__} {layer!r}"
        )
    if not isinstance(prevent_cse, bool):
        raise TypeError(
            f"remat({layer.name}): prevent_cse must be True or False, got {prevent_cse!r}"
        )
    if segments is None:
        return _remat_whole(layer, prevent_cse)
    return _remat_segments(layer, segments, prevent_cse)


def _remat_whole(layer: Layer, prevent_cse: bool) -> Layer:
    """remat(layer) with segments=None: the whole apply under one checkpoint."""

    def apply(params, state, x, *, key=None, train=False, observe=None):
        def fn(params, state, x, key, observe):
            extra = {"observe": observe} if observe is not None and layer.children else {}
            return layer.apply(params, state, x, key=key, train=train, **extra)

        return _checkpointed(fn, params, state, x, key, observe, prevent_cse)

    return dataclasses.replace(layer, apply=apply, remat=True)


def _segment_runs(layer: Layer, segments) -> list:
    """The runs of `layer`'s children that remat(layer, segments) checkpoints one by one;
    ValueError if `layer` is checkpointed already or is not a plain serial, or for bad
    `segments`."""
    if layer.remat:
        raise ValueError(
            f"remat({layer.name}): it is checkpointed already (built with "
            "remat=True or by remat()); segments would drop those checkpoints"
        )
    if not is_plain_serial(layer):
        what = (
            f"a {layer.kind} layer"
            if layer.kind != "serial"
            else "a serial whose apply does more than chain its children (a wrapper)"
        )
        raise ValueError(
            f"remat({layer.name}): segments are runs of a serial layer's children; "
            f"{layer.name} is {what} (checkpoint it whole: segments=None)"
        )
    children = layer.children
    runs, i = [], 0
    for size in _segment_sizes(layer.name, segments, len(children)):
        runs.append(children[i : i + size])
        i += size
    return runs


def _remat_segments(layer: Layer, segments, prevent_cse: bool) -> Layer:
    """remat(layer, segments) of a plain serial: serial's apply, each run of children under a
    checkpoint of its own."""
    runs = _segment_runs(layer, segments)
    name = layer.name
    keys = tuple(k for k, _ in layer.children)

    def apply(params, state, x, *, key=None, train=False, observe=None):
        check_keys(name, keys, params, "params")
        check_keys(name, keys, state, "state")
        subkeys = dict(zip(keys, split_key(key, len(keys))))  # serial's keys: the same masks
        new_state = {}
        with layer_scope(name):
            for run in runs:

                def fn(params, state, x, run_keys, observe, run=run):
                    out = {}
                    for (k, child), sub in zip(run, run_keys):
                        x, out[k] = _apply_child(
                            name, k, child, params[k], state[k], x, sub, train, observe
                        )
                    return x, out

                x, out = _checkpointed(
                    fn,
                    {k: params[k] for k, _ in run},
                    {k: state[k] for k, _ in run},
                    x,
                    [subkeys[k] for k, _ in run],
                    observe,
                    prevent_cse,
                )
                new_state.update(out)
        return x, {k: new_state[k] for k in keys}

    return dataclasses.replace(layer, apply=apply, remat=True)
