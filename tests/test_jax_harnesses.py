"""JAX's own table of primitive use cases (jax._src.internal_test_util.test_harnesses: one use
case of one primitive each, the table jax2tf is tested with) through fnn.vjp, against jax.vjp
of the same untranslated function.

Each harness is run as written (its float32 inputs) and again in float64 (its float32 inputs
cast up, under x64), with one random cotangent for its float outputs: fnn's gradient of every
float input must be JAX's, to the `harness` tolerance (1e-10 relative in float64, 1e-5 in
float32), NaNs and infinities in the same places. Where jax.vjp of all float inputs together
raises, each float input is tried alone (clamp with scalar bounds, scatter-mul with repeated
indices: JAX differentiates the operand, not the updates). A missing rule, a wrong value or
another error from fnn fails; a harness JAX itself cannot differentiate, or with nothing to
differentiate, is skipped with its reason.

Complex inputs and outputs are differentiated too (complex64 and complex128, cast up to
complex128 under x64), with complex random cotangents: fnn's gradients must be JAX's under its
convention (fnn.primitive_gate's `complex`). The groups in OUT_OF_SCOPE are skipped, named and
counted in a warning (with the few JAX itself marks unimplemented on CPU). CI runs a fixed
sample, one harness of each of SAMPLE groups chosen by a stable hash, and one of each of the
COMPLEX groups (about half a minute);
FNN_ALL_HARNESSES=1 runs the whole table (about twenty minutes on 2 cores), and
FNN_HARNESS_GROUPS=cholesky,lu the whole of some groups:

    FNN_ALL_HARNESSES=1 python -m pytest -n 0 tests/test_jax_harnesses.py -rs
"""

import collections
import hashlib
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn.check.gates import FAST_COMPILE
from fnn.check.numeric import rel_error
from fnn.check.tolerances import tolerance
from jax._src.internal_test_util import test_harnesses as th  # noqa: E402  (after fnn)

SAMPLE = 40
OUT_OF_SCOPE = {}  # group -> why (no rules yet)
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
INEXACT = FLOATS + (np.dtype(np.complex64), np.dtype(np.complex128))
PRECISE = (np.dtype(np.float64), np.dtype(np.complex128))
# the groups of complex numbers and FFT: one harness of each joins the sample
COMPLEX = ("fft", "complex", "conj", "real", "imag", "eig")


def _key(h) -> str:
    return hashlib.sha256(h.fullname.encode()).hexdigest()


def _scope(h) -> str | None:
    """Why a harness is out of scope, or None."""
    return OUT_OF_SCOPE.get(h.group_name)


IN_SCOPE = [h for h in th.all_harnesses if _scope(h) is None and h.filter("cpu")]


def _sample():
    """One float32/float64 harness (the smallest hash) of each of SAMPLE groups (the smallest
    hashes of their first harness), and one harness of each COMPLEX group: deterministic,
    spread over primitives, the same on every machine."""
    first, complex_first = {}, {}
    for h in sorted(IN_SCOPE, key=_key):
        if np.dtype(h.dtype) in FLOATS and h.group_name not in COMPLEX:
            first.setdefault(h.group_name, h)
        if h.group_name in COMPLEX:
            complex_first.setdefault(h.group_name, h)
    return sorted(first.values(), key=_key)[:SAMPLE] + sorted(complex_first.values(), key=_key)


_GROUPS = [g for g in os.environ.get("FNN_HARNESS_GROUPS", "").split(",") if g]
HARNESSES = (
    IN_SCOPE
    if os.environ.get("FNN_ALL_HARNESSES") == "1"
    else [h for h in IN_SCOPE if h.group_name in _GROUPS]
    if _GROUPS
    else _sample()
)


def _args(h):
    return h.dyn_args_maker(np.random.RandomState(int(_key(h)[:8], 16)))


def _float_positions(args):
    return [
        i
        for i, a in enumerate(args)
        if isinstance(a, (np.ndarray, jax.Array)) and np.dtype(a.dtype) in INEXACT
    ]


def _function(h, args, positions):
    """The harness as a function of its float (and complex) inputs at `positions`, returning
    its float and complex outputs (a list)."""

    def f(*d):
        full = list(args)
        for i, x in zip(positions, d):
            full[i] = x
        out = jax.tree_util.tree_leaves(h.dyn_fun(*full))
        return [o for o in out if jnp.issubdtype(jnp.result_type(o), jnp.inexact)]

    return f


def _compare(h, args, positions, label):
    """(verdict, detail) of fnn.vjp vs jax.vjp of the harness in its float inputs `positions`:
    'agree', 'wrong', 'missing', 'fnn error', 'jax fails', 'no float output'.
    Each side is traced alone first (so a failure is attributed), then run compiled (rather
    than op by op)."""
    f = _function(h, args, positions)
    d = [jnp.asarray(args[i]) for i in positions]
    try:
        out = jax.eval_shape(f, *d)
        if not out:
            return "no float output", label
        rng = np.random.default_rng(int(_key(h)[8:16], 16))
        ct = [jnp.asarray(_normal(rng, o.shape, o.dtype), o.dtype) for o in out]
        jax.eval_shape(lambda ct, *d: jax.vjp(f, *d)[1](ct), ct, *d)
    except Exception as e:  # noqa: BLE001  (whatever JAX raises: it has no gradient here)
        return "jax fails", f"{label}: {type(e).__name__}: {str(e)[:200]}"
    try:
        jax.eval_shape(lambda ct, *d: fnn.vjp(f, *d)[1](ct), ct, *d)
    except Exception as e:  # noqa: BLE001
        try:  # JAX traced its side, but can it compute it? (complex max pooling: no)
            jax.jit(lambda ct, *d: jax.vjp(f, *d)[1](ct), compiler_options=FAST_COMPILE)(ct, *d)
        except Exception as jax_e:  # noqa: BLE001
            return "jax fails", f"{label}: {type(jax_e).__name__}: {str(jax_e)[:200]}"
        if isinstance(e, fnn.MissingRuleError):
            return "missing", f"{label}: no rule for {e.primitive.name}"
        return "fnn error", f"{label}: {type(e).__name__}: {str(e)[:300]}"
    # each side its own compiled program: XLA's CPU runtime (jax 0.10.2) can hang for good
    # running one program holding both (complex64 QR, mode="complete", of 2x200x100: every
    # thread waiting; each side alone takes seconds)
    mine = jax.jit(lambda ct, *d: fnn.vjp(f, *d)[1](ct), compiler_options=FAST_COMPILE)(ct, *d)
    jax.block_until_ready(mine)  # (and not beside JAX's, dispatched asynchronously)
    ref = jax.jit(lambda ct, *d: jax.vjp(f, *d)[1](ct), compiler_options=FAST_COMPILE)(ct, *d)
    worst = []
    for x, a, b in zip(d, mine, ref):
        precise = all(np.dtype(v.dtype) in PRECISE for v in [x, *out])
        tol = tolerance("harness", "float64" if precise else "float32")
        err = rel_error(a, b, special=True)
        worst.append(err)
        if not err <= tol:
            return "wrong", (
                f"{label}: input {x.dtype}{list(x.shape)}: rel_error {err:.2e} > {tol:g}"
            )
    return "agree", f"{label}: {max(worst, default=0.0):.1e}"


def _normal(rng, shape, dtype):
    """Standard normal values (complex: real and imaginary parts each) of `shape`."""
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    return rng.standard_normal(shape)


def _check(h, args, label):
    """[(verdict, detail)] for the harness at `args`: all float inputs together, or where JAX
    cannot differentiate them together, each alone."""
    positions = _float_positions(args)
    if not positions:
        return [("no float input", label)]
    together = _compare(h, args, positions, label)
    if together[0] != "jax fails" or len(positions) == 1:
        return [together]
    alone = [_compare(h, args, [i], f"{label}, input {i} alone") for i in positions]
    return alone if any(v != "jax fails" for v, _ in alone) else [together]


_UP = {np.dtype(np.float32): np.float64, np.dtype(np.complex64): np.complex128}


def _upcast(args):
    return [
        a.astype(_UP[a.dtype]) if isinstance(a, np.ndarray) and a.dtype in _UP else a for a in args
    ]


def check_harness(h):
    """[(verdict, detail)]: the harness as written, then in float64."""
    args = _args(h)
    found = _check(h, args, "as written")
    if any(isinstance(a, np.ndarray) and a.dtype in _UP for a in args):
        with jax.enable_x64(True):
            try:
                jax.eval_shape(lambda *a: h.dyn_fun(*a), *_upcast(args))
            except Exception:  # noqa: BLE001  (a harness fixed to float32: nothing more)
                return found
            found += _check(h, _upcast(args), "float64")
    return found


FAILING = ("wrong", "missing", "fnn error")
SKIPPING = {
    "jax fails": "JAX itself cannot differentiate it",
    "no float input": "no float or complex input",
    "no float output": "no float or complex output",
}


@pytest.mark.parametrize("h", HARNESSES, ids=[h.fullname for h in HARNESSES])
def test_harness_gradient_is_jax(h):
    found = check_harness(h)
    bad = [f"{v}: {detail}" for v, detail in found if v in FAILING]
    assert not bad, f"{h.fullname}: " + "; ".join(bad)
    if all(v in SKIPPING for v, _ in found):
        kinds = sorted({v for v, _ in found})
        pytest.skip(f"{', '.join(SKIPPING[k] for k in kinds)}: {found[0][1]}"[:300])


def test_out_of_scope_groups_are_named_and_counted():
    """The skipped groups exist in JAX's table (the list is not stale) and are reported."""
    groups = collections.Counter(h.group_name for h in th.all_harnesses)
    stale = [g for g in (*OUT_OF_SCOPE, *COMPLEX) if g not in groups]
    assert not stale, f"no harness group {stale} in JAX's table: update OUT_OF_SCOPE, COMPLEX"
    skipped = collections.Counter(h.group_name for h in th.all_harnesses if _scope(h))
    by_reason = collections.defaultdict(list)
    for group, n in sorted(skipped.items()):
        by_reason[OUT_OF_SCOPE[group]].append(f"{group} ({n})")
    unimplemented = collections.Counter(
        h.group_name for h in th.all_harnesses if _scope(h) is None and not h.filter("cpu")
    )
    by_reason["JAX marks it unimplemented on CPU"] = [
        f"{g} ({n})" for g, n in sorted(unimplemented.items())
    ]
    warnings.warn(
        "JAX harnesses skipped: "
        + "; ".join(f"{reason}: {', '.join(items)}" for reason, items in sorted(by_reason.items())),
        stacklevel=1,
    )


def test_the_sample_is_fixed_and_spread_over_primitives():
    sample = _sample()
    assert len(sample) == SAMPLE + len(COMPLEX) - sum(g in OUT_OF_SCOPE for g in COMPLEX)
    assert len({h.group_name for h in sample}) == len(sample)
    assert [h.fullname for h in sample] == [h.fullname for h in _sample()]
    assert not any(_scope(h) for h in sample)
