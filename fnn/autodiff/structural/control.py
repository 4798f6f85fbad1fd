"""Rules for the structural primitives: nested jit, while loops, and the primitives whose
outputs carry no gradient (custom_jvp/custom_vjp calls: fnn.autodiff.structural.custom).

A nested `jit` (pjit) is interpreted in place: its equations join the tape like the caller's.
A `while_loop` is differentiated as JAX does in reverse mode: carried loop invariants pass their
gradient through; a carry that changes from step to step and depends on the differentiated
inputs has none (JAX refuses it too), and a clear error says so where a gradient would flow.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.extend import core as jcore
from jax.extend.core import primitives as P

from fnn.autodiff.interpret import NO_GRADIENT, raw, site_of
from fnn.autodiff.tape import Traced
from fnn.errors import JAX_REFUSES_TOO, GateError


def jit(interp, eqn, invals, scope):
    """A nested jax.jit: its jaxpr interpreted in place (the same tape)."""
    return interp.run_closed(eqn.params["jaxpr"], invals, scope=scope)


def _depends(jaxpr, deps, rules) -> list:
    """Per output of `jaxpr`: whether it depends, through float values and primitives that pass
    gradients, on the inputs marked in `deps`."""
    dep = {v for v, d in zip(jaxpr.invars, deps) if d}
    for eqn in jaxpr.eqns:
        if eqn.primitive is P.stop_gradient_p or rules.get(eqn.primitive) is NO_GRADIENT:
            continue
        if any(isinstance(v, jcore.Var) and v in dep for v in eqn.invars):
            dep.update(v for v in eqn.outvars if _is_inexact(v.aval))
    return [isinstance(v, jcore.Var) and v in dep and _is_inexact(v.aval) for v in jaxpr.outvars]


def _is_inexact(aval) -> bool:
    try:
        return bool(jnp.issubdtype(aval.dtype, jnp.inexact))
    except TypeError:
        return False


def while_loop(interp, eqn, invals, scope, live):
    """lax.while_loop (and fori_loop with bounds known only at run time), as JAX differentiates
    it in reverse mode: a carry that the body passes on unchanged (a loop invariant) leaves the
    loop as it came in, so its gradient is the identity; a carry that depends on the
    differentiated inputs and changes from step to step has no reverse-mode gradient (the number
    of steps is known only at run time), and is refused when a gradient would flow from it."""
    cn, bn = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
    body = eqn.params["body_jaxpr"].jaxpr
    init = invals[cn + bn :]
    traced_consts = [isinstance(x, Traced) for x in invals[cn : cn + bn]]
    dep = [isinstance(x, Traced) for x in init]
    while True:  # a carry depends if its start does or the body makes it from one that does
        more = [a or b for a, b in zip(dep, _depends(body, traced_consts + dep, interp.rules))]
        if more == dep:
            break
        dep = more
    forwarded = [out is inv for out, inv in zip(body.outvars, body.invars[bn:])]
    changing = [k for k, (d, f, lv) in enumerate(zip(dep, forwarded, live)) if d and lv and not f]
    if changing:
        raise GateError(
            f"{interp.fname}: the lax.while_loop at {site_of(eqn)} changes, from step to step, "
            f"carried values that depend on the differentiated inputs "
            f"({', '.join(body.outvars[k].aval.str_short() for k in changing)}), and the "
            "result depends on them. Reverse-mode gradients of such a loop are not defined, "
            f"the number of steps being known only at run time {JAX_REFUSES_TOO}: use "
            "lax.scan, or lax.fori_loop with bounds known when tracing (which is a scan)."
        )
    outs = interp.evaluate(eqn, [raw(x) for x in invals])
    # a loop invariant leaves the loop as it came in: the same (traced) value
    return [init[k] if dep[k] and forwarded[k] else o for k, o in enumerate(outs)]


while_loop.takes_live = True


NO_GRADIENT_PRIMITIVES = [
    P.eq_p,
    P.ne_p,
    P.lt_p,
    P.le_p,
    P.gt_p,
    P.ge_p,
    P.and_p,
    P.or_p,
    P.xor_p,
    P.not_p,
    P.is_finite_p,
    P.argmax_p,
    P.argmin_p,
    P.iota_p,
    P.shift_left_p,
    P.shift_right_arithmetic_p,
    P.shift_right_logical_p,
    P.population_count_p,
    P.clz_p,
    P.reduce_and_p,
    P.reduce_or_p,
    P.reduce_xor_p,
    P.nextafter_p,
    P.bitcast_convert_type_p,
    P.random_bits_p,
    P.random_seed_p,
    P.random_fold_in_p,
    P.random_split_p,
    P.threefry2x32_p,
    P.rng_bit_generator_p,
    P.rng_uniform_p,
    P.eq_to_p,
    P.lt_to_p,
    P.le_to_p,
] + [getattr(P, name) for name in ("random_wrap_p", "random_unwrap_p") if hasattr(P, name)]

STRUCTURAL = {
    P.jit_p: jit,
    P.while_p: while_loop,
    **{p: NO_GRADIENT for p in NO_GRADIENT_PRIMITIVES},
}
