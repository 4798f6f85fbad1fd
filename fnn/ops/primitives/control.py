"""Rules for the structural primitives: nested jit, custom_jvp/custom_vjp calls, while loops,
and the primitives whose outputs carry no gradient.

A nested `jit` (pjit) is interpreted in place: its equations join the tape like the caller's.
`custom_jvp_call` and `custom_vjp_call` are differentiated through their primal function with
fnn's rules (the custom rule JAX would use is not consulted), except that `jax.nn.relu`, whose
custom rule fixes relu'(0) = 0, is fnn's relu gate. A `while_loop` whose carry depends on the
differentiated inputs has no reverse-mode gradient (JAX refuses it too): a clear error says so.
"""

from __future__ import annotations

import os

from jax.extend.core import primitives as P

from fnn.autodiff.interpret import NO_GRADIENT, site_of
from fnn.autodiff.tape import Traced
from fnn.errors import GateError
from fnn.ops import activations


def jit(interp, eqn, invals, scope):
    """A nested jax.jit: its jaxpr interpreted in place (the same tape)."""
    return interp.run_closed(eqn.params["jaxpr"], invals, scope=scope)


# jax.nn's custom_jvp functions whose custom rule an fnn gate reproduces: name -> gate
FUSED_CUSTOM_JVP = {"relu": activations.relu}
_JAX_NN = os.path.join("jax", "_src", "nn", "functions.py")


def _jax_nn_function(eqn):
    """The name of the jax.nn function a custom_jvp_call is, or None ('relu at .../jax/_src/
    nn/functions.py:71' in its jaxpr's debug info)."""
    info = getattr(eqn.params["call_jaxpr"].jaxpr, "debug_info", None)
    where = getattr(info, "func_src_info", None) or ""
    name, _, path = where.partition(" at ")
    return name if _JAX_NN in path else None


def fused_gate(eqn):
    """The fnn gate that stands for this custom_jvp_call as a whole (jax.nn.relu's), or None:
    then its primal function is interpreted in place."""
    gate = FUSED_CUSTOM_JVP.get(_jax_nn_function(eqn))
    return gate if gate is not None and len(eqn.invars) == 1 and len(eqn.outvars) == 1 else None


def custom_jvp_call(interp, eqn, invals, scope):
    """Functions with a JAX custom JVP (jax.nn.relu, softplus, logsumexp helpers): their primal
    function differentiated by fnn's rules; jax.nn.relu is fnn's relu gate (relu'(0) = 0, the
    value of its custom rule)."""
    gate = fused_gate(eqn)
    if gate is not None:
        from fnn.autodiff.tape import apply

        return [apply(gate, (invals[0],), {}, site=site_of(eqn))]
    return interp.run_closed(eqn.params["call_jaxpr"], invals, scope=scope)


def custom_vjp_call(interp, eqn, invals, scope):
    """Functions with a JAX custom VJP: their primal function differentiated by fnn's rules."""
    return interp.run_closed(eqn.params["call_jaxpr"], invals, scope=scope)


def while_loop(interp, eqn, invals, scope):
    """lax.while_loop (and fori_loop with bounds known only at run time): forward only."""
    body_consts = eqn.params["body_nconsts"] + eqn.params["cond_nconsts"]
    carried = [k for k, x in enumerate(invals) if isinstance(x, Traced) and k >= body_consts]
    raise GateError(
        f"{interp.fname}: lax.while_loop at {site_of(eqn)} carries values that depend on the "
        f"differentiated inputs (carry positions {[k - body_consts for k in carried] or 'via its constants'}). "
        "Reverse-mode gradients of a while_loop are not defined (JAX refuses them too): use "
        "lax.scan, or lax.fori_loop with bounds known when tracing (which is a scan).")


NO_GRADIENT_PRIMITIVES = [
    P.eq_p, P.ne_p, P.lt_p, P.le_p, P.gt_p, P.ge_p, P.and_p, P.or_p, P.xor_p, P.not_p,
    P.is_finite_p, P.argmax_p, P.argmin_p, P.iota_p, P.shift_left_p, P.shift_right_arithmetic_p,
    P.shift_right_logical_p, P.population_count_p, P.clz_p, P.reduce_and_p, P.reduce_or_p,
    P.reduce_xor_p, P.nextafter_p, P.bitcast_convert_type_p, P.random_bits_p, P.random_seed_p,
    P.random_fold_in_p, P.random_split_p, P.threefry2x32_p, P.rng_bit_generator_p,
    P.rng_uniform_p, P.eq_to_p, P.lt_to_p, P.le_to_p,
] + [getattr(P, name) for name in ("random_wrap_p", "random_unwrap_p") if hasattr(P, name)]

STRUCTURAL = {
    P.jit_p: jit,
    P.custom_jvp_call_p: custom_jvp_call,
    P.custom_vjp_call_p: custom_vjp_call,
    P.while_p: while_loop,
    **{p: NO_GRADIENT for p in NO_GRADIENT_PRIMITIVES},
}
