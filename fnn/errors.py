"""Errors fnn raises. Each message names the gate or argument and the shapes/dtypes involved."""


class FnnError(Exception):
    """Base class of fnn's own errors.

    Catching `FnnError` catches every error fnn raises on purpose (a gate that cannot take its
    inputs, a VJP that breaks its contract, a missing rule, a bad override, a NaN found by
    `fnn.debug_nans`); each subclass is also the builtin error it resembles (`ValueError`,
    `TypeError`, `FloatingPointError`), so code catching those catches fnn's too.
    """


class GateError(FnnError, ValueError):
    """A gate was called with inputs it cannot take (shapes, ranks, dtypes, values).

    Also a `ValueError`. Raised too when a gate is declared wrongly (a forward that does not return
    `(out, saved)`, no VJP) and when a primitive gate meets a parameter it does not handle.
    """


class VJPContractError(FnnError, TypeError):
    """A gate's hand-written VJP returned the wrong number, shapes or dtypes of gradients.

    Also a `TypeError`. The message names the gate, the input and the call site.
    """


class NestingError(FnnError, TypeError):
    """fnn's reverse mode was nested inside itself (fnn.grad of fnn.grad).

    Also a `TypeError`.
    """


class ForeignCallError(FnnError, TypeError):
    """A JAX/NumPy function was called on a value traced by fnn, which would lose its gradient.

    Also a `TypeError`.
    """


class OverrideError(FnnError, TypeError):
    """A rule override that cannot be used: a key naming nothing, a rule that is not callable.

    Also a `TypeError`.
    """


class MissingRuleError(ForeignCallError):
    """fnn.grad met a JAX primitive for which no hand-written rule is declared.

    A `ForeignCallError` (so also a `TypeError`). The message says how to add the rule
    (`fnn.primitive_gate`) or to use jax.grad for the program.

    Args:
        message: the error message.
        primitive: the JAX primitive that has no rule (None when not known), kept as
            `.primitive`.
    """

    def __init__(self, message: str = "", primitive=None):
        super().__init__(message)
        self.primitive = primitive


# Where JAX defines no gradient either, the error says so in these words, so that a user sees
# that the refusal is JAX's rule and not a gap of fnn's (one phrase for every such error)
JAX_REFUSES_TOO = "(jax.grad refuses it too)"


def describe(x) -> str:
    """Short 'f32[3,4]' description of an array-like, a traced value or a ShapeDtypeStruct (or
    its type name)."""
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None or dtype is None:
        return type(x).__name__
    import numpy as np  # noqa: PLC0415  (numpy only when describing)

    try:
        name = np.dtype(dtype).name
    except TypeError:  # an extended dtype (a typed PRNG key: key<fry>)
        name = str(dtype)
    short = {
        "float16": "f16",
        "bfloat16": "bf16",
        "float32": "f32",
        "float64": "f64",
        "int8": "i8",
        "int16": "i16",
        "int32": "i32",
        "int64": "i64",
        "uint8": "u8",
        "uint32": "u32",
        "bool": "bool",
    }.get(name, name)
    return f"{short}[{','.join(str(d) for d in shape)}]"
