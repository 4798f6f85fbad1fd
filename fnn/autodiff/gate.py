"""How a gate is declared: a forward in jax.numpy/lax, a hand-written VJP, and its test cases.

    @defgate
    def multiply(x, y):
        '''x * y (broadcasting).  Local gradients: d/dx = y, d/dy = x.'''
        return x * y, (x, y)                  # (output, what the backward needs)

    @multiply.defvjp
    def multiply_vjp(g, saved):
        x, y = saved
        return unbroadcast(g * y, x), unbroadcast(g * x, y)   # one per positional input

Conventions (after autodidax): array inputs are positional, static metadata (axis, stride,
padding, rate) keyword-only; the VJP receives the upstream gradient `g` (with the structure of
the output: an array, or a tuple or dict of them), what the forward saved, and the same
keyword-only metadata. It returns one gradient per positional input, `None` meaning zero. A
positional input may be any pytree (a dict of parameters, say); its gradient then has the same
structure. A VJP that declares a keyword `needs` gets a tuple of booleans saying which inputs
need a gradient, so it can skip work for the others; one that declares `got` gets a tuple of
booleans, one per output leaf, saying which outputs a cotangent reached (the others come as
zeros): a rule whose formula is not finite everywhere (an eigenvector's 1 / (w_j - w_i)) leaves
out what no cotangent reached, as JAX leaves out a symbolic zero.

Declaring a gate has no side effect: `fnn.registry` is built once from the gates in `fnn.ops`,
and user gates are plain objects that work everywhere the built-in ones do. A gate pickles by
reference (its module and name), like a function.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Mapping
from types import MappingProxyType
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fnn.autodiff import tape
from fnn.autodiff.backward import takes
from fnn.errors import FnnError, GateError, describe


@dataclasses.dataclass(frozen=True)
class Case:
    """One test point for a gate: positional inputs and keyword-only metadata.

    Float inputs are differentiated; integer/bool/key inputs are held fixed. `numeric=False`
    marks a case where central differences are meaningless (a kink lies within reach);
    `reference=False` one where JAX itself has no rule to compare with (fnn's is then checked
    against central differences alone). `kink=True` marks a point where the derivative is a
    convention (a kink, a tie, 0 of sqrt, a NaN in a select; see `Gate.defkinks`): there the
    checkers skip central differences and require JAX's value, NaNs included.

    `structure` says which inputs the gate's rule assumes a structure of: None, one of
    STRUCTURES for the first float input, or a tuple with one entry (None or a name) per float
    input. Central differences then perturb such an input only within its structure ("symmetric":
    by the symmetric direction (E + E^T) / 2; "positive definite": the same, and steps small
    enough to stay positive definite; "orthogonal": by a rotation, Q expm(t K) with
    K = skew(Q^T E); "sorted": by a step that keeps the order). The comparison with JAX's own VJP
    is then made in the same directions (both gradients projected onto them). Inputs are square
    matrices (the last two axes; "orthogonal": one 2-d matrix), and for "sorted" vectors sorted
    along the last axis.

    `fixed` lists the positions of float inputs held fixed like integer ones: inputs that JAX
    gives no gradient (betainc's a and b, polygamma's m), whose rule refuses one.
    `second_order=False` marks a case whose VJP JAX cannot differentiate (random_gamma's
    derivative is a while loop; igamma's derivative in a, igamma_grad_a, has no rule): the
    transforms that differentiate a VJP (grad(vmap), 2nd order) are not judged on it.

    Attributes:
        args: the gate's positional inputs.
        kwargs: its keyword-only metadata (axis, stride, ...).
        label: a name for the case in reports.
        numeric: whether central differences are meaningful here.
        reference: whether JAX has a rule to compare with.
        kink: whether the derivative is a convention at this point.
        structure: the structure the rule assumes of the float inputs (see above).
        fixed: the positions of float inputs held fixed.
        second_order: whether JAX can differentiate the VJP here.

    Raises:
        GateError: `structure` names something that is not one of STRUCTURES.
    """

    args: tuple
    kwargs: dict = dataclasses.field(default_factory=dict)
    label: str = ""
    numeric: bool = True
    reference: bool = True
    kink: bool = False
    structure: str | tuple | None = None
    fixed: tuple = ()
    second_order: bool = True

    def __post_init__(self):
        names = self.structure if isinstance(self.structure, tuple) else (self.structure,)
        for name in names:
            if name is not None and name not in STRUCTURES:
                raise GateError(
                    f"Case {self.label!r}: structure {name!r} is not one of {', '.join(STRUCTURES)}"
                )


STRUCTURES = ("symmetric", "positive definite", "orthogonal", "sorted")


def unbroadcast(g, target):
    """Sum `g` down to `target`'s shape: the gradient of broadcasting `target` up to g.shape.

    Leading axes that broadcasting added are summed away; axes where target had size 1 are
    summed with keepdims. When `target` is an array, the result also takes its dtype (type
    promotion in the forward is undone too).

    Args:
        g: the gradient, of the broadcast shape.
        target: the array that was broadcast (or its shape, a tuple).

    Returns:
        `g` summed to `target`'s shape (and cast to its dtype when `target` is an array).

    Raises:
        GateError: `g` has fewer dimensions than `target`.
    """
    shape = tuple(target) if isinstance(target, tuple) else tuple(np.shape(target))
    if g.shape != shape:
        lead = g.ndim - len(shape)
        if lead < 0:
            raise GateError(f"unbroadcast: gradient {describe(g)} has fewer dims than {shape}")
        g = jnp.sum(g, axis=tuple(range(lead))) if lead else g
        axes = tuple(i for i, (n, m) in enumerate(zip(shape, g.shape)) if n == 1 and m != 1)
        g = jnp.sum(g, axis=axes, keepdims=True) if axes else g
    dtype = getattr(target, "dtype", None)
    if dtype is not None and g.dtype != dtype:
        g = g.astype(dtype)
    return g


class Gate:
    """A differentiable op: forward + hand-written VJP. Call it like the function it wraps.

    Called on plain arrays (or under JAX's own grad) it only runs the forward; called on values
    traced by fnn it also records itself on their tape, so `fnn.grad` can run its VJP. Made by
    `fnn.defgate` (or `fnn.primitive_gate`); its VJP is attached with `@gate.defvjp`, its test
    cases with `@gate.defcases`.

    Args:
        forward: `forward(*arrays, **static) -> (out, saved)`.
        name: the gate's name (default: the forward's `__name__`).
    """

    def __init__(self, forward: Callable, *, name: str | None = None):
        self.forward = forward
        self.name = name or forward.__name__
        self.vjp: Callable | None = None
        self.cases: Callable | None = None
        self.kinks: Callable | str | None = None  # see defkinks
        # (the names of the VJP's parameters, whether it takes **kwargs): what
        # fnn.autodiff.backward.call_vjp passes it besides g, saved and the metadata
        self.vjp_takes: tuple = (frozenset(), False)
        self.primitive = None  # the JAX primitive a gate made by primitive_gate stands for
        # the lecture's name of a primitive's gate ('multiply' for lax.mul: fnn.ops.multiply),
        # shown in graphs and accepted as an override's key; None: its name is the lecture's
        self.lecture = None
        # what the checkers differentiate with JAX as this gate's reference: None, its forward;
        # a function `reference(*args, **static) -> output` (a gate whose forward is not what
        # JAX differentiates: a custom_vjp function's fwd); False, none of its own (a part of a
        # larger rule, whose VJP is that rule's definition: passed on, never compared)
        self.reference = None
        self.params = None  # (handled names, {name: allowed values}) of a primitive gate
        # whether its VJP follows JAX's convention for complex values (see `primitive_gate`);
        # a gate that does not is refused, by name, where a complex value reaches it
        self.complex = False
        self._signature = _signature(forward)
        functools.update_wrapper(self, forward)

    # -- declaration -----------------------------------------------------------------
    def defvjp(self, vjp: Callable) -> Callable:
        """Attach the hand-written VJP `vjp(g, saved, **static) -> tuple of gradients`."""
        self.vjp = vjp
        self.vjp_takes = takes(vjp)
        return vjp

    def defcases(self, cases: Callable) -> Callable:
        """Attach `cases(rng: np.random.Generator, dtype) -> list[Case]` for the checkers."""
        self.cases = cases
        return cases

    def defkinks(self, kinks: Callable | None = None, *, smooth: bool = False):
        """Attach `kinks(dtype) -> list[Case]`, the points where this gate's derivative is a
        convention: kinks (relu at 0), ties (max), edges of the domain (sqrt at 0), NaN and
        infinite inputs where the rule has a select. There the hand-written VJP must give
        exactly what JAX's gradient gives (tests/test_kinks.py, and the gate checker). Or
        `defkinks(smooth=True)`: the gate has no such point (its rule is one formula
        everywhere). A built-in gate must say one or the other."""
        if smooth == (kinks is not None):
            raise GateError(
                f"gate '{self.name}': defkinks takes a function of the dtype giving "
                "the kink cases, or smooth=True, one of the two"
            )
        self.kinks = "smooth" if smooth else kinks
        return kinks

    def kink_cases(self, dtype) -> list:
        """The declared kink cases in `dtype`, each marked kink=True ([] for a smooth gate)."""
        if not callable(self.kinks):
            return []
        return [dataclasses.replace(c, kink=True, numeric=False) for c in self.kinks(dtype)]

    # -- use ---------------------------------------------------------------------------
    def __call__(self, *args, **static):
        if static and self._signature is not None:
            args, static = self._positional(args, static)
        return tape.apply(self, args, static)

    def _positional(self, args, static):
        """An array input passed by its name (softmax(x, where=mask)) moved to its place among
        the positional inputs; keyword-only parameters stay static metadata."""
        sig, positional = self._signature
        if not any(k in positional for k in static):
            return args, static
        try:
            bound = sig.bind(*args, **static)
        except TypeError as e:
            raise GateError(f"gate '{self.name}': {e}") from None
        bound.apply_defaults()
        moved = tuple(bound.arguments[k] for k in positional if k in bound.arguments)
        return moved, {k: v for k, v in static.items() if k not in positional}

    def run_forward(self, args, static):
        """Run the forward on raw values -> (output, saved); JAX's shape and dtype errors become
        a GateError naming the gate and its inputs."""
        try:
            result = self.forward(*args, **static)
        except FnnError:  # fnn's own, from inside (a loop body's missing rule): as it is
            raise
        except (TypeError, ValueError) as e:
            if isinstance(e, _PASS_THROUGH):
                raise
            shapes = ", ".join(_describe_tree(a) for a in args)
            meta = "".join(f", {k}={_short_repr(v)}" for k, v in static.items())
            raise GateError(f"gate '{self.name}' cannot take inputs ({shapes}{meta}): {e}") from e
        if not (isinstance(result, tuple) and len(result) == 2):
            raise GateError(
                f"gate '{self.name}': its forward must return a pair (output, saved), "
                f"got {type(result).__name__}"
            )
        if isinstance(result[0], list):
            raise GateError(
                f"gate '{self.name}': several outputs must be returned as a tuple "
                "(or a dict), not a list"
            )
        return result

    def __repr__(self):
        return f"<fnn gate '{self.name}'>"

    def __reduce__(self):
        # by reference, like a function: the module attribute the decorator replaced
        return self.__qualname__


def _signature(forward):
    """(signature, names of its positional-or-keyword parameters), or None when the forward
    takes *args (its positional inputs have no names)."""
    try:
        sig = inspect.signature(forward)
    except (TypeError, ValueError):
        return None
    params = sig.parameters.values()
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    return sig, tuple(p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD)


def _short_repr(v) -> str:
    """A parameter in a message: its repr, or its type where that would dump a jaxpr (a loop's
    body) or run long."""
    text = repr(v)
    if "\n" in text or "lambda ;" in text:
        return f"<{type(v).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def _describe_tree(a) -> str:
    leaves = jax.tree_util.tree_leaves(a)
    if len(leaves) == 1 and leaves[0] is a:
        return describe(a)
    return "{" + ", ".join(describe(x) for x in leaves) + "}"


# errors JAX raises for a value of the wrong kind (a tracer where a concrete value is needed):
# they say what to do better than a GateError would
_PASS_THROUGH = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
    jax.errors.UnexpectedTracerError,
)


def defgate(forward: Callable | None = None, *, name: str | None = None, complex: bool = False):  # noqa: A002
    """Declare a gate from its forward `forward(*arrays, **static) -> (out, saved)`.

    Use as `@defgate` or `@defgate(name="...")`; then `@gate.defvjp` and `@gate.defcases`.

    Args:
        forward: the forward function; None when used as `@defgate(name=...)`.
        name: the gate's name (default: the forward's `__name__`).
        complex: its VJP takes complex values too, by JAX's convention (see `primitive_gate`).

    Returns:
        The `Gate`, or (with `forward` None) a decorator that makes it.
    """

    def make(f):
        gate = Gate(f, name=name)
        gate.complex = bool(complex)
        return gate

    return make if forward is None else make(forward)


_SAVES = {
    "inputs": lambda args, out: tuple(args),
    "out": lambda args, out: out,
    "both": lambda args, out: (tuple(args), out),
    "shapes": lambda args, out: tuple(
        jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)) for a in args
    ),
    "none": lambda args, out: None,
}


def primitive_gate(
    primitive,
    *,
    save="inputs",
    name: str | None = None,
    forward: Callable | None = None,
    params: tuple | None = None,
    only: dict | None = None,
    complex: bool = False,  # noqa: A002
    lecture: str | None = None,
):
    """Declare the gate of a JAX primitive from its hand-written VJP (a decorator).

        @primitive_gate(lax.exp_p, save="out")
        def exp(g, y, **params):
            "exp(x).  Local gradient: exp(x), the output y."
            return (g * y,)

    The forward binds the primitive with the equation's parameters (so it computes exactly
    what the traced program computes) and saves a value for the VJP. The VJP gets the upstream
    gradient, the saved value and the primitive's parameters as keywords (and `needs`, if it
    declares it); it returns one gradient per positional input. `gate.primitive` is the primitive
    it stands for. Pass the gate to `fnn.rules(...)` or `rules=` to use it.

    When `params` or `only` is given, an equation with a parameter the rule does not name, or
    with a value outside `only`, raises a GateError naming the rule, the parameter and the value,
    instead of computing some other gradient. (Neither given: every parameter is passed on
    unchecked; fnn's own rules all declare theirs.)

    `complex=True` declares that the VJP also takes complex inputs, outputs and cotangents, and
    follows JAX's convention for them: it is the transpose of the derivative, a real-linear map,
    under the pairing <a, b> = Re(sum(a * b)) (no conjugation), so that of a holomorphic f it is
    g * f'(z), of conj it is conj(g), of real(z) complex(g, 0), and a real input's gradient is the
    real part of what reaches it. Without it, fnn refuses to differentiate the gate where a complex
    value reaches it (a GateError naming the rule), rather than compute another gradient.

    Args:
        primitive: the JAX primitive (`lax.exp_p`).
        save: what the forward saves: "inputs" (a tuple), "out", "both" ((inputs, out)), "shapes"
            (a ShapeDtypeStruct per input), "none", or a function `save(args, out) -> saved`.
        name: the gate's name (default 'lax.<primitive name>').
        forward: `forward(*args, **params) -> (out, saved)`, replacing the default forward where
            the VJP needs more than the primitive's inputs and output (sort's permutation, say);
            it must compute the same output.
        params: the names of the primitive's parameters the rule handles in every value.
        only: the others, mapped to the values it handles (a tuple: `only={"sharding": (None,)}`).
        complex: the VJP takes complex values too, by JAX's convention (above).
        lecture: the lecture's name of the op ('multiply' for lax.mul), the name of the function
            of fnn.ops that computes it: graphs draw the gate under it, and an override may
            name the gate by it.

    Returns:
        A decorator taking the VJP `vjp(g, saved, **params)` and returning the `Gate`.

    Raises:
        KeyError: `save` is a string that is not one of the five above.
        GateError: (when the gate runs) a parameter or value the rule does not handle, or a
            complex value reaching a gate that does not declare complex=True.
    """
    return _declare_primitive_gate(primitive, save, name, forward, params, only, complex, lecture)


def _declare_primitive_gate(
    primitive, save, name, forward, params, only, takes_complex: bool, lecture
) -> Callable[[Callable], Gate]:
    """primitive_gate's decorator, for its arguments (`takes_complex`: its `complex`): the
    gate's forward (`forward`, or the primitive bound and a value saved; checked against
    `params`/`only` when either is given), to which `declare(vjp)` attaches the VJP."""
    saver = _SAVES[save] if isinstance(save, str) else save
    gate_name = name or f"lax.{primitive.name}"
    declared = params is not None or only is not None
    handles, allowed = tuple(params or ()), dict(only or {})

    def bind(*args, **params):
        out = primitive.bind(*args, **params)
        if primitive.multiple_results:
            out = tuple(out)
        return out, saver(args, out)

    run = forward or bind

    def checked(*args, **params):
        _check_params(gate_name, primitive, handles, allowed, params)
        return run(*args, **params)

    def declare(vjp: Callable) -> Gate:
        gate = Gate(checked if declared else run, name=gate_name)
        for attr in ("__module__", "__qualname__", "__doc__", "__name__"):
            setattr(gate, attr, getattr(vjp, attr))
        gate.primitive = primitive
        gate.lecture = lecture
        gate.params = (handles, allowed) if declared else None
        gate.complex = bool(takes_complex)
        gate.defvjp(vjp)
        return gate

    return declare


def _check_params(gate_name, primitive, handles, allowed, params) -> None:
    """A GateError for a parameter of `primitive` the rule does not handle, or a value of it
    outside those `allowed`."""
    for key, value in params.items():
        if key in handles:
            continue
        if key not in allowed:
            raise GateError(
                f"rule '{gate_name}' does not handle the parameter {key}="
                f"{_short(value)} of {primitive.name}: it knows "
                f"{', '.join(handles + tuple(allowed)) or 'no parameters'} "
                "(a newer JAX?). Use JAX's own gradient for this program, or "
                "declare a rule with fnn.primitive_gate."
            )
        if not any(_same(value, ok) for ok in allowed[key]):
            raise GateError(
                f"rule '{gate_name}' does not handle {key}={_short(value)} of "
                f"{primitive.name} (it handles {key} in "
                f"{tuple(allowed[key])!r} only): rather than compute another "
                "gradient, fnn stops here. Use JAX's own gradient for this "
                "program, or declare a rule with fnn.primitive_gate."
            )


def _same(value, allowed) -> bool:
    if value is None or allowed is None:
        return value is allowed
    try:
        return bool(value == allowed)
    except Exception:  # an array-valued parameter compared with a scalar
        return False


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Registry(Mapping):
    """Every gate, by name: fnn's own gates ('relu') and those of JAX's primitives ('lax.tanh'),
    collected once from their modules (`collect_gates`). A read-only mapping name -> Gate, with
    two views: `named` (fnn's own gates, those with no primitive) and `by_primitive` (a JAX
    primitive -> its gate: the table the interpreter reads). `lecture_names` maps the lecture's
    name of a primitive's gate ('multiply') to the gate's name ('lax.mul')."""

    def __init__(self, gates: dict):
        self._gates = MappingProxyType(dict(gates))
        self.named = MappingProxyType({n: g for n, g in gates.items() if g.primitive is None})
        self.by_primitive = MappingProxyType(
            {g.primitive: g for g in gates.values() if g.primitive is not None}
        )
        lecture: dict = {}
        for g in gates.values():
            if g.lecture is not None:
                lecture.setdefault(g.lecture, []).append(g.name)
        self.lecture_names = MappingProxyType({k: tuple(v) for k, v in lecture.items()})

    def __getitem__(self, name: str) -> Gate:
        return self._gates[name]

    def __iter__(self):
        return iter(self._gates)

    def __len__(self) -> int:
        return len(self._gates)

    def __repr__(self) -> str:
        return (
            f"<Registry of {len(self.named)} gates and {len(self.by_primitive)} primitives' rules>"
        )


def collect_gates(*modules, exclude=()) -> Registry:
    """The Registry of every Gate attribute of `modules` (each gate once: two gates of one name
    or one primitive are an error), leaving out the gates of the primitives in `exclude`."""
    found: dict[str, Gate] = {}
    primitives: dict = {}
    for mod in modules:
        for value in vars(mod).values():
            if (
                not isinstance(value, Gate)
                or value.primitive in exclude
                and value.primitive is not None
            ):
                continue
            other = found.get(value.name)
            if other is not None and other is not value:
                raise ValueError(f"two gates named '{value.name}'")
            if value.primitive is not None:
                twin = primitives.setdefault(value.primitive, value)
                if twin is not value:
                    raise ValueError(
                        f"two gates for the primitive {value.primitive.name}: "
                        f"'{twin.name}' and '{value.name}'"
                    )
            found[value.name] = value
    return Registry(found)
