"""Rule overrides: replace the backward rule of any gate for one call or one block, optionally
only in some layers, without touching the model.

    fnn.grad(loss, rules={"relu": straight_through})          # one call
    with fnn.rules(relu=straight_through, affine=fa):         # a block (restored on exit)
        ...
    fnn.grad(loss, rules={"affine": fnn.only(fa, "1_dense")}) # one layer

A key names what is overridden: a gate's name ("relu", "lax.tanh"), a JAX primitive's name
("tanh"), the lecture's name of a primitive's gate ("multiply": lax.mul's, as `fnn.ops.multiply`
computes it), the Gate itself, or a JAX primitive object. A value is the new rule:

    rule(g, *inputs, out, **static) -> one gradient per positional input (None: zero)

`g` is the upstream gradient, `inputs` the gate's primal inputs, `out` its output, `static`
its keyword metadata; a rule that declares `needs` gets which inputs need a gradient, one that
declares `original` gets the gate's own rule as a function of g (to clip or perturb it). The
result follows the gate's VJP contract, checked as always. A value may also be an `Override`
(anything with `resolve(scope) -> rule or None`), such as `only(rule, *layers)`, which applies
the rule in the named layers alone (a layer is named by its path, '1_dense', as in checkpoints;
the scope of a gate is the jax.named_scope path its layer ran in).

The overrides in effect when a function is traced are part of what is traced: `jax.jit` of a
function traced under other overrides is traced again (the block is part of JAX's jit cache key
through `jax.make_user_context`), and `fnn.grad(f, rules=...)` returns a new function.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Callable

import jax

from fnn.errors import OverrideError

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("fnn_overrides", default=None)
# the names of the gates looked up while one function is traced (see `noticing`), or None
_SEEN: contextvars.ContextVar = contextvars.ContextVar("fnn_override_lookups", default=None)
# makes jax.jit's caches see which overrides were in effect (None where JAX lacks the API)
_JIT_KEY = jax.make_user_context(None) if hasattr(jax, "make_user_context") else None


@dataclasses.dataclass(frozen=True)
class Rule:
    """A named backward rule, with what the checkers need to judge it.

    Call it as the rule itself: `rule(g, *inputs, **kwargs)` calls `vjp`.

    Attributes:
        vjp: the rule itself, `vjp(g, *inputs, out, **static) -> gradients` (it may declare
            `needs` and `original`, see fnn.autodiff.overrides).
        name: its name, in reports.
        kind: "exact" (it must equal the gate's true gradient, and a difference is an error) or
            "surrogate" (it differs on purpose).
        reference: for a surrogate, a smooth function of the gate's inputs whose derivative the
            rule is (its derivative is what the rule must equal: it follows its own declared
            formula).
        formula: the formula, for the reports and the docs.
        paper: where it comes from, for the reports and the docs.

    Raises:
        OverrideError: `kind` is neither "exact" nor "surrogate".
    """

    vjp: Callable
    name: str
    kind: str = "surrogate"
    reference: Callable | None = None
    formula: str = ""
    paper: str = ""

    def __post_init__(self):
        if self.kind not in ("exact", "surrogate"):
            raise OverrideError(
                f"Rule {self.name!r}: kind must be 'exact' or 'surrogate', got {self.kind!r}"
            )

    def __call__(self, g, *inputs, **kwargs):
        return self.vjp(g, *inputs, **kwargs)

    def __repr__(self):
        return f"<{self.kind} rule {self.name!r}>"


class Override:
    """A rule for the gates it resolves to: `resolve(scope)` gives the rule for a gate
    recorded in that layer scope, or None (the gate keeps its own)."""

    def __init__(self, rule: Callable):
        self.rule = rule

    def resolve(self, scope: str):
        return self.rule

    def __repr__(self):
        return f"Override({getattr(self.rule, '__name__', self.rule)!r})"


class _Only(Override):
    def __init__(self, rule, layers):
        super().__init__(rule)
        self.layers = tuple(layers)

    def resolve(self, scope: str):
        return self.rule if any(in_layer(scope, layer) for layer in self.layers) else None

    def __repr__(self):
        return f"only({getattr(self.rule, '__name__', self.rule)!r}, {', '.join(self.layers)})"


def only(rule: Callable, *layers: str) -> Override:
    """`rule` applied only in these layers (paths such as '1_dense', '3_block/0_conv2d').

        fnn.grad(loss, rules={"affine": fnn.only(feedback_alignment, "1_dense")})

    Args:
        rule: the backward rule (a `Rule` or a function `rule(g, *inputs, out, **static)`).
        *layers: the layer paths (as `fnn.nn.named_layers` names them) where it applies; the gate
            keeps its own rule elsewhere.

    Returns:
        An override, to use as a value of `rules=` or `fnn.rules(...)`.

    Raises:
        OverrideError: no layer is named, or a layer is not a non-empty string.
    """
    if not layers or not all(isinstance(layer, str) and layer for layer in layers):
        raise OverrideError(f"fnn.only: name the layers as path strings, got {layers!r}")
    return _Only(rule, layers)


def in_layer(scope: str, layer: str) -> bool:
    """Whether a gate recorded in `scope` ('mlp/1_dense', the outer model's name first) lies in
    `layer` ('1_dense' or 'mlp/1_dense')."""
    parts = [p for p in scope.split("/") if p]
    want = [p for p in layer.split("/") if p]
    return any(parts[i : i + len(want)] == want for i in range(len(parts) - len(want) + 1))


def as_table(rules, fname: str) -> dict:
    """{key: Override} from a mapping of overrides (see the module docstring)."""
    table = {}
    for key, value in dict(rules).items():
        if not isinstance(key, str) and getattr(key, "name", None) is None:
            raise OverrideError(
                f"{fname}: an override's key must name a gate ('relu', "
                f"'lax.tanh'), be a Gate or a JAX primitive; got {key!r}"
            )
        if isinstance(value, Override) or hasattr(value, "resolve"):
            table[key] = value
        elif callable(value):
            table[key] = Override(value)
        else:
            raise OverrideError(
                f"{fname}: the override of {key!r} must be a rule "
                f"(g, *inputs, out, **static) -> gradients, got {value!r}"
            )
    return table


def active() -> dict:
    return _ACTIVE.get() or {}


@contextlib.contextmanager
def overriding(table: dict):
    """Within this block, `table` (merged over the overrides already in effect) applies."""
    merged = {**active(), **table}
    token = _ACTIVE.set(merged)
    key = tuple(sorted((_key_name(k), id(v)) for k, v in merged.items()))
    jit_key = _JIT_KEY(key) if _JIT_KEY is not None else contextlib.nullcontext()
    try:
        with jit_key:
            yield
    finally:
        _ACTIVE.reset(token)


def _key_name(key) -> str:
    return key if isinstance(key, str) else f"{type(key).__name__}:{getattr(key, 'name', key)}"


def find(gate, scope: str, table: dict | None = None):
    """The overriding rule for `gate` recorded in `scope`, or None."""
    table = active() if table is None else table
    if not table:
        return None
    seen = _SEEN.get()
    if seen is not None:
        seen.add(gate.name)
    primitive = getattr(gate, "primitive", None)
    # a name matches a gate's name ('relu', 'lax.tanh') and a JAX primitive's ('tanh' is both
    # fnn's tanh gate and the rule of jnp.tanh's primitive)
    # ... and the lecture's name of a primitive's gate ('multiply' is lax.mul's)
    for key in (
        gate,
        gate.name,
        primitive,
        getattr(primitive, "name", None),
        getattr(gate, "lecture", None),
    ):
        override = table.get(key) if key is not None else None
        if override is not None:
            return override.resolve(scope)
    return None


@contextlib.contextmanager
def noticing(known, fname: str):
    """Within this block (one traced function), note the gates applied; on leaving it, an
    override keyed by a name that is neither in `known` (fnn's gates and the primitives with a
    rule) nor the name of a gate applied in the block is an OverrideError naming the closest
    names: a misspelled key would otherwise leave the gate's own rule silently in effect."""
    seen: set = set()
    token = _SEEN.set(seen)
    try:
        yield
    finally:
        _SEEN.reset(token)
    names = set(known) | seen
    unknown = [k for k in active() if isinstance(k, str) and k not in names]
    if unknown:
        import difflib  # noqa: PLC0415  (only for the message)

        hints = []
        for key in unknown:
            close = difflib.get_close_matches(
                key, sorted(names), n=3, cutoff=0.6
            ) or difflib.get_close_matches(key.lower(), sorted(names), n=3, cutoff=0.6)
            hints.append(
                f"{key!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else "")
            )
        raise OverrideError(
            f"{fname}: the rule override(s) for {'; '.join(hints)} match no gate of fnn, no JAX "
            "primitive with a rule, and no gate applied in this function, so they would change "
            "nothing. Name a gate ('relu', 'lax.tanh'), a primitive ('tanh'), or pass the Gate "
            "or primitive object itself."
        )


__all__ = [
    "Override",
    "OverrideError",
    "Rule",
    "active",
    "as_table",
    "find",
    "in_layer",
    "noticing",
    "only",
    "overriding",
]
