"""Rules for JAX's primitives, so `fnn.grad` differentiates ordinary JAX code.

One gate per primitive, by family (elementwise, complex numbers (real, imag, complex, conj, and
JAX's convention for complex values: fnn.ops.primitives.complex_parts), special functions,
reductions, shapes, indexing, segments (the combining scatters), linalg (the matrix product),
factorizations (cholesky, lu, qr), spectral (svd, eigh), solves (triangular, tridiagonal,
custom_linear_solve), fourier (fft), conv, windows (JAX's derivative of pooling), control flow,
checkpoints, collectives, shard_map and pmap), each with its hand-written VJP, test cases and
kink cases (or a declaration that it has none), and the parameters it handles, declared with the
public `fnn.primitive_gate`; plus the structural rules (nested jit interpreted in place,
custom_jvp/vjp calls by their own rules (fnn.ops.primitives.custom), while loops, primitives
without gradient) and the collectives that exist only with named axes
(fnn.ops.primitives.collectives.NAMED: rules, checked by tests/test_collectives.py).
The gates are collected once, with fnn's own, into `fnn.registry` (fnn.ops); `fnn.ops.RULES`, the
table the interpreter reads (fnn.autodiff.interpret), is its view by primitive plus `STRUCTURAL`.
"""

from types import MappingProxyType

from fnn.ops.primitives import (
    collectives,
    complex_parts,
    control,
    conv,
    custom,
    elementwise,
    factorizations,
    fourier,
    indexing,
    linalg,
    loops,
    reductions,
    remat,
    segments,
    shapes,
    shard_map,
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
    "fourier": fourier,
    "conv": conv,
    "windows": windows,
    "loops": loops,
    "remat": remat,
    "collectives": collectives,
    "shard_map": shard_map,
}
"""The families of primitive gates, one module each (their gates are in fnn.registry)."""

# the collectives that exist only with named axes have no case the gate checker can run (it has
# no named axis): they are rules, checked by tests/test_collectives.py, not registry gates
NOT_IN_REGISTRY = frozenset(collectives.NAMED)

STRUCTURAL = MappingProxyType(
    {
        **collectives.NAMED,
        **control.STRUCTURAL,
        **loops.STRUCTURAL,
        **remat.STRUCTURAL,
        **custom.STRUCTURAL,
        **shard_map.STRUCTURAL,
        **solves.STRUCTURAL,
    }
)
"""The rules that are not registry gates: nested jit, custom rules, loops, checkpoints,
shard_map, custom linear solves, the named-axis collectives (fnn.ops.RULES adds the gates)."""

# custom_rules="primal": custom_jvp/custom_vjp functions differentiated through their primal
CUSTOM_RULES = {"use": {}, "primal": MappingProxyType(custom.PRIMAL)}

__all__ = ["CUSTOM_RULES", "FAMILIES"]
