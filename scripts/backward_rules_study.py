"""The classic comparison of backward rules, on the bundled digits (or MNIST when you have it).

    python scripts/backward_rules_study.py                       # digits, 40 epochs each
    python scripts/backward_rules_study.py --dataset mnist --data-dir ~/data/mnist --epochs 10
    python scripts/backward_rules_study.py --out study/          # where the PNGs and table go

Four networks of the same size trained with the same budget (epochs, batch size, Adam and its
learning rate), each differentiated by fnn.grad with different rules (fnn.rulebook):

  backprop            a ReLU MLP, exact gradients
  feedback alignment  the same MLP; each dense layer sends its error down through a fixed random
                      matrix B instead of its weights (Lillicrap et al. 2016). B is drawn from an
                      explicit key and kept beside the parameters, never trained
  binarized (STE)     hidden activations sign(x) in {-1, 1}, trained through clipped
                      straight-through estimators (Hubara et al. 2016)
  spiking (surrogate) leaky integrate-and-fire neurons over T time steps (a lax.scan), spikes by
                      fnn.ops.spike, trained with the fast-sigmoid surrogate (Zenke & Ganguli 2018)

It writes accuracy.png (test accuracy per epoch, one line per network), alignment.png (the
angle between feedback alignment's weight updates and the exact gradient, per layer, per epoch:
the quantity the feedback-alignment literature plots) and results.md (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build(kind: str, sizes: tuple, steps: int):
    """(loss, predict, init) of one network: `loss(params, x, y)` in plain JAX + fnn gates."""
    import jax
    import jax.numpy as jnp

    from fnn import ops

    def dense(params, i, h):
        with jax.named_scope(str(i)):  # the layer's name, as rules and checkpoints call it
            return ops.affine(h, params[str(i)]["w"], params[str(i)]["b"])

    if kind == "spiking":

        def logits(params, x):
            x = jnp.reshape(x, (x.shape[0], -1))

            def step(v, _):  # leaky integrate-and-fire, one layer of hidden neurons
                v1, v2 = v
                v1 = 0.9 * v1 + dense(params, 0, x)
                s1 = ops.spike(v1, threshold=1.0)
                v1 = v1 - s1  # soft reset
                v2 = 0.9 * v2 + dense(params, 1, s1)
                return (v1, v2), v2

            n = x.shape[0]
            zeros = (jnp.zeros((n, sizes[1])), jnp.zeros((n, sizes[2])))
            _, outs = jax.lax.scan(step, zeros, None, length=steps)
            return jnp.mean(outs, axis=0)  # the output layer's mean membrane potential
    else:
        activation = {"backprop": ops.relu, "feedback": ops.relu, "binarized": ops.sign}[kind]

        def logits(params, x):
            h = x
            for i in range(len(sizes) - 2):
                h = activation(dense(params, i, h))
            return dense(params, len(sizes) - 2, h)

    def loss(params, x, y):
        return ops.softmax_cross_entropy(logits(params, x), y)

    def init(key):
        params = {}
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            key, sub = jax.random.split(key)
            scale = jnp.sqrt(2.0 / a) * (1.5 if kind == "spiking" else 1.0)
            params[str(i)] = {"w": scale * jax.random.normal(sub, (a, b)), "b": jnp.zeros(b)}
        return params

    return loss, logits, init


def rules_for(kind: str, params, key):
    """The rule overrides of each network (None: exact gradients)."""
    from fnn import rulebook

    if kind == "feedback":  # one fixed random B per layer (the output layer's too: its own
        #                     input gradient is never used, so its weights learn exactly)
        return {"affine": rulebook.feedback_alignment(rulebook.feedback_matrices(key, params))}
    if kind == "binarized":
        return {"sign": rulebook.clipped_straight_through}
    if kind == "spiking":
        return {"spike": rulebook.fast_sigmoid(5.0)}
    return None


def layer_angles(g, exact) -> dict:
    """Angle in degrees between two gradients of each layer's weights."""
    import numpy as np

    out = {}
    for k in g:
        a, b = np.ravel(np.asarray(g[k]["w"])), np.ravel(np.asarray(exact[k]["w"]))
        den = np.linalg.norm(a) * np.linalg.norm(b)
        out[k] = float(np.degrees(np.arccos(np.clip(a @ b / den, -1, 1)))) if den > 0 else None
    return out


def train_one(kind, data, *, epochs, batch, lr, seed, steps, hidden):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import fnn

    n_in = int(np.prod(data.input_shape))
    sizes = (n_in, hidden, 10) if kind == "spiking" else (n_in, hidden, hidden, 10)
    loss, logits, init = build(kind, sizes, steps)
    key, fb_key = jax.random.split(jax.random.PRNGKey(seed))
    params = init(key)
    rules = rules_for(kind, params, fb_key)
    optimizer = optax.adam(lr)
    opt_state = optimizer.init(params)
    value_and_grad = fnn.value_and_grad(loss, rules=rules)

    @jax.jit
    def step(params, opt_state, x, y):
        value, grads = value_and_grad(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    @jax.jit
    def accuracy(params, x, y):
        return jnp.mean(jnp.argmax(logits(params, x), -1) == y)

    compare = (
        jax.jit(lambda p, x, y: (fnn.grad(loss, rules=rules)(p, x, y), jax.grad(loss)(p, x, y)))
        if kind == "feedback"
        else None
    )
    x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    history, rng = [], np.random.default_rng(seed)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        for i in range(len(order) // batch):
            idx = order[i * batch : (i + 1) * batch]
            params, opt_state, _ = step(params, opt_state, x_train[idx], y_train[idx])
        row = {
            "epoch": epoch + 1,
            "test_acc": float(accuracy(params, data.x_test, data.y_test)),
            "train_acc": float(accuracy(params, x_train, y_train)),
        }
        if compare is not None:
            g, exact = compare(params, x_train[:256], y_train[:256])
            row["angle"] = layer_angles(g, exact)
        history.append(row)
    return history, time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits", choices=("digits", "mnist"))
    parser.add_argument("--data-dir")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--time-steps", type=int, default=8, help="of the spiking network")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="study", help="where the PNGs and results go")
    args = parser.parse_args(argv)

    import fnn  # noqa: F401  (importing fnn applies its CPU settings before JAX starts)
    from fnn import train

    data = train.load_dataset(args.dataset, args.data_dir)
    os.makedirs(args.out, exist_ok=True)
    names = {
        "backprop": "backprop",
        "feedback": "feedback alignment",
        "binarized": "binarized (clipped STE)",
        "spiking": "spiking (fast-sigmoid surrogate)",
    }
    results = {}
    for kind in names:
        history, seconds = train_one(
            kind,
            data,
            epochs=args.epochs,
            batch=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            steps=args.time_steps,
            hidden=args.hidden,
        )
        results[kind] = {"history": history, "seconds": seconds}
        print(
            f"{names[kind]:34s} test accuracy {history[-1]['test_acc']:.4f} "
            f"(best {max(r['test_acc'] for r in history):.4f}) in {seconds:.1f} s"
        )
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    _plots(results, names, args.out)
    table = _table(results, names, args)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table)
    print(table)
    return 0


def _plots(results, names, out):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for kind, r in results.items():
        ax.plot(
            [h["epoch"] for h in r["history"]],
            [h["test_acc"] for h in r["history"]],
            label=names[kind],
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Backward rules, same network size and budget")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "accuracy.png"), dpi=100)

    fa = results["feedback"]["history"]
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for layer in fa[0]["angle"]:
        ax.plot(
            [h["epoch"] for h in fa],
            [h["angle"][layer] for h in fa],
            label=f"layer {layer}"
            + (" (output: exact)" if layer == str(len(fa[0]["angle"]) - 1) else ""),
        )
    ax.axhline(90, color="gray", ls="--", lw=1, label="90° (orthogonal)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("angle to the exact gradient (degrees)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Feedback alignment: weight gradient vs the exact gradient")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "alignment.png"), dpi=100)


def _table(results, names, args) -> str:
    lines = [
        f"Digits study: {args.epochs} epochs, batch {args.batch_size}, Adam lr {args.lr}, "
        f"hidden {args.hidden}, seed {args.seed}"
        if args.dataset == "digits"
        else f"{args.dataset} study: {args.epochs} epochs",
        "",
        "| network | final test acc | best test acc | final train acc | time |",
        "|---|---|---|---|---|",
    ]
    for kind, r in results.items():
        h = r["history"]
        lines.append(
            f"| {names[kind]} | {h[-1]['test_acc']:.4f} | "
            f"{max(x['test_acc'] for x in h):.4f} | {h[-1]['train_acc']:.4f} | "
            f"{r['seconds']:.1f} s |"
        )
    fa = results["feedback"]["history"]
    angles = ", ".join(
        f"layer {k}: {fa[0]['angle'][k]:.0f}° -> {fa[-1]['angle'][k]:.0f}°" for k in fa[0]["angle"]
    )
    lines += [
        "",
        f"Feedback alignment, angle between its weight gradients and the exact ones "
        f"(first epoch -> last): {angles}.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
