"""Gates of JAX's control flow: lax.scan (and fori_loop with static bounds, which is a scan) and
lax.cond / lax.switch (jax.checkpoint's gate, which shares their helpers, is in `remat`).

scan's rule is backpropagation through time. The forward scan runs the body, interpreted onto a
small tape of its own at each step, and stacks what the body's gates saved (values the body
closes over are kept once, not per step). The backward is a reverse scan whose step rebuilds
that tape with the step's saved values and runs its backward: the cotangent of the carry flows
from step to step, the gradients of the per-step inputs come out stacked, and those of the
closed-over values add up across steps.

cond's rule runs the taken branch's backward: the forward records each branch's tape (the saved
values of all branches are outputs of the switch, zeros for the branches not taken), and the
backward switches on the same index.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import primitives as P

from fnn.autodiff.backward import backward
from fnn.autodiff.case_values import cnormal, normal
from fnn.autodiff.gate import primitive_gate
from fnn.autodiff.interpret import Interpreter, join_scope, scope_of, site_of
from fnn.autodiff.primitive_cases import case
from fnn.autodiff.replay import Template
from fnn.autodiff.tape import Tape, Traced, apply, is_float


def body_interpreter(rules, scope: str = ""):
    """An interpreter of loop bodies and branches with the rules in use (the gate's `rules`,
    the table of the interpreter that ran it: control_rule passes it; None for a gate called on
    its own: fnn's, fnn.autodiff.interpret.default_rules), recording their gates in the layer
    path (`scope`) of the loop, so overrides limited to a layer reach them."""
    return Interpreter(rules, scope=scope)


class Body:
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


def pullback(template, in_nodes, out_nodes, residuals, invariants, gs, in_specs):
    """The body's backward at one step: cotangents of its inputs (zeros where none)."""
    tape = template.rebuild(residuals, invariants)
    seeds = {}
    for node, g in zip(out_nodes, gs):
        if node is not None:
            seeds[node] = seeds[node] + g if node in seeds else g
    cts = backward(tape, seeds)
    return [
        jnp.zeros(s.shape, s.dtype) if node is None or node not in cts else cts[node]
        for node, s in zip(in_nodes, in_specs)
    ]


def spec(x):
    return jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x))


def _zeros_for(specs):
    return [jnp.zeros(s.shape, s.dtype) for s in specs]


# what fnn passes its control-flow gates besides the primitive's parameters (control_rule)
FNN_PARAMS = ("rules", "scope")
_SCAN_PARAMS = (
    "jaxpr",
    "num_consts",
    "num_carry",
    "length",
    "reverse",
    "unroll",
    "linear",
    "_split_transpose",
)


# ---- scan ---------------------------------------------------------------------------------------
def _scan_forward(
    *args, jaxpr, num_consts, num_carry, length, reverse, unroll, rules=None, scope="", **params
):
    interp = body_interpreter(rules, scope)
    consts, init, xs = (
        args[:num_consts],
        args[num_consts : num_consts + num_carry],
        args[num_consts + num_carry :],
    )
    found = {}

    def step(carry, x):
        body = Body(interp, jaxpr, list(consts) + list(carry) + list(x), invariants=consts)
        found["body"] = body
        outs = body.outs
        return outs[:num_carry], (outs[num_carry:], body.residuals)

    carry, (ys, residuals) = lax.scan(
        step, list(init), list(xs), length=length, reverse=reverse, unroll=unroll
    )
    body = found["body"]
    saved = (
        body.template,
        body.in_nodes,
        body.out_nodes,
        list(consts),
        residuals,
        [spec(a) for a in args],
    )
    return tuple(carry) + tuple(ys), saved


def _scan_cases(rng, dtype):
    n = lambda *s: normal(rng, s, dtype)
    rnn = lambda w, h0, xs: lax.scan(lambda h, x: (jnp.tanh(h @ w + x), h), h0, xs)
    cum = lambda c0, xs: lax.scan(lambda c, x: (c * x + jnp.sin(c), c * 2), c0, xs, reverse=True)
    return [
        case(P.scan_p, rnn, 0.5 * n(3, 3), n(3), n(5, 3), label="rnn: const, carry, xs"),
        case(P.scan_p, cum, n(2), n(4, 2), label="reverse, per-step outputs"),
        case(
            P.scan_p,
            lambda x: lax.fori_loop(0, 3, lambda i, c: c * jnp.cos(c), x),
            n(3),
            label="fori_loop with static bounds",
        ),
        case(
            P.scan_p,
            rnn,
            0.5 * cnormal(rng, (3, 3), dtype),
            cnormal(rng, (3,), dtype),
            n(5, 3),
            label="complex rnn, real xs",
        ),
    ]


@primitive_gate(P.scan_p, forward=_scan_forward, params=_SCAN_PARAMS + FNN_PARAMS, complex=True)
def scan(g, saved, *, num_consts, num_carry, length, reverse, unroll, needs, **params):
    """lax.scan of a body over steps.  Local gradient: backpropagation through time, a reverse
    scan of the body's own backward (the carry's cotangent passed from step to step, the
    closed-over values' gradients summed over the steps)."""
    template, in_nodes, out_nodes, consts, residuals, specs = saved
    g = list(g)
    g_carry, g_ys = g[:num_carry], g[num_carry:]
    const_specs = specs[:num_consts]
    carry_specs = specs[num_consts : num_consts + num_carry]
    x_specs = [jax.ShapeDtypeStruct(s.shape[1:], s.dtype) for s in specs[num_consts + num_carry :]]

    def back_step(state, per_step):
        ct_carry, ct_consts = state
        g_y, res = per_step
        cts = pullback(
            template,
            in_nodes,
            out_nodes,
            res,
            consts,
            list(ct_carry) + list(g_y),
            const_specs + carry_specs + x_specs,
        )
        d_consts, d_carry, d_x = (
            cts[:num_consts],
            cts[num_consts : num_consts + num_carry],
            cts[num_consts + num_carry :],
        )
        return (d_carry, [a + b for a, b in zip(ct_consts, d_consts)]), d_x

    (d_init, d_consts), d_xs = lax.scan(
        back_step,
        (g_carry, _zeros_for(const_specs)),
        (g_ys, residuals),
        length=length,
        reverse=not reverse,
        unroll=unroll,
    )
    grads = list(d_consts) + list(d_init) + list(d_xs)
    return tuple(d if need else None for d, need in zip(grads, needs))


scan.defcases(_scan_cases)
scan.defkinks(smooth=True)


# ---- cond / switch -------------------------------------------------------------------------------
def _switch(index, fns, *args, platforms=None):
    """lax.switch(index, fns, *args); for a platform-dependent cond (branches_platforms: per
    branch, the platforms it is for, None the default; its index is a platform_index) the
    same choice made by lax.platform_dependent, so that each platform compiles only its own
    branch (jnp.diagonal's TPU branch does not lower on a CPU)."""
    if platforms is None:
        return lax.switch(index, fns, *args)
    per_platform, default = {}, None
    for fn, names in zip(fns, platforms):
        if names is None:
            default = fn
        else:
            per_platform.update({name: fn for name in names})
    return lax.platform_dependent(*args, default=default, **per_platform)


def _cond_forward(index, *ops, branches, rules=None, scope="", branches_platforms=None, **params):
    interp = body_interpreter(rules, scope)
    # each branch's residuals, found by tracing it once; then every branch returns all of them
    bodies = [
        jax.eval_shape(lambda *o, b=b: Body(interp, b, list(o)).residuals, *ops) for b in branches
    ]
    slots = [[spec(r) for r in res] for res in bodies]
    found = {}

    def run(k):
        def branch(*o):
            body = Body(interp, branches[k], list(o))
            found[k] = body
            res = [_zeros_for(s) if j != k else body.residuals for j, s in enumerate(slots)]
            return body.outs, res

        return branch

    outs, residuals = _switch(
        index, [run(k) for k in range(len(branches))], *ops, platforms=branches_platforms
    )
    # a branch never traced (a platform-dependent cond runs only its platform's, also backward)
    per_branch = [
        (found[k].template, found[k].in_nodes, found[k].out_nodes) if k in found else None
        for k in range(len(branches))
    ]
    return tuple(outs), (index, per_branch, residuals, [spec(o) for o in ops])


@primitive_gate(
    P.cond_p,
    forward=_cond_forward,
    params=("branches", "branches_platforms") + FNN_PARAMS,
    complex=True,
)
def cond(g, saved, *, needs, branches_platforms=None, **params):
    """lax.cond / lax.switch: the branch that `index` picks (for a platform-dependent cond,
    the branch of the platform it runs on).  Local gradient: the backward of that branch (the
    index itself carries none)."""
    index, per_branch, residuals, specs = saved
    g = list(g)

    def run(k):
        def branch(g, residuals):
            template, in_nodes, out_nodes = per_branch[k]
            return pullback(template, in_nodes, out_nodes, residuals[k], (), g, specs)

        return branch

    grads = _switch(
        index, [run(k) for k in range(len(per_branch))], g, residuals, platforms=branches_platforms
    )
    return (None,) + tuple(d if need else None for d, need in zip(grads, needs[1:]))


@cond.defcases
def _cond_cases(rng, dtype):
    n = lambda *s: normal(rng, s, dtype)
    two = lambda p, x, y: lax.cond(
        p, lambda a, b: jnp.sin(a) * b, lambda a, b: a - jnp.exp(b), x, y
    )
    three = lambda i, x: lax.switch(i, [jnp.tanh, lambda a: a * a, lambda a: -a], x)
    return [
        case(P.cond_p, two, np.asarray(True), n(3), n(3), label="true"),
        case(P.cond_p, two, np.asarray(False), n(3), n(3), label="false"),
        case(P.cond_p, three, np.int32(1), n(2, 2), label="switch of 3"),
        case(P.cond_p, jnp.diagonal, n(3, 3), label="platform-dependent (jnp.diagonal)"),
        case(
            P.cond_p,
            two,
            np.asarray(True),
            cnormal(rng, (3,), dtype),
            cnormal(rng, (3,), dtype),
            label="complex",
        ),
    ]


cond.defkinks(smooth=True)


def control_rule(gate, *, with_site: bool = False):
    """The interpreter's rule for a control-flow primitive: its gate, given the table of rules
    in use (so a user's extra rules apply inside loop bodies and branches too) and, with
    `with_site`, the user's line (for the gate's errors)."""

    def rule(interp, eqn, invals, scope):
        params = dict(eqn.primitive.get_bind_params(eqn.params))
        inner = join_scope(
            scope, scope_of(eqn)
        )  # the loop's layer path: its body's gates run in it
        extra = {"rules": interp.rules, "scope": inner}
        if with_site:
            extra["site"] = site_of(eqn)
        out = apply(gate, tuple(invals), {**params, **extra}, site=site_of(eqn), scope=inner)
        return list(out)

    rule.__name__ = f"{gate.name}_rule"
    return rule


# the interpreter's rules: these gates, with the rules in use passed down to bodies and branches
STRUCTURAL = {P.scan_p: control_rule(scan), P.cond_p: control_rule(cond)}
