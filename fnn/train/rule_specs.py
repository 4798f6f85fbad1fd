"""Backward-rule overrides for a training run, from text: `python -m fnn train --rule SPEC`.

    SPEC = GATE[@LAYER[+LAYER...]]=RULE[:NAME=VALUE[,NAME=VALUE...]]

    relu=straight_through                    every relu gate's backward is the identity
    spike=fast_sigmoid:slope=25              a surrogate gradient of the spike gate
    affine=feedback_alignment                feedback alignment in every nn.Dense
    affine@3_dense=feedback_alignment        ... in that layer only (a layer path, as in reports)
    conv2d=clip_backward:max_norm=1          the gate's own gradients, clipped

GATE is a gate's name (`python -m fnn gradcheck` lists them, primitives as 'lax.tanh'); RULE a
rule of the library, fnn.ops.rulebook.LIBRARY, with the options its entry declares (a rule the
library marks `refused`, noise_backward, is refused with the reason). The specs are part of the
run's config, so --resume trains with the same rules. Feedback alignment's fixed random
matrices come from the run's seed
(fold_in(make_key(seed), FEEDBACK_SALT): every seed in [0, 2**64-1] its own), one per Dense
layer: a resumed run draws the very same matrices again, so they need no room in the
checkpoint, and they are never parameters.
"""

from __future__ import annotations

import jax

from fnn.autodiff.overrides import only
from fnn.ops import registry, rulebook
from fnn.train.state import make_key

FEEDBACK_SALT = 0xFA  # the feedback matrices' key: fold_in(make_key(seed), FEEDBACK_SALT)
RULES = {e.name: e for e in rulebook.LIBRARY if not e.refused}  # what a spec may name
NUMBERS = {o for e in rulebook.LIBRARY for o in e.options}  # the options, all numbers


class RuleSpecError(ValueError):
    """A --rule spec that cannot be read or used."""


def gate_names() -> set:
    """The names a spec may give: fnn's gates ('relu') and the JAX primitives' gates, by the
    gate's name ('lax.tanh'), the primitive's ('tanh') or the lecture's ('multiply')."""
    return set(registry) | set(registry.lecture_names) | {p.name for p in registry.by_primitive}


def parse_rule(spec: str) -> tuple[str, tuple, str, dict]:
    """(gate, layers, rule name, options) of one SPEC (the module docstring)."""
    if not isinstance(spec, str) or "=" not in spec:
        raise RuleSpecError(f"--rule {spec!r}: expected GATE=RULE, e.g. relu=straight_through")
    target, _, rule = spec.partition("=")
    gate, _, layer_text = target.strip().partition("@")
    layers = tuple(p for p in layer_text.split("+") if p) if layer_text else ()
    if not gate or (layer_text and not layers):
        raise RuleSpecError(f"--rule {spec!r}: name a gate before '=' (and layers after '@')")
    if gate.strip() not in gate_names():
        close = sorted(n for n in gate_names() if gate.strip() in n or n in gate.strip())[:6]
        raise RuleSpecError(
            f"--rule {spec!r}: no gate is called {gate.strip()!r}"
            + (f" (did you mean {', '.join(close)}?)" if close else "")
            + "; `python -m fnn gradcheck` lists the gates"
        )
    name, _, option_text = rule.strip().partition(":")
    entry = rulebook.LIBRARY_BY_NAME.get(name)
    if entry is not None and entry.refused:
        raise RuleSpecError(
            f"--rule {spec!r}: {name} cannot be used in a --rule spec: {entry.refused}"
        )
    if name not in RULES:
        raise RuleSpecError(
            f"--rule {spec!r}: unknown rule {name!r}; choose one of {', '.join(sorted(RULES))}"
        )
    options = {}
    for item in filter(None, option_text.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in NUMBERS:
            raise RuleSpecError(
                f"--rule {spec!r}: options are NAME=NUMBER with NAME one of "
                f"{', '.join(sorted(NUMBERS))}, got {item!r}"
            )
        try:
            options[key] = float(value)
        except ValueError:
            raise RuleSpecError(f"--rule {spec!r}: {key} must be a number, got {value!r}") from None
    return gate.strip(), layers, name, options


def make_rules(specs, params, seed: int = 0) -> dict | None:
    """The `rules=` table of fnn.grad for these specs on a model with `params` (None for no
    specs). Checks each rule's options now: a bad spec fails before training starts."""
    table = {}
    for spec in specs or ():
        gate, layers, name, options = parse_rule(spec)
        entry = RULES[name]
        if entry.only and gate not in entry.gates:
            raise RuleSpecError(
                f"--rule {spec!r}: {name} is a rule of the {' or '.join(entry.gates)} gate alone"
            )
        if entry.needs == "feedback":
            rule = _feedback_rule(spec, entry, options, params, seed, layers)
        else:
            try:
                rule = entry.build(**options)
            except TypeError as e:  # an option it does not take, a bad value (OverrideError)
                raise RuleSpecError(f"--rule {spec!r}: {e}") from None
            if layers:
                rule = only(rule, *layers)
        if gate in table:
            raise RuleSpecError(
                f"--rule {spec!r}: gate {gate!r} already has a rule; give one --rule per gate"
            )
        table[gate] = rule
    return table or None


def _feedback_rule(spec, entry, options, params, seed, layers):
    """Feedback alignment: the fixed random matrices of the model's Dense layers (those named in
    `layers`, else all), drawn from the run's seed."""
    if options:
        raise RuleSpecError(f"--rule {spec!r}: {entry.name} takes no options")
    key = jax.random.fold_in(make_key(seed), FEEDBACK_SALT)
    feedback = rulebook.feedback_matrices(key, params, layers=layers or None)
    if not feedback:
        raise RuleSpecError(
            f"--rule {spec!r}: the model has no Dense layer"
            + (f" named {', '.join(layers)}" if layers else "")
        )
    return entry.build(feedback)


def check_rules(specs, grad: str) -> None:
    """Rules replace fnn's hand-written backward: they need grad='custom'."""
    for spec in specs or ():
        parse_rule(spec)
    if specs and grad != "custom":
        raise RuleSpecError(
            f"--rule needs --grad custom: jax.grad ({grad!r}) has no "
            f"hand-written rules to replace (got {', '.join(specs)})"
        )
