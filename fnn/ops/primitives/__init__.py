"""Rules for JAX's primitives, so `fnn.grad` differentiates ordinary JAX code.

One gate per primitive, by family (elementwise, special functions, reductions, shapes,
indexing, segments (the combining scatters), linalg, conv, windows (JAX's derivative of
pooling), control flow, checkpoints), each with its hand-written VJP, test cases and kink
cases (or a declaration that it has none), and the parameters it handles, declared with the public
`fnn.primitive_gate`; plus the structural rules (nested jit interpreted in place, custom_jvp/vjp
calls by their own rules (fnn.ops.primitives.custom), while loops, primitives without gradient).
`GATES` maps each primitive to its gate, `RULES` is what the interpreter reads (fnn.autodiff.interpret).
"""

from types import MappingProxyType

from fnn.autodiff.gate import Gate
from fnn.ops.primitives import (control, conv, custom, elementwise, indexing, linalg, loops,
                                reductions, remat, segments, shapes, special, windows)

FAMILIES = {"elementwise": elementwise, "special": special, "reductions": reductions,
            "shapes": shapes, "indexing": indexing, "segments": segments, "linalg": linalg,
            "conv": conv, "windows": windows, "loops": loops, "remat": remat}


def _collect(*modules) -> dict:
    found = {}
    for mod in modules:
        for value in vars(mod).values():
            if isinstance(value, Gate) and value.primitive is not None:
                other = found.get(value.primitive)
                if other is not None and other is not value:
                    raise ValueError(f"two gates for the primitive {value.primitive.name}")
                found[value.primitive] = value
    return found


GATES = MappingProxyType(_collect(*FAMILIES.values()))
registry = MappingProxyType({gate.name: gate for gate in GATES.values()})
RULES = MappingProxyType({**GATES, **control.STRUCTURAL, **loops.STRUCTURAL,
                          **remat.STRUCTURAL, **custom.STRUCTURAL})
# custom_rules="primal": custom_jvp/custom_vjp functions differentiated through their primal
CUSTOM_RULES = {"use": {}, "primal": MappingProxyType(custom.PRIMAL)}

__all__ = ["CUSTOM_RULES", "FAMILIES", "GATES", "RULES", "registry"]
