"""Rules for JAX's primitives, so `fnn.grad` differentiates ordinary JAX code.

One gate per primitive, by family (elementwise, complex numbers (real, imag, complex, conj, and
JAX's convention for complex values: fnn.ops.primitives.complex_parts), special functions,
reductions, shapes, indexing, segments (the combining scatters), linalg (the matrix product),
factorizations (cholesky, lu, qr), spectral (svd, eigh), solves (triangular, tridiagonal),
fourier (fft), conv, windows (JAX's derivative of pooling), collectives), each with its
hand-written VJP, test cases and kink cases (or a declaration that it has none), and the
parameters it handles, declared with the public `fnn.primitive_gate`; and the collectives that
exist only with named axes (fnn.ops.primitives.collectives.NAMED: rules, checked by
tests/test_collectives.py).

The structural rules live in the core, fnn.autodiff.structural, and get the table of rules in
use as an argument: nested jit interpreted in place, custom_jvp/vjp calls by their own rules,
while loops, primitives without gradient, and the gates of control flow (scan, cond/switch),
checkpoints, shard_map and pmap, and custom_linear_solve. Those gates are families here too
(`FAMILIES`), so the gates are collected once, with fnn's own, into `fnn.registry` (fnn.ops);
`fnn.ops.RULES`, the table the interpreter reads (fnn.autodiff.interpret), is its view by
primitive plus `STRUCTURAL` (the core's structural rules and the named-axis collectives).
"""

from types import MappingProxyType

from fnn.autodiff import structural
from fnn.autodiff.structural import linear_solve, loops, remat, shard_map
from fnn.ops.primitives import (
    collectives,
    complex_parts,
    conv,
    elementwise,
    factorizations,
    fourier,
    indexing,
    linalg,
    reductions,
    segments,
    shapes,
    solves,
    special,
    spectral,
    windows,
)

FAMILIES = {
    "elementwise": elementwise,
    "complex": complex_parts,
    "special": special,
    "reductions": reductions,
    "shapes": shapes,
    "indexing": indexing,
    "segments": segments,
    "linalg": linalg,
    "factorizations": factorizations,
    "spectral": spectral,
    "solves": solves,
    "linear_solve": linear_solve,
    "fourier": fourier,
    "conv": conv,
    "windows": windows,
    "loops": loops,
    "remat": remat,
    "collectives": collectives,
    "shard_map": shard_map,
}
"""The families of primitive gates, one module each (their gates are in fnn.registry): those of
fnn.ops.primitives, and the structural gates of the core (fnn.autodiff.structural: loops, remat,
shard_map, linear_solve), registered here like the others."""

# the collectives that exist only with named axes have no case the gate checker can run (it has
# no named axis): they are rules, checked by tests/test_collectives.py, not registry gates
NOT_IN_REGISTRY = frozenset(collectives.NAMED)

STRUCTURAL = MappingProxyType({**collectives.NAMED, **structural.STRUCTURAL})
"""The rules that are not registry gates: the named-axis collectives, and the core's structural
rules (fnn.autodiff.structural.STRUCTURAL: nested jit, custom rules, loops, checkpoints,
shard_map, custom linear solves); fnn.ops.RULES adds the gates."""

# custom_rules="primal": custom_jvp/custom_vjp functions differentiated through their primal
CUSTOM_RULES = {"use": {}, "primal": structural.PRIMAL}

__all__ = ["CUSTOM_RULES", "FAMILIES"]
