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

Complex numbers and FFT (and `eig`, whose eigenvalues are complex) have no rules yet: their
groups and any harness with a complex value are skipped as out of scope, named and counted in a
warning (with the few JAX itself marks unimplemented on CPU). CI runs a fixed sample, one
harness of each of SAMPLE groups chosen by a stable hash (about half a minute);
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
OUT_OF_SCOPE = {  # group -> why (no rules yet)
    **dict.fromkeys(("fft", "complex", "conj", "real", "imag", "eig"),
                    "complex numbers and FFT"),
}
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _key(h) -> str:
    return hashlib.sha256(h.fullname.encode()).hexdigest()


def _complex(h) -> bool:
    return np.dtype(h.dtype).kind == "c" or "complex" in h.fullname


def _scope(h) -> str | None:
    """Why a harness is out of scope, or None."""
    if h.group_name in OUT_OF_SCOPE:
        return OUT_OF_SCOPE[h.group_name]
    if _complex(h):
        return "complex numbers and FFT"
    return None


IN_SCOPE = [h for h in th.all_harnesses if _scope(h) is None and h.filter("cpu")]


def _sample():
    """One float32/float64 harness (the smallest hash) of each of SAMPLE groups (the smallest
    hashes of their first harness): deterministic, spread over primitives, the same on every
    machine."""
    first = {}
    for h in sorted(IN_SCOPE, key=_key):
        if np.dtype(h.dtype) in FLOATS:
            first.setdefault(h.group_name, h)
    return sorted(first.values(), key=_key)[:SAMPLE]


_GROUPS = [g for g in os.environ.get("FNN_HARNESS_GROUPS", "").split(",") if g]
HARNESSES = (IN_SCOPE if os.environ.get("FNN_ALL_HARNESSES") == "1" else
             [h for h in IN_SCOPE if h.group_name in _GROUPS] if _GROUPS else _sample())


def _args(h):
    return h.dyn_args_maker(np.random.RandomState(int(_key(h)[:8], 16)))


def _float_positions(args):
    return [i for i, a in enumerate(args)
            if isinstance(a, (np.ndarray, jax.Array)) and np.dtype(a.dtype) in FLOATS]


def _function(h, args, positions):
    """The harness as a function of its float inputs at `positions`, returning its float
    outputs (a list)."""
    def f(*d):
        full = list(args)
        for i, x in zip(positions, d):
            full[i] = x
        out = jax.tree_util.tree_leaves(h.dyn_fun(*full))
        return [o for o in out if jnp.issubdtype(jnp.result_type(o), jnp.floating)]
    return f


def _compare(h, args, positions, label):
    """(verdict, detail) of fnn.vjp vs jax.vjp of the harness in its float inputs `positions`:
    'agree', 'wrong', 'missing', 'fnn error', 'jax fails', 'no float output', 'complex'.
    Each side is traced alone first (so a failure is attributed), then both run in one
    compiled program (one compile, rather than op by op)."""
    f = _function(h, args, positions)
    d = [jnp.asarray(args[i]) for i in positions]
    try:
        out = jax.eval_shape(f, *d)
        if not out:
            return "no float output", label
        if any(jnp.issubdtype(o.dtype, jnp.complexfloating) for o in out):
            return "complex", label
        rng = np.random.default_rng(int(_key(h)[8:16], 16))
        ct = [jnp.asarray(rng.standard_normal(o.shape), o.dtype) for o in out]
        jax.eval_shape(lambda ct, *d: jax.vjp(f, *d)[1](ct), ct, *d)
    except Exception as e:  # noqa: BLE001  (whatever JAX raises: it has no gradient here)
        return "jax fails", f"{label}: {type(e).__name__}: {str(e)[:200]}"
    try:
        jax.eval_shape(lambda ct, *d: fnn.vjp(f, *d)[1](ct), ct, *d)
    except fnn.MissingRuleError as e:
        return "missing", f"{label}: no rule for {e.primitive.name}"
    except Exception as e:  # noqa: BLE001
        return "fnn error", f"{label}: {type(e).__name__}: {str(e)[:300]}"
    both = jax.jit(lambda ct, *d: (fnn.vjp(f, *d)[1](ct), jax.vjp(f, *d)[1](ct)),
                   compiler_options=FAST_COMPILE)
    mine, ref = both(ct, *d)
    worst = []
    for x, a, b in zip(d, mine, ref):
        precise = all(np.dtype(v.dtype) == FLOATS[1] for v in [x, *out])
        tol = tolerance("harness", "float64" if precise else "float32")
        err = rel_error(a, b, special=True)
        worst.append(err)
        if not err <= tol:
            return "wrong", (f"{label}: input {x.dtype}{list(x.shape)}: rel_error {err:.2e} > "
                             f"{tol:g}")
    return "agree", f"{label}: {max(worst, default=0.0):.1e}"


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


def _upcast(args):
    return [a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype == np.float32 else a
            for a in args]


def check_harness(h):
    """[(verdict, detail)]: the harness as written, then in float64."""
    args = _args(h)
    found = _check(h, args, "as written")
    if any(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in args):
        with jax.enable_x64(True):
            try:
                jax.eval_shape(lambda *a: h.dyn_fun(*a), *_upcast(args))
            except Exception:  # noqa: BLE001  (a harness fixed to float32: nothing more)
                return found
            found += _check(h, _upcast(args), "float64")
    return found


FAILING = ("wrong", "missing", "fnn error")
SKIPPING = {"jax fails": "JAX itself cannot differentiate it",
            "no float input": "no float32/float64 input", "no float output": "no float output",
            "complex": "out of scope: a complex value (complex numbers and FFT)"}


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
    stale = [g for g in OUT_OF_SCOPE if g not in groups]
    assert not stale, f"no harness group {stale} in JAX's table: update OUT_OF_SCOPE"
    skipped = collections.Counter(h.group_name for h in th.all_harnesses if _scope(h))
    assert sum(skipped.values()) == len(th.all_harnesses) - sum(
        _scope(h) is None for h in th.all_harnesses)
    by_reason = collections.defaultdict(list)
    for group, n in sorted(skipped.items()):
        reason = OUT_OF_SCOPE.get(group, "complex numbers and FFT")
        by_reason[reason].append(f"{group} ({n})")
    unimplemented = collections.Counter(h.group_name for h in th.all_harnesses
                                        if _scope(h) is None and not h.filter("cpu"))
    by_reason["JAX marks it unimplemented on CPU"] = [f"{g} ({n})" for g, n in
                                                      sorted(unimplemented.items())]
    warnings.warn("JAX harnesses skipped as out of scope: " + "; ".join(
        f"{reason}: {', '.join(items)}" for reason, items in sorted(by_reason.items())),
        stacklevel=1)


def test_the_sample_is_fixed_and_spread_over_primitives():
    sample = _sample()
    assert len(sample) == SAMPLE == len({h.group_name for h in sample})
    assert [h.fullname for h in sample] == [h.fullname for h in _sample()]
    assert not any(_scope(h) for h in sample)
