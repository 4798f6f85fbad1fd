"""How much of a bench step is its matrix products: every dot_general and convolution of the
hand-written (fnn.grad) step's jaxpr compiled and timed alone (a product inside a `lax.scan`: in
a scan of as many steps), interleaved with the whole step and the 2048^3 reference matmul, then
summed (times how often each occurs).

    python scripts/step_matmuls.py transformer        # or mlp, cnn, resnet, lstm
    python scripts/step_matmuls.py resnet --rounds 9  # interleaved rounds (default 5)

Prints the step's time, the reference matmul's GFLOP/s, the products' summed time alone (as a
share of the step), their FLOPs' rate as a share of the reference, and the costliest products
with the share of the reference rate each reaches alone. Where the products alone run below a
target share of the matmul rate, no change outside them reaches it. The 1-minute load average
is printed before and after. Results: docs/benchmarks.md (issue 25).
"""

import fnn  # noqa: F401  (first: fnn.tune_cpu() on import, as in `python -m fnn bench`)

import argparse
import collections
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn.bench.cases import batch_of, build, model_specs
from fnn.bench.steps import _chained, _copy, _init
from fnn.bench.timing import gemm
from fnn.train.step import make_train_step


def products(jaxpr, found=None, times=1, length=1):
    """{(primitive, operand avals, params, scan length): (count, primitive, params, avals,
    scan length)} of a jaxpr's dot_general and conv_general_dilated equations, through nested
    jaxprs (scans times length; `length` the number of steps of the innermost scan around it)."""
    found = {} if found is None else found
    for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
        name = eqn.primitive.name
        if name in ("dot_general", "conv_general_dilated"):
            avals = tuple(v.aval for v in eqn.invars[:2])
            key = (
                name,
                tuple((a.shape, str(a.dtype)) for a in avals),
                tuple(sorted((k, repr(v)) for k, v in eqn.params.items())),
                length,
            )
            count = found[key][0] if key in found else 0
            found[key] = (count + times, eqn.primitive, dict(eqn.params), avals, length)
        inner = eqn.params.get("length", 1) if name == "scan" else 1
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    products(sub, found, times * inner, inner if name == "scan" else length)
    return found


def timed_alone(primitive, params, avals, length, rng):
    """A call of the product alone: one jitted product, or, for a product inside a scan of
    `length` steps, a scan of `length` such products, each step's operand made to depend on
    the step before (a + 0 * out[0, ..., 0], one small elementwise pass) so that XLA cannot
    hoist it: the per-step launch cost of a scanned product is counted as in the step."""
    ops = [jnp.asarray(rng.standard_normal(a.shape), a.dtype) for a in avals]

    def one(a, b):
        return primitive.bind(a, b, **params)

    if length == 1:
        f = jax.jit(one).lower(*ops).compile()
        return lambda: f(*ops)

    def scanned(a, b):
        def step(prev, _):
            out = one(a + 0 * prev.reshape(-1)[0], b)
            return out, None

        return jax.lax.scan(
            step, jnp.zeros(jax.eval_shape(one, a, b).shape, a.dtype), None, length=length
        )[0]

    f = jax.jit(scanned).lower(*ops).compile()
    return lambda: f(*ops)


def flops(primitive, params, avals) -> int:
    out = jax.eval_shape(lambda a, b: primitive.bind(a, b, **params), *avals).shape
    if primitive.name == "dot_general":
        (contract, _), _ = params["dimension_numbers"]
        return 2 * math.prod(out) * math.prod(avals[0].shape[i] for i in contract)
    spec = params["dimension_numbers"].rhs_spec
    return 2 * math.prod(out) * math.prod(avals[1].shape[i] for i in spec[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", choices=["mlp", "cnn", "resnet", "lstm", "transformer"])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    spec = model_specs()[args.case]
    model = build(spec)
    params, state = _init(model, spec["input"], 0)
    x, y = map(jnp.asarray, batch_of(spec, np.random.default_rng(0)))
    opt = optax.adam(1e-3)
    step_args = (params, state, jax.jit(opt.init)(params), (x, y), jax.random.PRNGKey(0))
    found = products(
        jax.make_jaxpr(make_train_step(model, opt, grad="custom", jit=False))(*step_args)
    )

    rng = np.random.default_rng(0)
    calls = {}
    for key, (_, primitive, params_, avals, length) in found.items():
        calls[key] = timed_alone(primitive, params_, avals, length, rng)
    step = make_train_step(model, opt, grad="custom").lower(*step_args).compile()
    calls["step"] = _chained(step, list(_copy(step_args[:3])), (x, y), step_args[4])
    calls["gemm"], gemm_flops = gemm(2048)

    for call in calls.values():
        jax.block_until_ready(call())
    print("load before", os.getloadavg())
    times = collections.defaultdict(list)
    for _ in range(args.rounds):
        for key, call in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            times[key].append(time.perf_counter() - t0)
    print("load after", os.getloadavg())

    med = {k: statistics.median(v) for k, v in times.items()}
    rate = gemm_flops / med["gemm"]
    alone = total_flops = 0
    rows = []
    for key, (count, primitive, params_, avals, length) in found.items():
        f1 = flops(primitive, params_, avals)
        per_product = med[key] / length  # a scanned call times `length` products
        alone += count * per_product
        total_flops += count * f1
        rows.append(
            (
                count * per_product,
                count,
                primitive.name + (f" (in a scan of {length})" if length > 1 else ""),
                [a.shape for a in avals],
                f1 / per_product / rate,
            )
        )
    print(
        f"{args.case}: step {med['step'] * 1e3:.1f} ms; reference matmul {rate / 1e9:.0f} "
        f"GFLOP/s; products alone {alone * 1e3:.1f} ms = {alone / med['step']:.0%} of the "
        f"step; their {total_flops / 1e9:.2f} GFLOP alone at {total_flops / alone / rate:.0%} "
        f"of the reference rate, in the step at {total_flops / med['step'] / rate:.0%}"
    )
    for t, count, name, shapes, share in sorted(rows, key=lambda r: -r[0])[:12]:
        print(f"  {t * 1e3:8.2f} ms  {count:3d} x {name} {shapes}  {share:.0%} of the reference")


if __name__ == "__main__":
    main()
