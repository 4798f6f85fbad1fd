"""Throughput of an epoch run as compiled chunks (what lets Ctrl-C stop within about a step)
against the whole epoch as one compiled program, and how long a Ctrl-C takes to stop each.

    python scripts/bench_epoch_chunks.py                  # MLP on digits and a CNN, 3 rounds
    python scripts/bench_epoch_chunks.py --rounds 5 --only cnn

For each model, the three ways of running an epoch (chunk_seconds None: one program;
0.05: fit's default; 0: one step a chunk) are timed in interleaved rounds (so that a busy machine
slows them alike): each round trains `--epochs` epochs per way (the MLP's tiny epochs: 5x as
many) and keeps the median epoch time (fit's record time_s, compile excluded). Then a real
SIGINT is sent to this process in the middle of epoch 2 and the time until fit stops
(TrainingInterrupted.waited_s) is printed.
Results are in docs/benchmarks.md ("Epochs as compiled chunks").
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WAYS = {"one program": None, "chunks of ~50 ms (default)": 0.05, "one step a chunk": 0.0}


def cases(only, epochs):
    import numpy as np

    from fnn import nn, train

    out = {}
    if only in (None, "mlp"):  # `python -m fnn train`'s default: tiny steps, the worst case
        out["mlp"] = (nn.mlp((256,)), train.load_dataset("digits"), 32, 5 * epochs)
    if only in (None, "cnn"):  # MNIST-sized images: steps of tens of ms on 2 CPU cores
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2048, 28, 28, 1)).astype(np.float32)
        y = rng.integers(0, 10, 2048).astype(np.int32)
        data = train.Dataset("synthetic", x, y, x[:256], y[:256], x[:256], y[:256], 10)
        out["cnn"] = (nn.cnn((32, 64)), data, 64, epochs)
    return out


def epoch_times(model, data, batch, chunk, epochs):
    from fnn import train

    _, history = train.fit(
        model,
        train.make_optimizer("adam", 1e-3),
        data,
        epochs=epochs,
        batch_size=batch,
        chunk_seconds=chunk,
    )
    return [r["time_s"] for r in history[1:]]  # the first epoch pays for the warm-up


def ctrl_c(model, data, batch, chunk):
    """(seconds from sending a real SIGINT (halfway into epoch 2, at least 0.3 s into it) to fit
    raising TrainingInterrupted, fit's own waited_s (from when Python ran its handler), the step
    of the epoch it stopped at (0: at the end of an epoch))."""
    from fnn import train

    sent = []

    def send():
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)

    class Send(train.Hook):
        def on_epoch_start(self, ts, n_steps):
            if ts.epoch == 1:
                threading.Timer(max(0.3, self.half), send).start()

        def on_epoch_end(self, ts, record):
            self.half = record["time_s"] / 2

    try:  # epochs enough to still be training when the signal comes
        train.fit(
            model,
            train.make_optimizer("adam", 1e-3),
            data,
            epochs=10**6,
            batch_size=batch,
            chunk_seconds=chunk,
            hooks=[Send()],
        )
    except train.TrainingInterrupted as e:
        return time.perf_counter() - sent[0], e.waited_s, e.state.position
    raise AssertionError("not interrupted")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=4, help="per round and way (the MLP: 5x)")
    p.add_argument("--only", choices=["mlp", "cnn"])
    args = p.parse_args()
    import fnn  # noqa: F401  (importing fnn applies its CPU settings before JAX starts)
    import jax

    print(
        f"JAX {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}; load average "
        f"{os.getloadavg()[0]:.1f} at the start"
    )
    for name, (model, data, batch, epochs) in cases(args.only, args.epochs).items():
        steps = len(data.x_train) // batch
        times = {w: [] for w in WAYS}
        for r in range(args.rounds):
            for way, chunk in WAYS.items():
                times[way].append(statistics.median(epoch_times(model, data, batch, chunk, epochs)))
            print(
                f"  {name} round {r + 1}: "
                + ", ".join(f"{w} {v[-1] * 1000:.1f} ms" for w, v in times.items()),
                flush=True,
            )
        base = statistics.median(times["one program"])
        print(f"\n{name}: {steps} steps of {batch} per epoch")
        print(
            f"  {'way':28s} {'epoch (median)':>15s} {'per step':>10s} {'vs one program':>15s}"
            f" {'Ctrl-C to stop':>15s}"
        )
        for way, chunk in WAYS.items():
            t = statistics.median(times[way])
            took, waited, at = ctrl_c(model, data, batch, chunk)
            stop = f"{took * 1000:.1f} ms"
            print(
                f"  {way:28s} {t * 1000:12.1f} ms {t / steps * 1000:7.3f} ms "
                f"{base / t:14.3f}x {stop:>15s}   (rounds: "
                f"{', '.join(f'{v * 1000:.1f}' for v in times[way])} ms; stopped at step {at}; "
                f"fit's waited_s {waited * 1000:.1f} ms)"
            )
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
