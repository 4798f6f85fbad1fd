"""Rules for JAX's primitives, so `fnn.grad` differentiates ordinary JAX code.

One gate per primitive, by family (elementwise, special functions, reductions, shapes,
indexing, segments (the combining scatters), linalg (the matrix product), factorizations
(cholesky, lu, qr), spectral (svd, eigh), solves (triangular, tridiagonal,
custom_linear_solve), conv, windows (JAX's derivative of pooling), control flow, checkpoints,
collectives, shard_map and pmap), each with its hand-written VJP, test cases and kink cases (or
a declaration that it has none), and the parameters it handles, declared with the public
`fnn.primitive_gate`; plus the structural rules (nested jit interpreted in place, custom_jvp/vjp
calls by their own rules (fnn.ops.primitives.custom), while loops, primitives without gradient)
and the collectives that exist only with named axes (fnn.ops.primitives.collectives.NAMED:
rules, checked by tests/test_collectives.py).
`GATES` maps each primitive to its gate, `RULES` is what the interpreter reads (fnn.autodiff.interpret).
"""

from types import MappingProxyType

from fnn.autodiff.gate import Gate
from fnn.ops.primitives import (collectives, control, conv, custom, elementwise, factorizations,
                                indexing, linalg, loops, reductions, remat, segments, shapes,
                                shard_map, solves, special, spectral, windows)

FAMILIES = {"elementwise": elementwise, "special": special, "reductions": reductions,
            "shapes": shapes, "indexing": indexing, "segments": segments, "linalg": linalg,
            "factorizations": factorizations, "spectral": spectral, "solves": solves,
            "conv": conv, "windows": windows, "loops": loops, "remat": remat,
            "collectives": collectives, "shard_map": shard_map}


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


# the collectives that exist only with named axes have no case the gate checker can run (it has
# no named axis): they are rules, checked by tests/test_collectives.py, not registry gates
GATES = MappingProxyType({p: g for p, g in _collect(*FAMILIES.values()).items()
                          if p not in collectives.NAMED})
registry = MappingProxyType({gate.name: gate for gate in GATES.values()})
RULES = MappingProxyType({**GATES, **collectives.NAMED, **control.STRUCTURAL,
                          **loops.STRUCTURAL, **remat.STRUCTURAL, **custom.STRUCTURAL,
                          **shard_map.STRUCTURAL, **solves.STRUCTURAL})
# custom_rules="primal": custom_jvp/custom_vjp functions differentiated through their primal
CUSTOM_RULES = {"use": {}, "primal": MappingProxyType(custom.PRIMAL)}

__all__ = ["CUSTOM_RULES", "FAMILIES", "GATES", "RULES", "registry"]
