"""The stand-alone core: gate declaration, the tape, the public trace, the backward walk, the
jaxpr interpreter and its structural rules, NaN watch. It imports nothing from fnn above it
(only fnn.errors).

  gate.py             Case, Gate, defgate, unbroadcast, collect_gates, Registry: how a gate is
                      declared
  case_values.py      the values gates' test cases are made of (random arrays away from kinks,
                      test matrices, special points)
  primitive_cases.py  a primitive's test case taken from a real call (case), find, bare
  tape.py             Traced, Record, Tape, apply: the graph recorded in the forward pass
  backward.py         backward, pullback: the tape walked in reverse; the one function that
                      applies a backward rule (override or VJP, contract, NaN watch, errors)
  interpret.py        Interpreter: a jaxpr walked onto the tape with a table of rules
  replay.py           Template: a loop body's tape without its saved arrays, rebuilt per step
  overrides.py        rule overrides for one call or one block
  structural/         the rules of nested jit, custom rules, while, scan, cond, checkpoint,
                      shard_map and custom_linear_solve, each given the table of rules in use
  trace.py            trace -> Trace: the forward pass, shared by vjp and the debuggers
  api.py              make_transforms -> vjp, grad, value_and_grad, trace (JAX's semantics)
  nans.py             debug_nans, NanOriginError: the first gate that makes a NaN or inf
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
