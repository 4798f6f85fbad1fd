"""Benchmarks: fnn's hand-written gradients against jax.grad, under jit, on JAX's first device.

    python -m fnn bench                          # every case, tables on stdout
    python -m fnn bench --only cnn,gates --reps 100 --json out.json --markdown out.md
    python -m fnn bench --quick                  # tiny sizes: a smoke run of every case

Protocol: each function is compiled first (trace + compile, timed), warmed up, then the
functions compared are called alternately in one process (drift in the machine's speed hits
them alike) and the median of --reps calls is reported, with its quartiles and extremes. A
reference in another library (PyTorch) runs in a process of its own, after fnn's timing of the
same case, with nothing of fnn's process running beside it. The 1-min load average is recorded
before and after each side; a side is timed again (--attempts, 3) while it moves by more than
--load-tolerance (0.5) across it, and the row keeps the steadiest attempt and every attempt's
loads. Benchmarks are never timed tests.

Rows (the JSON holds {"device", "dtype", "reps", "quick", "load", "load_tolerance", "attempts",
"rows", "targets"}), by kind:
    gemm    an (n, n) @ (n, n) matmul: the device's reference FLOP/s
    step    one training step of a model (loss, gradient, optax Adam update: the step that
            `python -m fnn train` runs), grad="custom" (hand-written VJPs) vs grad="builtin"
            (jax.grad of the same forward): jitted time (median, <g>_spread: q1, q3, min, max
            in ms), compile time, eager (un-jitted) time, GFLOP/s of its matmuls and
            convolutions and their share of the gemm's (timed interleaved with the steps),
            XLA's scratch memory and page faults per step, the device's peak memory where the
            backend reports it, load_fnn; and PyTorch's eager step on the same architecture
            where torch can be imported (torch_ms, torch_spread, torch_ratio = fnn / PyTorch,
            torch_matmul_share, load_torch; torch_error says why not). Cases mlp, cnn, resnet,
            digits, and issue 13's language models lstm and transformer (token ids in,
            per-token cross-entropy)
    epoch   a whole epoch of the digits MLP as one compiled lax.scan (fnn.train.make_train_epoch)
    gate    one gate at a realistic size under jit: forward + hand-written VJP vs forward +
            jax.vjp of the same forward (gradients for every float input)

--dtype bfloat16 computes in bf16 with float32 parameters: the loss casts the parameters (with
the astype gate, so their gradients come back in float32) and the inputs to bf16, and the
scores back to float32 for the loss; the gate micro-benchmarks take bf16 inputs.

The package, one concept a file:
    cases.py      what is measured: the models and their sizes, bf16 compute, gate inputs
    timing.py     how: interleaved medians, the gate timer (time_gate, also behind the timing
                  columns of `python -m fnn gradcheck`), FLOPs of a jaxpr, page faults,
                  profiles, the gemm
    steps.py      the step, epoch and gate benchmarks (hand-written vs built-in)
    torch_ref.py  PyTorch's eager step on the same architectures (optional), a script run in a
                  process of its own (it imports neither fnn nor JAX)
    report.py     the targets (issues 5, 13, 25), the table and the Markdown
    plan.py       the whole run (plan, run, finish); its command line and printing are
                  fnn.cli.bench

Layering: fnn.bench builds on fnn.train, fnn.check and below; only fnn.cli imports it.
"""

from fnn.bench.cases import CASES, GRADS, STEP_CASES, build, gate_inputs, in_dtype, model_specs
from fnn.bench.report import markdown, targets
from fnn.bench.plan import run
from fnn.bench.timing import interleaved, matmul_flops, time_gate

__all__ = [
    "CASES",
    "GRADS",
    "STEP_CASES",
    "build",
    "gate_inputs",
    "in_dtype",
    "interleaved",
    "markdown",
    "matmul_flops",
    "model_specs",
    "run",
    "targets",
    "time_gate",
]
