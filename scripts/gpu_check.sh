#!/usr/bin/env bash
# fnn on a GPU, in one go: the devices, the bench (training steps and gates, float32 and
# bfloat16), the custom-vs-builtin parity tests and figures, a short default training run
# (hand-written gradients, then jax.grad); the figures are written to docs/gpu.md.
#
#   pip install -e ".[cuda,dev]" && bash scripts/gpu_check.sh      # CUDA 13: ".[cuda13,dev]"
#
# FNN_GPU_REPS (default 20): timed calls per benchmark; FNN_GPU_DOC (default docs/gpu.md):
# where the report goes; FNN_TORCH_PATH: a folder holding a CUDA build of torch (pip install
# --target DIR torch), for the PyTorch CUDA column of the bench (or torch installed: pip
# install -e ".[cuda,dev,torch]"). Without a GPU it stops at once with a message, docs/gpu.md untouched.
# A failing step is recorded in the report as FAILED and the script exits 1 at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
doc="${FNN_GPU_DOC:-docs/gpu.md}"
reps="${FNN_GPU_REPS:-20}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()

echo "== devices"
if ! python - "$work" <<'EOF'
import datetime, os, sys

work = sys.argv[1]
try:
    import jax
    devices = jax.devices()
    backend = jax.default_backend()
except Exception as e:  # e.g. JAX_PLATFORMS=cuda and no usable GPU
    why = (str(e).strip().splitlines() or ["(no message)"])[0]
    print(f"gpu_check: JAX could not start (JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS', '')!r}):"
          f" {type(e).__name__}: {why}", file=sys.stderr)
    devices, backend = [], "none"
if backend != "gpu":
    print(f"gpu_check: no GPU: JAX runs on {backend} ({', '.join(map(str, devices)) or 'no devices'}).\n"
          "  Needs an NVIDIA GPU with its driver and JAX's CUDA wheels:\n"
          '    pip install -e ".[cuda,dev]"      (CUDA 13: ".[cuda13,dev]")\n'
          "  then run bash scripts/gpu_check.sh again. docs/gpu.md is left as it is.",
          file=sys.stderr)
    sys.exit(2)
import jax.extend.backend

version = jax.extend.backend.get_backend().platform_version
platform = "rocm" if "rocm" in version.lower() else "cuda"
import jaxlib
lines = [f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
         f"- jax {jax.__version__}, jaxlib {jaxlib.__version__}, backend {backend} ({platform}: "
         f"{version.strip()})",
         *[f"- device {d.id}: {getattr(d, 'device_kind', d)}" for d in devices],
         f"- host: {os.cpu_count()} CPU cores"]
print("\n".join(lines))
with open(os.path.join(work, "devices.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
with open(os.path.join(work, "platform"), "w") as f:
    f.write(platform)
EOF
then
  exit 2
fi

for dtype in float32 bfloat16; do
  echo "== bench, $dtype compute"
  # PyTorch's step on the same GPU, in its own process, where torch (a CUDA build) is
  # importable: installed, or in the folder FNN_TORCH_PATH names; else the table says why not
  if ! python -m fnn bench --only mlp,cnn,resnet,digits,lstm,transformer,gates --dtype "$dtype" \
      --reps "$reps" --no-eager ${FNN_TORCH_PATH:+--torch-path "$FNN_TORCH_PATH"} \
      --markdown "$work/bench-$dtype.md"; then
    failed+=("bench $dtype"); echo "FAILED (see the output above)" > "$work/bench-$dtype.md"
  fi
done

echo "== parity: hand-written gradients vs jax.grad over 100 training steps, on the GPU"
# float32 matmuls at full precision: NVIDIA GPUs may otherwise round them to TF32, and the two
# gradients, computed in different orders, then differ by that rounding, not by their maths
if JAX_DEFAULT_MATMUL_PRECISION=highest FNN_TEST_PLATFORM="$(cat "$work/platform")" \
    python -m pytest -p no:cacheprovider -n 0 -q tests/test_train.py tests/test_sequence.py \
    -k custom_and_builtin_losses_agree 2>&1 | tee "$work/parity-tests.txt"; then :
else failed+=("parity tests"); fi
if ! python - <<'EOF' | tee "$work/parity.md"
# hand-written gradients vs jax.grad on this device: the gradient of one batch (the largest
# relative difference over the parameter leaves, each against its own largest entry) and the
# losses of the same 100 Adam steps taken with each, with float32 matmuls at JAX's default
# precision here and at full ("highest") precision
import jax, jax.numpy as jnp, numpy as np, optax
from fnn import nn, train
from fnn.train.step import make_loss_fn, value_and_grad

data = train.load_dataset("digits")
tokens = np.random.default_rng(0).integers(0, 32, (64, 33))
cases = {"mlp (digits, 256 hidden)": (nn.mlp((256,)), data.x_train[:256], data.y_train[:256]),
         "lstm (64 hidden, 32 steps)": (nn.rnn_lm("lstm", 32, hidden=(64,), embed=16),
                                        tokens[:, :-1], tokens[:, 1:]),
         "transformer (width 64, 2 blocks, 32 steps)": (
             nn.transformer_lm(32, width=64, depth=2, heads=4), tokens[:, :-1], tokens[:, 1:])}


def gradient(model, ts, x, y, grad):
    vg = value_and_grad(make_loss_fn(model), grad)
    return jax.jit(lambda p: vg(p, ts.state, x[:32], y[:32], jax.random.PRNGKey(0))[1])(
        ts.params)


def losses(model, ts, opt, x, y, grad):
    step = train.make_train_step(model, opt, grad=grad, jit=False)

    def run(carry, i):
        idx = (jnp.arange(32) + 32 * i) % x.shape[0]
        p, s, o, m = step(*carry, (x[idx], y[idx]), jax.random.PRNGKey(0))
        return (p, s, o), m["loss"]

    _, out = jax.jit(lambda c: jax.lax.scan(run, c, jnp.arange(100)))(
        (ts.params, ts.state, ts.opt_state))
    return np.asarray(out)


def rel(a, b):
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v))) / np.max(np.abs(v)))
               for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


print("| model | precision | gradient, 1 batch | losses, 100 steps (max rel.) | loss at step 1 "
      "-> 100 |")
print("|---|---|---|---|---|")
for name, (model, x, y) in cases.items():
    x, y, opt = jnp.asarray(x), jnp.asarray(y), optax.adam(1e-3)
    for precision in ("default", "highest"):
        with jax.default_matmul_precision(None if precision == "default" else precision):
            ts = train.init_train_state(model, opt, x.shape[1:], 0)
            g = rel(gradient(model, ts, x, y, "custom"), gradient(model, ts, x, y, "builtin"))
            a = losses(model, ts, opt, x, y, "custom")
            b = losses(model, ts, opt, x, y, "builtin")
        print(f"| {name} | {precision} | {g:.1e} | {np.max(np.abs(a - b) / np.abs(b)):.1e} | "
              f"{a[0]:.3f} -> {a[-1]:.3f} |")
EOF
then failed+=("parity figures"); fi

for grad in custom builtin; do
  echo "== training: the default run (digits MLP), 5 epochs, grad=$grad"
  if ! python -m fnn train --epochs 5 --grad "$grad" --no-progress --out "$work/run-$grad" \
      2>&1 | tee "$work/train-$grad.txt"; then failed+=("train $grad"); fi
done

{
  echo "# fnn on a GPU"
  echo
  echo "Written by \`bash scripts/gpu_check.sh\` (after \`pip install -e \".[cuda,dev]\"\`)."
  [ ${#failed[@]} -eq 0 ] || echo "**FAILED: ${failed[*]}** (the outputs are below)."
  echo
  cat "$work/devices.md"
  for dtype in float32 bfloat16; do
    echo
    echo "## Bench, $dtype compute (\`python -m fnn bench --only mlp,cnn,resnet,digits,lstm,transformer,gates --dtype $dtype --reps $reps --no-eager${FNN_TORCH_PATH:+ --torch-path <dir>}\`)"
    echo
    cat "$work/bench-$dtype.md"
  done
  echo
  echo "## Parity: hand-written gradients vs jax.grad, 100 training steps on the GPU"
  echo
  echo "\`JAX_DEFAULT_MATMUL_PRECISION=highest FNN_TEST_PLATFORM=$(cat "$work/platform") python -m pytest tests/test_train.py tests/test_sequence.py -k custom_and_builtin_losses_agree\` (losses within rtol 1e-4):"
  echo
  echo '```'
  tail -n 3 "$work/parity-tests.txt"
  echo '```'
  echo
  cat "$work/parity.md"
  for grad in custom builtin; do
    echo
    echo "## Training: \`python -m fnn train --epochs 5 --grad $grad\`"
    echo
    echo '```'
    grep -E "^(Dataset|epoch|test accuracy)" "$work/train-$grad.txt" || cat "$work/train-$grad.txt"
    echo '```'
  done
} > "$doc"
echo "== wrote $doc"
if [ ${#failed[@]} -ne 0 ]; then
  echo "gpu_check: FAILED: ${failed[*]}" >&2
  exit 1
fi
