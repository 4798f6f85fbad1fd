"""Issue 25, item 4: the transformer's attention and MLP blocks as shares of the matmul rate.

Each block of the bench's transformer (width 256, 4 heads, MLP 1024, context 128, batch 32) is
differentiated alone, the gradient of sum(block(x) * g) with respect to its parameters and x,
by fnn.grad and by jax.grad, each jitted; both are timed interleaved with the 2048^3 reference
matmul. FLOPs are counted as the bench counts them (`fnn.bench.timing.matmul_flops` of
jax.grad's jaxpr: 2 x output size x contraction size of every product).

    python scripts/transformer_blocks.py            # --reps 15 (default)

The blocks: "attention" = LayerNorm - MultiHeadAttention(4, causal) (the q/k/v and output
projections and the attention gate); "mlp" = LayerNorm - Dense(1024) - gelu - Dense(256).
Prints the 1-minute load average before and after. Results: docs/benchmarks.md (issue 25).
"""

import fnn  # noqa: F401  (first: fnn.tune_cpu() on import, as in `python -m fnn bench`)

import argparse
import os
import statistics

import jax
import jax.numpy as jnp

from fnn.bench.timing import gemm, interleaved_times, matmul_flops
from fnn.nn.sequence import TransformerBlock

BATCH, T, WIDTH, HEADS = 32, 128, 256, 4


def blocks():
    """The main branches of the bench model's TransformerBlock's two residuals, as built there:
    {'attention': its attend branch, 'mlp': its mlp branch}."""
    residuals = dict(TransformerBlock(WIDTH, HEADS).children)
    return {
        "attention": dict(residuals["0_attention"].children)["main"],
        "mlp": dict(residuals["1_feedforward"].children)["main"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()

    x = jax.random.normal(jax.random.PRNGKey(0), (BATCH, T, WIDTH))
    g = jax.random.normal(jax.random.PRNGKey(1), (BATCH, T, WIDTH))
    calls, flops = {}, {}
    calls["gemm"], gemm_flops = gemm(2048)
    for name, layer in blocks().items():
        params, state, _ = layer.init(jax.random.PRNGKey(2), (T, WIDTH))

        def loss(p, x, layer=layer, state=state):
            return jnp.sum(layer.apply(p, state, x)[0] * g)

        flops[name] = matmul_flops(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(params, x))
        for grad_name, grad in (("fnn.grad", fnn.grad), ("jax.grad", jax.grad)):
            step = jax.jit(grad(loss, argnums=(0, 1))).lower(params, x).compile()
            calls[(name, grad_name)] = lambda step=step, p=params: step(p, x)

    print("load before", os.getloadavg())
    times = interleaved_times(calls, reps=args.reps)
    print("load after", os.getloadavg())
    rate = gemm_flops / statistics.median(times["gemm"])
    print(f"reference matmul 2048^3: {rate / 1e9:.0f} GFLOP/s")
    for key, t in times.items():
        if key != "gemm":
            name, grad_name = key
            ms = statistics.median(t) * 1e3
            share = flops[name] / (ms / 1e3) / rate
            print(
                f"{name} block, {grad_name}: {ms:.2f} ms for {flops[name] / 1e9:.2f} GFLOP, "
                f"{share:.0%} of the matmul rate"
            )


if __name__ == "__main__":
    main()
