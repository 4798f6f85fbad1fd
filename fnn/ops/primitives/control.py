"""Rules for the structural primitives: nested jit, custom_jvp/custom_vjp calls, while loops,
and the primitives whose outputs carry no gradient.

A nested `jit` (pjit) is interpreted in place: its equations join the tape like the caller's.
`custom_jvp_call` and `custom_vjp_call` are differentiated through their primal function with
fnn's rules (the custom rule JAX would use is not consulted), except that `jax.nn.relu` and
`jax.nn.relu6`, whose custom rules give 0 at their kinks, are fnn's relu and relu6 gates. A
`while_loop` whose carry depends on the differentiated inputs has no reverse-mode gradient (JAX
refuses it too): a clear error says so.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, jaxpr_as_fun, primal_dtype_to_tangent_dtype
from jax.extend.core import primitives as P

from fnn.autodiff.api import make_transforms
from fnn.autodiff.gate import primitive_gate
from fnn.autodiff.interpret import NO_GRADIENT, join_scope, scope_of, site_of
from fnn.autodiff.tape import Traced, apply, is_float
from fnn.errors import GateError
from fnn.ops import activations
from fnn.ops._cases import normal, uniform
from fnn.ops.primitives._define import case


def jit(interp, eqn, invals, scope):
    """A nested jax.jit: its jaxpr interpreted in place (the same tape)."""
    return interp.run_closed(eqn.params["jaxpr"], invals, scope=scope)


# jax.nn's custom_jvp functions whose custom rule an fnn gate reproduces: name -> gate (their
# primal functions, differentiated, would split the gradient at the kinks where the custom rule
# gives 0: relu's max(x, 0), relu6's min(max(x, 0), 6))
FUSED_CUSTOM_JVP = {"relu": activations.relu, "relu6": activations.relu6}
_JAX_NN = os.path.join("jax", "_src", "nn", "functions.py")


def _jax_nn_function(eqn):
    """The name of the jax.nn function a custom_jvp_call is, or None ('relu at .../jax/_src/
    nn/functions.py:71' in its jaxpr's debug info)."""
    info = getattr(eqn.params["call_jaxpr"].jaxpr, "debug_info", None)
    where = getattr(info, "func_src_info", None) or ""
    name, _, path = where.partition(" at ")
    return name if _JAX_NN in path else None


def custom_jvp_call(interp, eqn, invals, scope):
    """Functions with a JAX custom JVP (jnp.logaddexp, jax.nn.softplus, relu, relu6, a user's
    jax.custom_jvp): the custom_jvp gate, whose gradient is the transpose of the custom rule, as
    JAX's is; jax.nn.relu and relu6 are fnn's relu and relu6 gates (the same values)."""
    gate = FUSED_CUSTOM_JVP.get(_jax_nn_function(eqn))
    if gate is not None and len(invals) == 1 and len(eqn.outvars) == 1:
        return [apply(gate, (invals[0],), {}, site=site_of(eqn))]
    params = {**eqn.params, "rules": interp.rules}
    out = apply(custom_jvp, tuple(invals), params, site=site_of(eqn),
                scope=join_scope(scope, scope_of(eqn)))
    return list(out)


def _custom_jvp_forward(*args, call_jaxpr, jvp_jaxpr_fun, num_consts, symbolic_zeros,
                        rules=None):
    """The custom_jvp function itself (bound as the program binds it); saves its inputs."""
    params = {"call_jaxpr": call_jaxpr, "jvp_jaxpr_fun": jvp_jaxpr_fun,
              "num_consts": num_consts, "symbolic_zeros": symbolic_zeros}
    out = P.custom_jvp_call_p.bind(*args, **P.custom_jvp_call_p.get_bind_params(params))
    return tuple(out), tuple(args)


@primitive_gate(P.custom_jvp_call_p, forward=_custom_jvp_forward,
                params=("call_jaxpr", "jvp_jaxpr_fun", "num_consts", "symbolic_zeros", "rules"))
def custom_jvp(g, args, *, jvp_jaxpr_fun, num_consts, symbolic_zeros, needs, rules=None,
               **params):
    """A function with a custom JVP rule (jax.custom_jvp).  Local gradient: the transpose of
    its rule, as JAX's: the rule is linear in the tangents, so fnn's own reverse pass over
    tangents -> the rule's output tangents, at the primal inputs, is its transpose. Values the
    function closes over get no gradient through it (JAX's rule gives them no tangent)."""
    primals = args[num_consts:]
    live = [need and is_float(x) for need, x in zip(needs[num_consts:], primals)]
    # the rule sees symbolic zeros only if it asked for them; JAX gives it zeros otherwise
    given = live if symbolic_zeros else [True] * len(primals)
    jvp_jaxpr, consts, out_zeros = jvp_jaxpr_fun.call_wrapped(*[not t for t in given])
    rule = jaxpr_as_fun(ClosedJaxpr(jvp_jaxpr, consts))
    n_out = len(out_zeros)

    def zero_tangent(x):
        return jnp.zeros(np.shape(x), primal_dtype_to_tangent_dtype(jnp.result_type(x)))

    def tangent_map(*differentiated):
        it = iter(differentiated)
        tangents = [next(it) if t else zero_tangent(x)
                    for x, t, gv in zip(primals, live, given) if gv]
        return rule(*primals, *tangents)[n_out:]

    g = g if isinstance(g, (tuple, list)) else (g,)
    cts = [gi for gi, zero in zip(g, out_zeros) if not zero]
    start = [zero_tangent(x) for x, t in zip(primals, live) if t]
    grads = iter(make_transforms(rules or _rules()).vjp(tangent_map, *start)[1](cts)
                 if start and cts else [jnp.zeros_like(t) for t in start])
    return (None,) * num_consts + tuple(next(grads) if t else None for t in live)


@custom_jvp.defcases
def _custom_jvp_cases(rng, dtype):
    import jax

    return [case(P.custom_jvp_call_p, jnp.logaddexp, normal(rng, (2, 3), dtype),
                 normal(rng, (3,), dtype), label="jnp.logaddexp", params="eqn"),
            case(P.custom_jvp_call_p, jax.nn.log1mexp, uniform(rng, (4,), dtype, 0.5, 2.0),
                 label="jax.nn.log1mexp", params="eqn")]


def _custom_jvp_kinks(dtype):
    import jax

    x = np.asarray((0.0, -0.0, 1.0, -1.0, 6.0, np.inf, -np.inf, np.nan), dtype)
    a, b = np.meshgrid(x, x)
    return [case(P.custom_jvp_call_p, jnp.logaddexp, a.reshape(-1), b.reshape(-1),
                 label="jnp.logaddexp at pairs of special points", params="eqn"),
            case(P.custom_jvp_call_p, jax.nn.relu6, x, label="jax.nn.relu6 at its kinks",
                 params="eqn"),
            case(P.custom_jvp_call_p, jax.nn.log1mexp, x, label="jax.nn.log1mexp", params="eqn")]


custom_jvp.defkinks(_custom_jvp_kinks)
def _rules():
    from fnn.ops.primitives import RULES  # the table this module is part of

    return RULES


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
