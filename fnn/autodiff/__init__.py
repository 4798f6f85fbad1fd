"""The registry (how a gate declares forward + VJP), the recorded graph, and the engine."""

from fnn.autodiff.nans import NanOriginError, debug_nans
from fnn.autodiff.engine import backward, grad, value_and_grad, vjp
from fnn.autodiff.registry import Case, Gate, collect_gates, defgate, unbroadcast
from fnn.autodiff.traced import Record, Tape, Traced, is_traced

__all__ = ["Case", "Gate", "NanOriginError", "debug_nans", "Record", "Tape", "Traced", "backward", "collect_gates", "defgate",
           "grad", "is_traced", "unbroadcast", "value_and_grad", "vjp"]
