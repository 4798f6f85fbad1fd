"""The recurrent layers' two paths, timed interleaved in one process: the sequence gates
(fnn.ops.recurrent: one input matmul, a scan of the recurrent part, weight gradients as one
matmul each) against the per-step cell gates in a scan (per_step=True, the path before them),
each differentiated by fnn's rules and by jax.grad.

    python scripts/bench_recurrent.py                   # the bench's LSTM LM training step
    python scripts/bench_recurrent.py --kinds lstm,gru,rnn --reps 20
    python scripts/bench_recurrent.py --quick           # tiny sizes, a smoke run

The model is fnn.bench's LSTM language model (Embedding(162, 64) - LSTM(256) - Dense(162) per
position, 64 steps, batch 64; `python -m fnn bench --only lstm`), with the recurrent kind
swapped for --kinds. One training step (loss, gradient, Adam), jitted, parameters donated and
chained, median and min-max of --reps calls; the 1-minute load average before and after.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", default="lstm", help="comma-separated: lstm, gru, rnn")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from fnn import nn
    from fnn.bench.cases import batch_of, model_specs
    from fnn.bench.timing import load_average, spread
    from fnn.train.step import make_train_step

    spec = model_specs(args.quick)["lstm"]
    x, y = map(jnp.asarray, batch_of(spec, np.random.default_rng(0)))
    opt = optax.adam(1e-3)
    print(
        f"{jax.devices()[0]}; batch {spec['batch']}, {spec['input'][0]} steps, embed "
        f"{spec['embed']}, hidden {spec['hidden']}, vocab {spec['vocab']}"
    )
    for kind in args.kinds.split(","):
        fns = {}
        for per_step in (False, True):
            model = nn.serial(
                nn.Embedding(spec["vocab"], spec["embed"]),
                *[nn.Recurrent(kind, h, per_step=per_step) for h in spec["hidden"]],
                nn.Dense(spec["vocab"], init="glorot", flatten=False),
                name=f"{kind}_lm",
            )
            params, state, _ = model.init(jax.random.PRNGKey(0), spec["input"])
            for grad in ("custom", "builtin"):
                step = make_train_step(model, opt, grad=grad)
                carry = [params, state, opt.init(params)]
                carry = [jax.tree_util.tree_map(jnp.copy, c) for c in carry]
                compiled = step.lower(*carry, (x, y), jax.random.PRNGKey(0)).compile()

                def call(compiled=compiled, carry=carry):
                    out = compiled(*carry, (x, y), jax.random.PRNGKey(0))
                    carry[:] = out[:-1]
                    return out[-1]

                path = "cell gates per step" if per_step else "sequence gate"
                fns[f"{kind} {path}, {'fnn.grad' if grad == 'custom' else 'jax.grad'}"] = call
        before = load_average()
        times = spread(fns, args.reps)
        after = load_average()
        base = times[f"{kind} cell gates per step, fnn.grad"]["median"]
        print(f"\n{kind}: 1-min load average {before} before, {after} after")
        for name, t in times.items():
            print(
                f"  {name:44s} median {t['median'] * 1e3:8.2f} ms  (min {t['min'] * 1e3:8.2f}, "
                f"max {t['max'] * 1e3:8.2f})  {t['median'] / base:.3f} of the per-step fnn.grad"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
