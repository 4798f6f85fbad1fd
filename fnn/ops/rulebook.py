"""A library of backward rules for studying the backward pass, and the gates they are for.

Gates whose exact gradient is zero almost everywhere (so a network of them cannot learn by
backprop alone): `sign`, `round`, `quantize` (k-bit uniform quantization) and `spike` (the
Heaviside step of a spiking neuron). Rules that replace a gate's backward, for use with
`fnn.grad(loss, rules={...})`, `with fnn.rules(...)` or `python -m fnn train --rule ...`:
straight-through estimators, surrogate gradients of the spike (by slope), feedback alignment
for the affine gate, and rules that change any gate's own gradient (clipped, noisy).

`LIBRARY` declares them, once: per rule its name, how it is made from its options, the gates
it is for, and the inputs where the checkers judge it. `python -m fnn train --rule`
(fnn.train.rule_specs), `fnn.check.check_library` (and `python -m fnn gradcheck`'s rule rows) and
the docs' table (docs/rules.md) iterate it; `RULES` is its view of the rules of the gates with a
zero gradient. Each rule is a `fnn.Rule`: "surrogate" (deliberately not the true gradient),
most with a smooth `reference` function whose derivative it is, so the checkers verify that
the rule follows its own formula while they report how far it is from the exact gradient.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from fnn.autodiff.case_values import SPECIAL, away_from, normal, special_points
from fnn.autodiff.gate import Case, defgate
from fnn.autodiff.overrides import Override, OverrideError, Rule, in_layer
from fnn.ops.dense import affine
from fnn.ops.primitives.elementwise import tanh as lax_tanh
from fnn.pytrees import path_name

# ---- gates with a zero gradient almost everywhere --------------------------------------------------


def _zero_vjp(g, saved, **static):
    return (None,)


def _kink_free(rng, shape, dtype, points=(0.0,), gap=0.1):
    """Normal samples at least `gap` away from each of `points` (the steps of the forward)."""
    x = normal(rng, shape, dtype, scale=1.0)
    for p in points:
        x = np.where(np.abs(x - p) < gap, p + gap * np.sign(x - p + 1e-12), x)
    return x.astype(dtype)


@defgate
def sign(x):
    """sign(x) in {-1, 0, 1}.

    Local gradient: 0 almost everywhere (undefined at 0); train through it with straight_through or
    clipped_straight_through.

    Args:
        x: the input (any shape).

    Returns:
        sign(x), shaped like x.
    """
    return jnp.sign(x), None


sign.defvjp(_zero_vjp)
sign.defcases(
    lambda rng, dtype: [Case((away_from(rng, s, dtype),), label=str(s)) for s in ((5,), (2, 3))]
)
sign.defkinks(special_points())


@defgate(name="round")
def round_(x):
    """x rounded to the nearest integer.  Local gradient: 0 almost everywhere.

    Args:
        x: the input (any shape).

    Returns:
        x rounded, shaped like x.
    """
    return jnp.round(x), None


round_.defvjp(_zero_vjp)
round_.defcases(
    lambda rng, dtype: [Case((_kink_free(rng, (2, 4), dtype, points=(-1.5, -0.5, 0.5, 1.5)),))]
)
round_.defkinks(special_points(SPECIAL + (1.5, 2.5, -0.5, -1.5)))


@defgate
def quantize(x, *, bits: int, lo: float = -1.0, hi: float = 1.0):
    """x clipped to [lo, hi] and rounded to 2**bits evenly spaced levels.

    x clipped to [lo, hi] and rounded to 2**bits evenly spaced levels (k-bit uniform
    quantization, as in DoReFa-Net).  Local gradient: 0 almost everywhere.

    Args:
        x: the input (any shape).
        bits: the bits k (2**k levels), a positive int.
        lo: the lowest level.
        hi: the highest level.

    Returns:
        The quantized x, shaped like x.

    Raises:
        ValueError: bits is not a positive int.
    """
    if not isinstance(bits, int) or bits < 1:
        raise ValueError(f"gate 'quantize': bits must be a positive int, got {bits!r}")
    levels = 2**bits - 1
    step = (hi - lo) / levels
    y = jnp.round((jnp.clip(x, lo, hi) - lo) / step) * step + lo
    return y.astype(jnp.result_type(x)), None


quantize.defvjp(_zero_vjp)


@quantize.defcases
def _quantize_cases(rng, dtype):
    # steps of a 2-bit quantizer on [-1, 1] at -2/3, 0, 2/3; keep samples away from them
    x = _kink_free(rng, (3, 4), dtype, points=(-2 / 3, 0.0, 2 / 3), gap=0.08)
    return [Case((x,), {"bits": 2}, label="2 bits")]


quantize.defkinks(
    lambda dtype: [  # the bounds, the steps of 2 bits on [-1, 1], beyond, NaN
        Case(
            (np.asarray([-1.0, 1.0, -2 / 3, 0.0, 2 / 3, 2.0, -2.0, np.nan], dtype),),
            {"bits": 2},
            label="steps, bounds, NaN",
        )
    ]
)


@defgate
def spike(x, *, threshold: float = 0.0):
    """1 where x > threshold, else 0: the Heaviside step of a spiking neuron.

    Local gradient: 0 almost everywhere; surrogate gradients (fast_sigmoid, triangle, arctan, ...)
    train it.

    Args:
        x: the input (any shape).
        threshold: the firing threshold.

    Returns:
        The spikes (0 or 1), shaped like x.
    """
    return (x > threshold).astype(jnp.result_type(x)), None


spike.defvjp(_zero_vjp)
spike.defcases(
    lambda rng, dtype: [
        Case((away_from(rng, (2, 3), dtype),)),
        Case((away_from(rng, (4,), dtype, point=0.5),), {"threshold": 0.5}, label="threshold 0.5"),
    ]
)
spike.defkinks(
    lambda dtype: [
        Case((np.asarray([0.0, -0.0, 0.5, np.nan, np.inf], dtype),), kw, label=f"threshold{kw}")
        for kw in ({}, {"threshold": 0.5})
    ]
)


# ---- straight-through estimators ------------------------------------------------------------------
def _identity_vjp(g, x, **static):
    return (g.astype(x.dtype),)


straight_through = Rule(
    _identity_vjp,
    "straight_through",
    reference=lambda x, **static: x,
    formula="dx = g (the gate is treated as the identity in the backward)",
    paper="Bengio, Leonard & Courville 2013, Estimating or propagating gradients through "
    "stochastic neurons for conditional computation",
)


def _clipped_vjp(g, x, **static):
    return ((g * (jnp.abs(x) <= 1)).astype(x.dtype),)


clipped_straight_through = Rule(
    _clipped_vjp,
    "clipped_straight_through",
    reference=lambda x, **static: jnp.clip(x, -1, 1),
    formula="dx = g * 1[|x| <= 1] (the derivative of hardtanh)",
    paper="Hubara, Courbariaux, Soudry, El-Yaniv & Bengio 2016, Binarized neural networks",
)


# ---- surrogate gradients of the spike ---------------------------------------------------------------
def _surrogate(name, factor, reference, formula, paper):
    """A family of surrogate rules of the spike gate, by slope."""

    def make(slope: float = 1.0) -> Rule:
        if not slope > 0:
            raise OverrideError(f"{name}: slope must be positive, got {slope!r}")

        def vjp(g, x, threshold=0.0, **static):
            return ((g * factor(x - threshold, slope)).astype(x.dtype),)

        def ref(x, threshold=0.0, **static):
            return reference(x - threshold, slope)

        return Rule(vjp, f"{name}(slope={slope:g})", reference=ref, formula=formula, paper=paper)

    make.__name__ = name
    make.__doc__ = f"{formula}. {paper}."
    return make


fast_sigmoid = _surrogate(
    "fast_sigmoid",
    lambda u, k: 1.0 / (1.0 + k * jnp.abs(u)) ** 2,
    lambda u, k: u / (1.0 + k * jnp.abs(u)),
    "dx = g / (1 + slope |u|)**2, u = x - threshold",
    "Zenke & Ganguli 2018, SuperSpike: supervised learning in multilayer spiking neural networks",
)

sigmoid_derivative = _surrogate(
    "sigmoid_derivative",
    lambda u, k: k * jax.nn.sigmoid(k * u) * (1.0 - jax.nn.sigmoid(k * u)),
    lambda u, k: jax.nn.sigmoid(k * u),
    "dx = g slope s (1 - s), s = sigmoid(slope u)",
    "Neftci, Mostafa & Zenke 2019, Surrogate gradient learning in spiking neural networks",
)

triangle = _surrogate(
    "triangle",
    lambda u, k: jnp.maximum(0.0, 1.0 - k * jnp.abs(u)),
    lambda u, k: jnp.where(
        jnp.abs(u) <= 1.0 / k, u - 0.5 * k * u * jnp.abs(u), jnp.sign(u) / (2.0 * k)
    ),
    "dx = g max(0, 1 - slope |u|)",
    "Esser et al. 2016, Convolutional networks for fast, energy-efficient neuromorphic computing",
)

arctan = _surrogate(
    "arctan",
    lambda u, k: 1.0 / (1.0 + (np.pi * k * u) ** 2),
    lambda u, k: jnp.arctan(np.pi * k * u) / (np.pi * k),
    "dx = g / (1 + (pi slope u)**2)",
    "Fang et al. 2021, Incorporating learnable membrane time constant to enhance learning of "
    "spiking neural networks",
)


# ---- feedback alignment ---------------------------------------------------------------------------
def feedback_matrices(key, params, *, scale: float | None = None, layers=None) -> dict:
    """A fixed random feedback matrix B per dense layer, with its weight's shape: {layer path:
    B}, from an explicit PRNG key. B ~ N(0, scale**2), scale 1/sqrt(fan_in) by default. Keep it
    in the training state, not in the parameters (it is not trained)."""
    found = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = path_name(path)
        if not name.endswith("/w") or jnp.ndim(leaf) != 2:
            continue
        layer = name[:-2]
        if layers is not None and layer not in layers:
            continue
        std = scale if scale is not None else 1.0 / np.sqrt(leaf.shape[0])
        key, sub = jax.random.split(key)
        found[layer] = std * jax.random.normal(sub, leaf.shape, leaf.dtype)
    return found


class FeedbackAlignment(Override):
    """The affine gate's backward with dx = g B.T instead of g w.T, B fixed per layer.

    `feedback`: {layer path: B} (from feedback_matrices). A layer without a B keeps the exact
    rule. dw and db are the exact ones (x.T g and the sum of g): the weights learn from the
    random feedback the layers below send.
    """

    def __init__(self, feedback: dict):
        super().__init__(None)
        self.feedback = dict(feedback)

    def resolve(self, scope: str):
        for layer, b in self.feedback.items():
            if in_layer(scope, layer):
                return _fa_rule(b, layer)
        return None

    def __repr__(self):
        return f"FeedbackAlignment({', '.join(self.feedback)})"


def _fa_rule(b, layer):
    def vjp(g, x, w, bias, *, needs, **static):
        xf = jnp.reshape(x, (x.shape[0], -1))
        dx = jnp.reshape(g @ b.T.astype(g.dtype), x.shape).astype(x.dtype) if needs[0] else None
        dw = (xf.T @ g).astype(w.dtype) if needs[1] else None
        db = jnp.sum(g, axis=0).astype(bias.dtype) if needs[2] else None
        return dx, dw, db

    def reference(x, w, bias, **static):
        # the affine's value, written so that its gradient is the rule's: x reaches the
        # output through B alone, w through x alone (stop_gradient on the other paths)
        xf = jnp.reshape(x, (x.shape[0], -1))
        sg = jax.lax.stop_gradient
        return sg(xf) @ w + (xf @ b - sg(xf @ b)) + bias

    return Rule(
        vjp,
        f"feedback_alignment[{layer}]",
        reference=reference,
        formula="dx = g B.T (B fixed and random), dw = x.T g, db = sum g",
        paper="Lillicrap, Cownden, Tweed & Akerman 2016, Random synaptic feedback "
        "weights support error backpropagation for deep learning",
    )


def feedback_alignment(feedback: dict) -> FeedbackAlignment:
    """Feedback alignment for the affine gate (nn.Dense): rules={"affine": this}."""
    return FeedbackAlignment(feedback)


# ---- changing the gate's own gradient -----------------------------------------------------------------
def clip_backward(max_norm: float) -> Rule:
    """The gate's own gradient for each input, scaled down to at most `max_norm` (L2)."""
    if not max_norm > 0:
        raise OverrideError(f"clip_backward: max_norm must be positive, got {max_norm!r}")

    def vjp(g, *inputs, original, **static):
        def clip(d):
            if d is None:
                return None
            norm = jnp.sqrt(jnp.sum(jnp.square(d.astype(jnp.float32))))
            return (d * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))).astype(d.dtype)

        return tuple(clip(d) for d in original(g))

    return Rule(
        vjp,
        f"clip_backward({max_norm:g})",
        kind="surrogate",
        formula=f"each input's gradient scaled to norm <= {max_norm:g}",
    )


def noise_backward(key, scale: float) -> Rule:
    """The gate's own gradient plus Gaussian noise N(0, scale**2), drawn from `key` (pass a new
    key per step)."""

    def vjp(g, *inputs, original, **static):
        out = []
        for k, d in zip(jax.random.split(key, len(inputs)), original(g)):
            out.append(
                None
                if d is None
                else (d + scale * jax.random.normal(k, d.shape, jnp.float32)).astype(d.dtype)
            )
        return tuple(out)

    return Rule(
        vjp,
        f"noise_backward({scale:g})",
        kind="surrogate",
        formula=f"the gate's gradient + N(0, {scale:g}**2)",
    )


# ---- the library, declared once ---------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LibraryRule:
    """One rule of the library: what `--rule`, the checkers and the docs read of it.

    Attributes:
        name: its name (`--rule GATE=NAME`).
        rule: the `Rule` itself, or the function that makes it (`make(*needs, **options)`).
        family: its kind, for the docs: "straight-through", "surrogate", "feedback",
            "any gate".
        gates: the names of the gates it is written for (() : any gate).
        options: the numbers its maker takes by keyword (`--rule GATE=NAME:slope=2`).
        needs: what its maker takes besides them, positionally: "" nothing, "feedback" the
            {layer: B} of feedback_matrices, "key" a PRNG key.
        only: whether it applies to `gates` alone (its rule takes those gates' inputs).
        cases: `cases(rng) -> [(rule, gate, inputs, static)]`, where the checkers judge it
            (fnn.check.rules.library_cases).
        refused: why `--rule` cannot use it ("": it can).
    """

    name: str
    rule: Any
    family: str
    gates: tuple
    options: tuple = ()
    needs: str = ""
    only: bool = False
    cases: Callable = dataclasses.field(default=lambda rng: [], repr=False)
    refused: str = ""

    def build(self, *needs, **options):
        """The rule, made with `needs` and `options` (a `Rule` taking none is itself).

        Raises:
            OverrideError: options given to a rule that takes none, or a bad option value.
            TypeError: an option this rule does not take.
        """
        if isinstance(self.rule, Rule):
            if needs or options:
                raise OverrideError(f"{self.name} takes no options")
            return self.rule
        return self.rule(*needs, **options)

    @property
    def example(self):
        """The rule as the checkers first judge it (for its formula and paper)."""
        return self.cases(np.random.default_rng(0))[0][0]


def _x(rng):
    return rng.uniform(-2.0, 2.0, (4, 6))


def _on(gate, make, static=None):
    """cases(rng): the rule `make()` as the backward of `gate` at a (4, 6) input."""
    return lambda rng: [(make(), gate, (_x(rng),), dict(static or {}))]


def _straight_through_cases(rng):
    x = _x(rng)
    return [(straight_through, sign, (x,), {}), (straight_through, quantize, (x,), {"bits": 2})]


def _surrogate_cases(make):
    return lambda rng: [
        (make(slope), spike, (_x(rng),), {"threshold": 0.3}) for slope in (1.0, 4.0)
    ]


def _fa_cases(rng):
    x, w, b = rng.standard_normal((5, 4)), rng.standard_normal((4, 3)), rng.standard_normal(3)
    rule = feedback_alignment({"": rng.standard_normal((4, 3))}).resolve("")
    return [(rule, affine, (x, w, b), {})]


_ZERO_GRADIENT = ("sign", "round", "quantize", "spike")
_PER_STEP = (
    "noise_backward draws its noise from a key it is given, and a --rule spec is made "
    "once per run: its key would be a constant of the compiled step, the same noise at "
    "every step. Use fnn.rulebook.noise_backward(key, scale) in your own step, with a new "
    "key per step (jax.random.fold_in(key, step))"
)

LIBRARY = (
    LibraryRule(
        "straight_through",
        straight_through,
        "straight-through",
        _ZERO_GRADIENT,
        cases=_straight_through_cases,
    ),
    LibraryRule(
        "clipped_straight_through",
        clipped_straight_through,
        "straight-through",
        _ZERO_GRADIENT,
        cases=_on(sign, lambda: clipped_straight_through),
    ),
    *(
        LibraryRule(
            make.__name__, make, "surrogate", ("spike",), ("slope",), cases=_surrogate_cases(make)
        )
        for make in (fast_sigmoid, sigmoid_derivative, triangle, arctan)
    ),
    LibraryRule(
        "feedback_alignment",
        feedback_alignment,
        "feedback",
        ("affine",),
        needs="feedback",
        only=True,
        cases=_fa_cases,
    ),
    LibraryRule(
        "clip_backward",
        clip_backward,
        "any gate",
        (),
        ("max_norm",),
        cases=_on(lax_tanh, lambda: clip_backward(0.5), {"accuracy": None}),
    ),
    LibraryRule(
        "noise_backward",
        noise_backward,
        "any gate",
        (),
        ("scale",),
        needs="key",
        cases=_on(lax_tanh, lambda: noise_backward(jax.random.PRNGKey(0), 0.1), {"accuracy": None}),
        refused=_PER_STEP,
    ),
)
"""Every rule of the library, one entry each (`LibraryRule`), in the order of the docs."""

LIBRARY_BY_NAME = {entry.name: entry for entry in LIBRARY}

RULES = {e.name: e.rule for e in LIBRARY if e.family in ("straight-through", "surrogate")}
"""The rules of the gates with a zero gradient: name -> the `Rule`, or its maker by slope."""
