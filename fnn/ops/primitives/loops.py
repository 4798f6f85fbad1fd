"""Gates of JAX's control flow: lax.scan (and fori_loop with static bounds, which is a scan),
lax.cond / lax.switch, and jax.checkpoint (remat).

scan's rule is backpropagation through time. The forward scan runs the body, interpreted onto a
small tape of its own at each step, and stacks what the body's gates saved (values the body
closes over are kept once, not per step). The backward is a reverse scan whose step rebuilds
that tape with the step's saved values and runs its backward: the cotangent of the carry flows
from step to step, the gradients of the per-step inputs come out stacked, and those of the
closed-over values add up across steps.

cond's rule runs the taken branch's backward: the forward records each branch's tape (the saved
values of all branches are outputs of the switch, zeros for the branches not taken), and the
backward switches on the same index. checkpoint's rule saves only its inputs and recomputes its
body in the backward, as jax.checkpoint does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import primitives as P

from fnn.autodiff import overrides
from fnn.autodiff.backward import backward
from fnn.autodiff.gate import primitive_gate
from fnn.autodiff.interpret import Interpreter, join_scope, scope_of, site_of
from fnn.autodiff.replay import Template
from fnn.autodiff.tape import Tape, Traced, apply, is_float
from fnn.errors import GateError
from fnn.ops._cases import normal
from fnn.ops.primitives._define import case


def _interpreter(rules, scope: str = ""):
    """An interpreter of loop bodies and branches with the rules in use, recording their gates
    in the layer path (`scope`) of the loop, so overrides limited to a layer reach them."""
    if rules is None:
        from fnn.ops.primitives import RULES  # the table this module is part of

        rules = RULES
    return Interpreter(rules, scope=scope)


class _Body:
    """One run of a jaxpr on a fresh tape: its float inputs boxed, its outputs' nodes, and its
    saved values split into a template and residuals."""

    def __init__(self, interp, closed, args, invariants=()):
        self.tape = Tape()
        boxed = [self.tape.input(a) if is_float(a) else a for a in args]
        self.in_nodes = [b.node if isinstance(b, Traced) else None for b in boxed]
        outs = interp.run_closed(closed, boxed)
        self.out_nodes = [o.node if isinstance(o, Traced) else None for o in outs]
        self.outs = [o.value if isinstance(o, Traced) else o for o in outs]
        self.template, self.residuals = Template.capture(self.tape, invariants)


def _pullback(template, in_nodes, out_nodes, residuals, invariants, gs, in_specs):
    """The body's backward at one step: cotangents of its inputs (zeros where none)."""
    tape = template.rebuild(residuals, invariants)
    seeds = {}
    for node, g in zip(out_nodes, gs):
        if node is not None:
            seeds[node] = seeds[node] + g if node in seeds else g
    cts = backward(tape, seeds)
    return [jnp.zeros(s.shape, s.dtype) if node is None or node not in cts else cts[node]
            for node, s in zip(in_nodes, in_specs)]


def _spec(x):
    return jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x))


def _zeros_for(specs):
    return [jnp.zeros(s.shape, s.dtype) for s in specs]


# what fnn passes its control-flow gates besides the primitive's parameters (control_rule)
_FNN_PARAMS = ("rules", "scope")
_SCAN_PARAMS = ("jaxpr", "num_consts", "num_carry", "length", "reverse", "unroll", "linear",
                "_split_transpose")


# ---- scan ---------------------------------------------------------------------------------------
def _scan_forward(*args, jaxpr, num_consts, num_carry, length, reverse, unroll, rules=None,
                  scope="", **params):
    interp = _interpreter(rules, scope)
    consts, init, xs = args[:num_consts], args[num_consts:num_consts + num_carry], \
        args[num_consts + num_carry:]
    found = {}

    def step(carry, x):
        body = _Body(interp, jaxpr, list(consts) + list(carry) + list(x), invariants=consts)
        found["body"] = body
        outs = body.outs
        return outs[:num_carry], (outs[num_carry:], body.residuals)

    carry, (ys, residuals) = lax.scan(step, list(init), list(xs), length=length, reverse=reverse,
                                      unroll=unroll)
    body = found["body"]
    saved = (body.template, body.in_nodes, body.out_nodes, list(consts), residuals,
             [_spec(a) for a in args])
    return tuple(carry) + tuple(ys), saved


def _scan_cases(rng, dtype):
    n = lambda *s: normal(rng, s, dtype)
    rnn = lambda w, h0, xs: lax.scan(lambda h, x: (jnp.tanh(h @ w + x), h), h0, xs)
    cum = lambda c0, xs: lax.scan(lambda c, x: (c * x + jnp.sin(c), c * 2), c0, xs, reverse=True)
    return [case(P.scan_p, rnn, 0.5 * n(3, 3), n(3), n(5, 3), label="rnn: const, carry, xs"),
            case(P.scan_p, cum, n(2), n(4, 2), label="reverse, per-step outputs"),
            case(P.scan_p, lambda x: lax.fori_loop(0, 3, lambda i, c: c * jnp.cos(c), x), n(3),
                 label="fori_loop with static bounds")]


@primitive_gate(P.scan_p, forward=_scan_forward, params=_SCAN_PARAMS + _FNN_PARAMS)
def scan(g, saved, *, num_consts, num_carry, length, reverse, unroll, needs, **params):
    """lax.scan of a body over steps.  Local gradient: backpropagation through time, a reverse
    scan of the body's own backward (the carry's cotangent passed from step to step, the
    closed-over values' gradients summed over the steps)."""
    template, in_nodes, out_nodes, consts, residuals, specs = saved
    g = list(g)
    g_carry, g_ys = g[:num_carry], g[num_carry:]
    const_specs = specs[:num_consts]
    carry_specs = specs[num_consts:num_consts + num_carry]
    x_specs = [jax.ShapeDtypeStruct(s.shape[1:], s.dtype)
               for s in specs[num_consts + num_carry:]]

    def back_step(state, per_step):
        ct_carry, ct_consts = state
        g_y, res = per_step
        cts = _pullback(template, in_nodes, out_nodes, res, consts, list(ct_carry) + list(g_y),
                        const_specs + carry_specs + x_specs)
        d_consts, d_carry, d_x = (cts[:num_consts], cts[num_consts:num_consts + num_carry],
                                  cts[num_consts + num_carry:])
        return (d_carry, [a + b for a, b in zip(ct_consts, d_consts)]), d_x

    (d_init, d_consts), d_xs = lax.scan(back_step, (g_carry, _zeros_for(const_specs)),
                                        (g_ys, residuals), length=length, reverse=not reverse,
                                        unroll=unroll)
    grads = list(d_consts) + list(d_init) + list(d_xs)
    return tuple(d if need else None for d, need in zip(grads, needs))


scan.defcases(_scan_cases)
scan.defkinks(smooth=True)


# ---- cond / switch -------------------------------------------------------------------------------
def _cond_forward(index, *ops, branches, rules=None, scope="", **params):
    interp = _interpreter(rules, scope)
    # each branch's residuals, found by tracing it once; then every branch returns all of them
    bodies = [jax.eval_shape(lambda *o, b=b: _Body(interp, b, list(o)).residuals, *ops)
              for b in branches]
    slots = [[_spec(r) for r in res] for res in bodies]
    found = {}

    def run(k):
        def branch(*o):
            body = _Body(interp, branches[k], list(o))
            found[k] = body
            res = [_zeros_for(s) if j != k else body.residuals for j, s in enumerate(slots)]
            return body.outs, res
        return branch

    outs, residuals = lax.switch(index, [run(k) for k in range(len(branches))], *ops)
    per_branch = [(found[k].template, found[k].in_nodes, found[k].out_nodes)
                  for k in range(len(branches))]
    return tuple(outs), (index, per_branch, residuals, [_spec(o) for o in ops])


@primitive_gate(P.cond_p, forward=_cond_forward, params=("branches",) + _FNN_PARAMS)
def cond(g, saved, *, needs, **params):
    """lax.cond / lax.switch: the branch that `index` picks.  Local gradient: the backward of
    that branch (the index itself carries none)."""
    index, per_branch, residuals, specs = saved
    g = list(g)

    def run(k):
        def branch(g, residuals):
            template, in_nodes, out_nodes = per_branch[k]
            return _pullback(template, in_nodes, out_nodes, residuals[k], (), g, specs)
        return branch

    grads = lax.switch(index, [run(k) for k in range(len(per_branch))], g, residuals)
    return (None,) + tuple(d if need else None for d, need in zip(grads, needs[1:]))


@cond.defcases
def _cond_cases(rng, dtype):
    n = lambda *s: normal(rng, s, dtype)
    two = lambda p, x, y: lax.cond(p, lambda a, b: jnp.sin(a) * b, lambda a, b: a - jnp.exp(b), x, y)
    three = lambda i, x: lax.switch(i, [jnp.tanh, lambda a: a * a, lambda a: -a], x)
    return [case(P.cond_p, two, np.asarray(True), n(3), n(3), label="true"),
            case(P.cond_p, two, np.asarray(False), n(3), n(3), label="false"),
            case(P.cond_p, three, np.int32(1), n(2, 2), label="switch of 3")]
cond.defkinks(smooth=True)


# ---- checkpoint (remat) --------------------------------------------------------------------------
def policy_name(policy) -> str:
    """How a checkpoint policy is named in messages: its function name or its repr."""
    return getattr(policy, "__name__", None) or repr(policy)


def _saves_everything(policy, site: str) -> bool:
    """Whether a checkpoint's `policy` keeps every value of its body (no recomputation), or
    nothing (recompute it all in the backward); any other policy is refused: fnn's gate has no
    per-value choice, and ignoring the policy would silently change the memory it was asked
    to save. A GateCall (an fnn gate's own call, interpreted because it was transformed) keeps
    its old meaning: recomputed."""
    from fnn.autodiff.tape import GateCall

    if policy is None or policy is jax.checkpoint_policies.nothing_saveable or isinstance(
            policy, GateCall):
        return False
    if policy is jax.checkpoint_policies.everything_saveable:
        return True
    raise GateError(
        f"fnn.grad: the checkpoint (jax.checkpoint / fnn.checkpoint) at {site} has policy "
        f"{policy_name(policy)}; fnn's remat gate recomputes either everything (policy=None or "
        "jax.checkpoint_policies.nothing_saveable) or nothing "
        "(jax.checkpoint_policies.everything_saveable), it cannot keep only some values. Use "
        "one of those, or use JAX's own autodiff (grad='builtin'), which honours any policy.")


def _remat_forward(*args, jaxpr, prevent_cse, differentiated, policy, rules=None, scope="",
                   site="", **params):
    closed = jax.extend.core.ClosedJaxpr(jaxpr, ())
    interp = _interpreter(rules, scope)
    if _saves_everything(policy, site):  # keep the body's saved values: a plain call
        body = _Body(interp, closed, list(args))
        return tuple(body.outs), ("kept", body.template, body.in_nodes, body.out_nodes,
                                  body.residuals, [_spec(a) for a in args])
    outs = interp.run_closed(closed, list(args))
    return tuple(outs), ("recompute", args, rules, overrides.active(), scope)


@primitive_gate(P.remat_p, forward=_remat_forward,
                params=("jaxpr", "prevent_cse", "differentiated", "policy", "site") + _FNN_PARAMS)
def remat(g, saved, *, jaxpr, prevent_cse, needs, **params):
    """jax.checkpoint: its body, whose intermediate values are not kept.  Local gradient: the
    body's backward, after running its forward again from the saved inputs (policy
    everything_saveable: from the values the forward kept)."""
    if saved[0] == "kept":
        _, template, in_nodes, out_nodes, residuals, specs = saved
        cts = _pullback(template, in_nodes, out_nodes, residuals, (), list(g), specs)
        return tuple(d if need else None for d, need in zip(cts, needs))
    _, args, rules, in_effect, scope = saved
    if prevent_cse:  # keep XLA from reusing the forward's values instead of recomputing them,
        # and from recomputing before the backward reaches here: the barrier ties the inputs
        # to the incoming cotangent (XLA CPU keeps it only when compiled with
        # fnn.runtime.remat_compiler_options())
        args, g = lax.optimization_barrier((tuple(args), tuple(g)))
    with overrides.overriding(in_effect):  # the rule overrides the forward ran under
        body = _Body(_interpreter(rules, scope), jax.extend.core.ClosedJaxpr(jaxpr, ()),
                     list(args))
    tape = body.tape
    seeds = {}
    for node, gi in zip(body.out_nodes, g):
        if node is not None:
            seeds[node] = seeds[node] + gi if node in seeds else gi
    cts = backward(tape, seeds)
    return tuple(None if not need or node is None else
                 cts.get(node, jnp.zeros(np.shape(a), jnp.result_type(a)))
                 for need, node, a in zip(needs, body.in_nodes, args))


@remat.defcases
def _remat_cases(rng, dtype):
    f = jax.checkpoint(lambda x, w: jnp.sum(jnp.tanh(x @ w) ** 2, axis=0))
    return [case(P.remat_p, f, normal(rng, (3, 4), dtype), normal(rng, (4, 2), dtype))]
remat.defkinks(smooth=True)


def control_rule(gate):
    """The interpreter's rule for a control-flow primitive: its gate, given the table of rules
    in use (so a user's extra rules apply inside loop bodies and branches too)."""
    def rule(interp, eqn, invals, scope):
        params = dict(eqn.primitive.get_bind_params(eqn.params))
        inner = join_scope(scope, scope_of(eqn))  # the loop's layer path: its body's gates run in it
        extra = {"rules": interp.rules, "scope": inner}
        if gate is remat:  # its policy's error names the user's line
            extra["site"] = site_of(eqn)
        out = apply(gate, tuple(invals), {**params, **extra}, site=site_of(eqn), scope=inner)
        return list(out)
    rule.__name__ = f"{gate.name}_rule"
    return rule


# the interpreter's rules: these gates, with the rules in use passed down to bodies and branches
STRUCTURAL = {P.scan_p: control_rule(scan), P.cond_p: control_rule(cond),
              P.remat_p: control_rule(remat)}
