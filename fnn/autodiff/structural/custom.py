"""Functions with custom derivatives (JAX's custom-VJP and custom-JVP functions): their own
rules, run by fnn's machinery, so `fnn.grad` gives what JAX's own gradient gives through them.

A `custom_vjp` function brings its backward: fnn records one gate whose forward runs the
function's `fwd` (its outputs and residuals) and whose VJP runs its `bwd` on the residuals and
the upstream gradient. The user's backward *is* a hand-written rule; fnn runs it as written (and
JAX's gradient of `fnn.grad(f)` differentiates it as JAX would).

A `custom_jvp` function brings a forward-mode rule, `(primals, tangents) -> (outputs, output
tangents)`, linear in the tangents. Its transpose is fnn's own reverse pass over that rule: the
rule's jaxpr is interpreted with its tangent inputs on the tape (each one a `custom_jvp.tangent`
gate of the primal input, whose VJP passes the gradient straight back to the input) and its
primal inputs as constants; each differentiated output is a `custom_jvp.output` gate of the
rule's output tangent (its forward returns the rule's primal output, its VJP hands the upstream
gradient to the tangent). Walking that tape backward from the outputs is the vector-Jacobian
product of the rule's Jacobian, J^T g, with no Jacobian built and no JAX autodiff: the tangent
computations are the local gradient, written once by the library author. This is how
`jax.nn.relu/relu6/silu/gelu/softplus`, optax's and Flax's stabilised functions and
`lax.custom_root`'s implicit derivative behave exactly as under JAX's own gradient.

`custom_rules="primal"` (fnn.grad(f, custom_rules="primal")) differentiates their primal
functions instead, by fnn's rules for the primitives inside (`PRIMAL`): what the library's
function computes, not what its author declared its derivative to be. `fnn.check.
check_custom_rules` compares the two per function.

Closing over a differentiated value inside a custom_vjp/custom_jvp function is refused, as JAX
refuses it: the custom rule says nothing about that value's gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore
from jax.extend.core import primitives as P

from fnn.autodiff.gate import defgate, primitive_gate
from fnn.autodiff.interpret import join_scope, raw, scope_of, site_of
from fnn.autodiff.tape import Traced, apply
from fnn.errors import JAX_REFUSES_TOO, GateError, describe


def function_name(eqn) -> str:
    """The name of the custom_jvp/custom_vjp function an equation calls ('relu6', 'f')."""
    info = getattr(eqn.params["call_jaxpr"].jaxpr, "debug_info", None)
    return getattr(info, "func_name", None) or eqn.params.get("name") or "?"


def _refuse_closure(interp, eqn, consts, kind):
    if any(isinstance(c, Traced) for c in consts):
        raise GateError(
            f"{interp.fname}: the {kind} function '{function_name(eqn)}' at {site_of(eqn)} "
            f"closes over a value that depends on the differentiated inputs "
            f"({', '.join(describe(raw(c)) for c in consts if isinstance(c, Traced))}). Its "
            f"custom rule says nothing about that value's gradient {JAX_REFUSES_TOO}: pass "
            f"it to '{function_name(eqn)}' as an argument, or use "
            "jax.closure_convert."
        )


def _is_symbolic_zero(x) -> bool:
    """A cotangent a custom backward left out (JAX's Zero / SymbolicZero for a None)."""
    return type(x).__name__ in ("Zero", "SymbolicZero") and hasattr(x, "aval")


def _tangent_zeros(x):
    """A zero tangent for a primal value: its dtype for floats, float0 for the rest (as JAX)."""
    dtype = jnp.result_type(x)
    if jnp.issubdtype(dtype, jnp.inexact):
        return jnp.zeros(np.shape(x), dtype)
    return np.zeros(np.shape(x), jax.dtypes.float0)


def _as_jax(x):
    return jnp.asarray(x) if isinstance(x, (np.ndarray, np.generic)) else x


def _cotangent(g, out):
    """The upstream gradient as a custom backward expects it: float0 zeros for integer
    outputs (they take no cotangent)."""
    if jnp.issubdtype(jnp.result_type(out), jnp.inexact):
        return g
    return np.zeros(np.shape(out), jax.dtypes.float0)


# ---- custom_vjp ----------------------------------------------------------------------------
def _vjp_forward(*args, fwd_jaxpr_thunk, num_consts, out_trees, perturbed=None, **params):
    """Run the function's fwd: (its outputs, (residuals, the outputs' shapes))."""
    if perturbed is None:  # called outside the interpreter: every float argument
        perturbed = tuple(bool(jnp.issubdtype(jnp.result_type(a), jnp.inexact)) for a in args)
    fwd_jaxpr, fwd_consts = fwd_jaxpr_thunk.call_wrapped(*perturbed[num_consts:])
    outs = jcore.jaxpr_as_fun(jcore.ClosedJaxpr(fwd_jaxpr, fwd_consts))(*args[num_consts:])
    _, res_tree, input_fwds = out_trees()  # after the thunk: it is what records them
    n_res = res_tree.num_leaves - sum(f is not None for f in input_fwds)
    computed, primal_outs = list(outs[:n_res]), list(outs[n_res:])
    computed = iter(computed)
    # a residual forwarded from an argument may be a NumPy constant of the jaxpr: the user's
    # bwd gets a JAX array, as under JAX's own gradient (it may index it with a traced value)
    residuals = [next(computed) if f is None else _as_jax(args[f]) for f in input_fwds]
    return tuple(primal_outs), (residuals, tuple(primal_outs))


@primitive_gate(P.custom_vjp_call_p, forward=_vjp_forward, name="custom_vjp", complex=True)
def custom_vjp(g, saved, *, bwd, num_consts, **params):
    """A custom-VJP function of JAX's.  Local gradient: its own backward, `bwd(residuals, g)`,
    one cotangent per argument (None: zero)."""
    residuals, outs = saved
    cts = bwd.call_wrapped(*residuals, *[_cotangent(gi, o) for gi, o in zip(g, outs)])
    return (None,) * num_consts + tuple(None if _is_symbolic_zero(c) else c for c in cts)


def _vjp_reference(*args, perturbed=None, **params):
    """What JAX differentiates for this gate: the custom_vjp function itself (its rule)."""
    bind = P.custom_vjp_call_p.get_bind_params(params)
    return tuple(P.custom_vjp_call_p.bind(*args, **bind))


custom_vjp.reference = _vjp_reference


def custom_vjp_call(interp, eqn, invals, scope):
    """The rule for custom_vjp_call: the custom_vjp gate, told which arguments are
    differentiated (a fwd may save less for the others: JAX tells it the same)."""
    n = eqn.params["num_consts"]
    _refuse_closure(interp, eqn, invals[:n], "custom_vjp")
    static = {
        k: eqn.params[k]
        for k in (
            "call_jaxpr",
            "fwd_jaxpr_thunk",
            "num_consts",
            "bwd",
            "out_trees",
            "symbolic_zeros",
        )
    }
    static["perturbed"] = tuple(isinstance(x, Traced) for x in invals)
    out = apply(
        custom_vjp, tuple(invals), static, site=site_of(eqn), scope=join_scope(scope, scope_of(eqn))
    )
    return list(out)


# ---- custom_jvp ----------------------------------------------------------------------------
@defgate(name="custom_jvp.tangent", complex=True)
def jvp_tangent(x):
    """The tangent of a custom_jvp function's argument, as its rule's jaxpr reads it: zeros in
    the forward (the value never matters: the rule is linear in it).  Local gradient: 1, the
    gradient of the tangent is the argument's."""
    return _tangent_zeros(x), None


@jvp_tangent.defvjp
def _jvp_tangent_vjp(g, saved):
    return (g,)


jvp_tangent.reference = False  # part of the custom JVP rule's transpose, not a function of x


@defgate(name="custom_jvp.output", complex=True)
def jvp_output(tangent, primal):
    """A custom_jvp function's output: the rule's primal output, standing on the tape for the
    rule's output tangent.  Local gradient: 1 to the tangent (the rule's tangent computations,
    walked backward, are the transpose of its Jacobian)."""
    return primal, None


@jvp_output.defvjp
def _jvp_output_vjp(g, saved):
    return g, None


jvp_output.reference = False


def custom_jvp_call(interp, eqn, invals, scope):
    """The rule for custom_jvp_call: the function's JVP rule, transposed by fnn's reverse pass
    over its tangent computations (see the module docstring)."""
    n, symbolic = eqn.params["num_consts"], eqn.params["symbolic_zeros"]
    _refuse_closure(interp, eqn, invals[:n], "custom_jvp")
    primals = invals[n:]
    site, inner = site_of(eqn), join_scope(scope, scope_of(eqn))
    perturbed = [isinstance(x, Traced) for x in primals]
    zeros = [not p for p in perturbed] if symbolic else [False] * len(primals)
    jvp_jaxpr, jvp_consts, out_zeros = eqn.params["jvp_jaxpr_fun"].call_wrapped(*zeros)
    tangents = [
        apply(jvp_tangent, (x,), {}, site=site, scope=inner) if p else _tangent_zeros(raw(x))
        for x, p, z in zip(primals, perturbed, zeros)
        if not z
    ]
    outs = interp.run(jvp_jaxpr, jvp_consts, [raw(x) for x in primals] + tangents, scope=scope)
    primal_outs, out_tangents = outs[: len(out_zeros)], iter(outs[len(out_zeros) :])
    result = []
    for y, zero in zip(primal_outs, out_zeros):
        t = None if zero else next(out_tangents)
        if isinstance(t, Traced) and jnp.issubdtype(t.dtype, jnp.inexact):
            result.append(apply(jvp_output, (t, raw(y)), {}, site=site, scope=inner))
        else:
            result.append(raw(y))
    return result


# ---- the primal functions instead (custom_rules="primal") -----------------------------------
def primal_function(interp, eqn, invals, scope):
    """custom_jvp_call / custom_vjp_call differentiated through their primal function by fnn's
    rules for the primitives inside (the custom rule is not consulted)."""
    return interp.run_closed(eqn.params["call_jaxpr"], invals, scope=scope)


STRUCTURAL = {P.custom_vjp_call_p: custom_vjp_call, P.custom_jvp_call_p: custom_jvp_call}
PRIMAL = {P.custom_vjp_call_p: primal_function, P.custom_jvp_call_p: primal_function}
