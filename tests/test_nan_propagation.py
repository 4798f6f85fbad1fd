"""NaN is never hidden: every rule of the registry (fnn.registry: fnn's own gates and JAX's
primitives'), at its first test case with a NaN put into one element of each float input, gives JAX's
forward values and JAX's gradients, NaNs in the same places (relu(NaN) is NaN, as in JAX;
a max, a pool or a clip over a NaN routes its gradient as JAX's does). One compiled program per
rule, compared as the kink suite compares (tests/test_kinks.py)."""

import dataclasses

import jax
import numpy as np
import pytest

import fnn
from fnn.autodiff import is_float
from fnn.check.gates import case_results

RULES = dict(fnn.registry)


def _with_nan(case):
    """The case with element 0 of each float input NaN (None when it has no float input)."""
    args, changed = [], False
    for a in case.args:
        if is_float(a) and np.size(a):
            a = np.array(a, copy=True)
            a.reshape(-1)[0] = np.nan
            changed = True
        args.append(a)
    return (
        dataclasses.replace(case, args=tuple(args), label=f"{case.label} with NaN", numeric=False)
        if changed
        else None
    )


def _same(a, b, what):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        if x.dtype == jax.dtypes.float0:
            continue
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=f"{what}: NaN places")
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-300, equal_nan=True, err_msg=what)


@pytest.mark.parametrize("name", sorted(RULES))
def test_nan_inputs_give_jaxs_nans(name):
    gate = RULES[name]
    with jax.enable_x64(True):
        first = gate.cases(np.random.default_rng(0), "float64")[0]
    case = _with_nan(first)
    if case is None:
        pytest.skip("no float input")
    for label, out_mine, out_ref, mine, ref in case_results(gate, [case]):
        _same(out_mine, out_ref, f"{name} at {label}: forward")
        _same(mine, ref, f"{name} at {label}: gradient (fnn, then jax.vjp)")
