"""The stand-alone core: gate declaration, the tape, the public trace, the backward walk, NaN
watch. It imports nothing from fnn above it (only fnn.errors).

  gate.py      Case, Gate, defgate, unbroadcast, collect_gates, Registry: how a gate is declared
  tape.py      Traced, Record, Tape, apply: the graph recorded in the forward pass
  backward.py  backward, pullback: the tape walked in reverse; the one function that applies a
               backward rule (override or VJP, contract, NaN watch, errors)
  trace.py     trace -> Trace: the forward pass, shared by vjp and the debuggers
  api.py       make_transforms -> vjp, grad, value_and_grad, trace (JAX's semantics)
  nans.py      debug_nans, NanOriginError: the first gate that makes a NaN or inf
"""

from fnn.autodiff.api import make_transforms
from fnn.autodiff.backward import backward, pullback
from fnn.autodiff.gate import (
    Case,
    Gate,
    Registry,
    collect_gates,
    defgate,
    primitive_gate,
    unbroadcast,
)
from fnn.autodiff.nans import NanOriginError, debug_nans
from fnn.autodiff.tape import Record, Tape, Traced, is_complex, is_float
from fnn.autodiff.trace import Trace, check_argnums

__all__ = [
    "Case",
    "Gate",
    "NanOriginError",
    "Record",
    "Registry",
    "Tape",
    "Trace",
    "Traced",
    "backward",
    "check_argnums",
    "collect_gates",
    "debug_nans",
    "defgate",
    "primitive_gate",
    "is_complex",
    "is_float",
    "make_transforms",
    "pullback",
    "unbroadcast",
]
