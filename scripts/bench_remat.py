"""What rematerialization (remat: activations recomputed in the backward) saves and costs: the
XLA temp memory (memory_analysis, a compile-time figure) and the median step time of a train
step with and without it, for both gradients (fnn's rules, jax.grad).

    python scripts/bench_remat.py                 # the 20-layer MLP and the bench's ResNet
    python scripts/bench_remat.py --reps 10 --only mlp
    python scripts/bench_remat.py --quick         # tiny sizes, a smoke test

Cases: a 20-layer MLP (width 1024, batch 512) and the bench's ResNet (fnn.bench.cases, widths
16-32-64 on 32x32x3, batch 128). The ways: no remat; make_train_step(remat=True) (the model's
top-level layers in runs of about sqrt(n), fnn.train.step.remat_model); the model built with
remat=True (each block checkpointed: the MLP's Dense-ReLU, the ResNet's residual blocks); and,
to show why fnn.runtime.remat_compiler_options exists, that last one compiled without them.
Results are in docs/benchmarks.md ("Rematerialization").
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cases(quick: bool):
    from fnn import nn
    from fnn.bench.cases import model_specs

    depth, width, batch = (6, 32, 16) if quick else (20, 1024, 512)
    r = model_specs(quick)["resnet"]
    return {
        "mlp": (
            f"MLP {depth}x{width}, batch {batch}",
            lambda remat: nn.mlp((width,) * depth, 10, remat=remat),
            (width,),
            batch,
        ),
        "resnet": (
            f"ResNet {'-'.join(map(str, r['widths']))} on "
            f"{'x'.join(map(str, r['input']))}, batch {r['batch']}",
            lambda remat: nn.resnet(r["widths"], 10, remat=remat),
            r["input"],
            r["batch"],
        ),
    }


def measure(build, input_shape, batch, *, reps: int):
    import jax
    import optax

    from fnn.bench.timing import interleaved, temp_mb
    from fnn.runtime import remat_compiler_options
    from fnn.train.step import make_train_step

    ways = {
        "none": (False, False, True),
        "step remat=True (sqrt runs)": (False, True, True),
        "model remat=True (blocks)": (True, False, True),
        "model remat=True, no CPU options": (True, False, False),
    }
    x = jax.random.normal(jax.random.PRNGKey(1), (batch,) + tuple(input_shape))
    y = jax.random.randint(jax.random.PRNGKey(2), (batch,), 0, 10)
    opt = optax.sgd(1e-3)
    rows = []
    for grad in ("custom", "builtin"):
        fns, temps = {}, {}
        for way, (model_remat, step_remat, options) in ways.items():
            model = build(model_remat)
            params, state, _ = model.init(jax.random.PRNGKey(0), input_shape)
            opt_state = opt.init(params)
            step = make_train_step(model, opt, grad=grad, jit=False, remat=step_remat)
            opts = remat_compiler_options() if (model_remat or step_remat) and options else None
            compiled = (
                jax.jit(step, compiler_options=opts)
                .lower(params, state, opt_state, (x, y), jax.random.PRNGKey(3))
                .compile()
            )
            temps[way] = temp_mb(compiled)
            args = (params, state, opt_state, (x, y), jax.random.PRNGKey(3))
            fns[way] = lambda c=compiled, a=args: c(*a)[3]["loss"]
        times = interleaved(fns, reps, warmup=2)
        base = times["none"]
        for way in ways:
            rows.append(
                {
                    "grad": grad,
                    "way": way,
                    "temp_mb": temps[way],
                    "ms": times[way] * 1e3,
                    "time_ratio": times[way] / base,
                }
            )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="timed steps per way (median)")
    parser.add_argument("--only", choices=("mlp", "resnet"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    args = parser.parse_args(argv)
    from fnn.runtime import tune_cpu

    tune_cpu()
    from fnn.bench.timing import load_average, machine

    print(f"machine: {machine()}; load average at start: {load_average()}")
    for name, (label, build, shape, batch) in cases(args.quick).items():
        if args.only not in (None, name):
            continue
        print(f"\n{label}")
        print(f"| grad | remat | XLA temp MiB | step ms (median of {args.reps}) | time vs none |")
        print("|---|---|---:|---:|---:|")
        for r in measure(build, shape, batch, reps=args.reps):
            grad = "fnn" if r["grad"] == "custom" else "jax.grad"
            print(
                f"| {grad} | {r['way']} | {r['temp_mb']:.1f} | {r['ms']:.1f} | "
                f"{r['time_ratio']:.2f} |",
                flush=True,
            )
    print(f"\nload average at end: {load_average()}")


if __name__ == "__main__":
    main()
