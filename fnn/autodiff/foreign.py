"""Why a JAX or NumPy function failed on a value traced by fnn, and which gate to use instead.

`explain_foreign_call(error, fname, registry)` reads the traceback of the TypeError that JAX
raised when handed a traced value: the user's line, the function called, and the gate of
`registry` (name -> gate) that does the same thing.
"""

from __future__ import annotations

import linecache
import os
import re
import traceback

import jax

_ALIASES = {"dot": "matmul", "_reduce_sum": "sum", "_mean": "mean", "_reduce_max": "max",
            "_reduce_min": "min", "amax": "max", "asarray": None, "array": None, "clip": "minimum"}
_JAX_DIR = os.path.dirname(jax.__file__) + os.sep
_FNN_AUTODIFF = os.path.dirname(os.path.abspath(__file__)) + os.sep


def explain_foreign_call(e: Exception, fname: str, registry) -> str:
    """The message of a ForeignCallError for JAX's error `e` raised inside `fname`'s function."""
    frames = [fr for fr in traceback.extract_tb(e.__traceback__)
              if not fr.filename.startswith((_JAX_DIR, _FNN_AUTODIFF))]
    site, code, call = "?", "", ""
    if frames:
        fr = frames[-1]
        site = f"{fr.filename}:{fr.lineno}"
        raw = linecache.getline(fr.filename, fr.lineno) or fr.line or ""
        code = raw.strip()
        if getattr(fr, "colno", None) is not None and getattr(fr, "end_colno", None) is not None:
            call = raw[fr.colno:fr.end_colno]  # the call being made when it failed (3.11+)
    # the function named in JAX's own message first (it is the innermost call), then the line's
    names = re.findall(r"<function (\w+) at|^(\w+) requires ndarray|argument to (\w+) as", str(e))
    names += re.findall(r"(?:jnp|numpy|np|nn|lax|jax)\.(\w+)\s*\(", call + " " + code)
    flat = [n for item in names for n in (item if isinstance(item, tuple) else (item,)) if n]
    flat = [n for n in flat if n not in ("custom_jvp_call", "custom_vjp_call")]
    called = next((n for n in flat if not n.startswith("_")), flat[0] if flat else "a JAX function")
    gate = None
    for n in flat:
        n = _ALIASES.get(n, n)
        if n in registry:
            gate = n
            break
    hint = (f"use the fnn gate fnn.ops.{gate} (registry name '{gate}') instead"
            if gate else "declare a gate for it with fnn.defgate (see the README) and use that")
    return (
        f"{fname}: {called}() received a value traced by fnn at {site}"
        + (f": `{code}`" if code else "")
        + f". JAX and NumPy functions cannot see fnn's graph, so the gradient would be lost; {hint}."
    )
