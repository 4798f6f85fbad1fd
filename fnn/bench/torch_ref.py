"""PyTorch's eager training step on the same architectures (torch: an optional extra, never
a dependency of fnn), timed in a process of its own, on the CPU or on a CUDA GPU.

`python fnn/bench/torch_ref.py REQUEST` (what fnn.bench runs, after fnn's own timing of the
same case, in a fresh interpreter) reads a JSON request {"spec", "dtype", "reps", "seed"} and an
optional "device" ("cpu", the default, or "cuda": what fnn.bench asks for when JAX runs on an
NVIDIA GPU; each call is then followed by torch.cuda.synchronize(), as fnn's by
block_until_ready) and prints one JSON line: the step's times at each thread count tried, the median and quartiles of
the faster, torch's version, and the 1-minute load average before and after; or {"error"} when
torch cannot be imported. This file imports nothing of fnn, nor JAX: the reference process holds
no XLA thread pool and no JAX buffers beside PyTorch's.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time

REQUEST_KEYS = ("spec", "dtype", "reps", "seed")
DEVICES = ("cpu", "cuda")


def time_torch(step, reps: int, warmup: int = 3, device: str = "cpu") -> dict:
    """PyTorch's step at its faster thread count (all cores or one) and the times at each:
    {"threads", "times_ms" (every call at that count), "ms_by_threads" (median at each)}.

    On a loaded machine its multi-threaded step can be far slower than its single-threaded
    one, so both are tried and the faster one is reported. On a GPU (`device` "cuda") only
    PyTorch's default thread count is timed (the host threads only launch kernels).
    """
    import torch

    default = torch.get_num_threads()
    times = {}
    for threads in sorted({default, 1} if device == "cpu" else {default}, reverse=True):
        torch.set_num_threads(threads)
        for _ in range(warmup):
            step()
        calls = []
        for _ in range(reps):
            t0 = time.perf_counter()
            step()
            calls.append((time.perf_counter() - t0) * 1e3)
        times[threads] = calls
    torch.set_num_threads(default)
    best = min(times, key=lambda t: statistics.median(times[t]))
    return {
        "threads": best,
        "times_ms": times[best],
        "ms_by_threads": {str(t): statistics.median(v) for t, v in times.items()},
    }


def torch_step(
    spec: dict, dtype: str = "float32", seed: int = 0, device: str = "cpu"
) -> dict | None:
    """{'step': zero-argument eager training step on `device` ("cpu" or "cuda"), 'version'},
    or None without torch. Same architecture, batch and optimizer (Adam); bf16 via
    torch.autocast. On "cuda" the step returns after torch.cuda.synchronize()."""
    try:
        import torch
    except ImportError:
        return None
    from torch import nn as tnn

    if device not in DEVICES:
        raise ValueError(f"torch_step: device must be one of {DEVICES}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"torch_step: device 'cuda' asked for, but this torch "
            f"({torch.__version__}) sees no CUDA GPU (a CPU-only build, or no "
            "driver)"
        )
    torch.manual_seed(seed)
    sequence = spec["kind"] in ("lstm", "transformer")
    model = _sequence_model(spec, torch, tnn) if sequence else _torch_model(spec, tnn)
    if sequence:  # token ids and next-token labels, (batch, T)
        x = torch.randint(0, spec["vocab"], (spec["batch"], *spec["input"]))
        y = torch.randint(0, spec["vocab"], (spec["batch"], *spec["input"]))
    elif len(spec["input"]) == 3:  # PyTorch's native layout NCHW
        h, w, c = spec["input"]
        x = torch.randn(spec["batch"], c, h, w)
        y = torch.randint(0, 10, (spec["batch"],))
    else:
        x = torch.randn(spec["batch"], *spec["input"])
        y = torch.randint(0, 10, (spec["batch"],))
    model, x, y = model.to(device), x.to(device), y.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    low = str(dtype) != "float32"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=low):
            scores = model(x).float()
            loss = torch.nn.functional.cross_entropy(
                scores.reshape(-1, scores.shape[-1]), y.reshape(-1)
            )
        loss.backward()
        opt.step()  # synchronous on the CPU; on a GPU, wait for the step's kernels
        if device == "cuda":
            torch.cuda.synchronize()

    return {"step": step, "version": torch.__version__}


def measure(request: dict) -> dict:
    """The reference process's answer to a request (see the module docstring)."""
    missing = [k for k in REQUEST_KEYS if k not in request]
    if missing:
        return {"error": f"the request lacks {', '.join(missing)}"}
    device = request.get("device", "cpu")
    if device not in DEVICES:
        return {"error": f"the request's device must be one of {DEVICES}, got {device!r}"}
    try:
        import torch  # noqa: F401
    except ImportError as e:
        return {
            "error": f"torch is not importable ({type(e).__name__}: {e}); pip install "
            "'fnn[torch]', or name the folder holding it with --torch-path"
        }
    try:
        made = torch_step(request["spec"], request["dtype"], request["seed"], device)
    except Exception as e:  # noqa: BLE001 - a reference that fails is reported, not fatal
        return {"error": f"PyTorch's step failed: {type(e).__name__}: {e}"}
    before = _load()
    timed = time_torch(made["step"], request["reps"], device=device)
    return {"version": made["version"], "device": device, "load": [before, _load()], **timed}


def _load():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _torch_model(spec, tnn):
    def conv(c_in, c_out, k=3, stride=1):
        return tnn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2)

    if spec["kind"] == "mlp":
        sizes = (math.prod(spec["input"]), *spec["hidden"])
        layers = [tnn.Flatten()]
        for m, n in zip(sizes[:-1], sizes[1:]):
            layers += [tnn.Linear(m, n), tnn.ReLU()]
        return tnn.Sequential(*layers, tnn.Linear(sizes[-1], 10))
    h, w, c = spec["input"]
    if spec["kind"] == "cnn":
        layers = []
        for ch in spec["channels"]:
            layers += [conv(c, ch), tnn.ReLU(), tnn.MaxPool2d(2)]
            c, h, w = ch, h // 2, w // 2
        return tnn.Sequential(*layers, tnn.Flatten(), tnn.Linear(c * h * w, 10))

    class Block(tnn.Module):  # fnn.nn.ResidualBlock
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.main = tnn.Sequential(
                conv(c_in, c_out, stride=stride),
                tnn.BatchNorm2d(c_out),
                tnn.ReLU(),
                conv(c_out, c_out),
                tnn.BatchNorm2d(c_out),
            )
            self.short = (
                tnn.Sequential(conv(c_in, c_out, 1, stride), tnn.BatchNorm2d(c_out))
                if stride != 1 or c_in != c_out
                else tnn.Identity()
            )

        def forward(self, x):
            return tnn.functional.relu(self.main(x) + self.short(x))

    widths = spec["widths"]
    layers = [conv(c, widths[0]), tnn.BatchNorm2d(widths[0]), tnn.ReLU()]
    for i, ch in enumerate(widths):
        layers.append(Block(widths[max(i - 1, 0)], ch, 2 if i else 1))
    return tnn.Sequential(
        *layers, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(widths[-1], 10)
    )


def _sequence_model(spec, torch, tnn):
    """The language models of fnn.bench.cases from torch.nn parts: Embedding - LSTM
    (batch_first) - Linear per position; or Embedding + a learned (T, width) position Parameter,
    pre-norm TransformerEncoderLayers (norm_first, exact gelu, no dropout, a causal mask), a
    final LayerNorm and a Linear (fnn.nn.transformer_lm's layout). PyTorch's LSTM has two bias
    vectors (b_ih, b_hh) where fnn's has one: 4 * hidden more parameters, the same FLOPs."""
    v = spec["vocab"]
    if spec["kind"] == "lstm":

        class LSTMLM(tnn.Module):
            def __init__(self):
                super().__init__()
                self.embed = tnn.Embedding(v, spec["embed"])
                sizes = (spec["embed"], *spec["hidden"])
                self.rnns = tnn.ModuleList(
                    tnn.LSTM(m, n, batch_first=True) for m, n in zip(sizes[:-1], sizes[1:])
                )
                self.out = tnn.Linear(sizes[-1], v)

            def forward(self, x):
                h = self.embed(x)
                for rnn in self.rnns:
                    h = rnn(h)[0]
                return self.out(h)

        return LSTMLM()

    t, w = spec["input"][0], spec["width"]

    class TransformerLM(tnn.Module):
        def __init__(self):
            super().__init__()
            self.embed = tnn.Embedding(v, w)
            self.pos = tnn.Parameter(0.02 * torch.randn(t, w))
            self.blocks = tnn.ModuleList(
                tnn.TransformerEncoderLayer(
                    w,
                    spec["heads"],
                    dim_feedforward=4 * w,
                    dropout=0.0,
                    activation="gelu",
                    batch_first=True,
                    norm_first=True,
                )
                for _ in range(spec["depth"])
            )
            self.norm = tnn.LayerNorm(w)
            self.out = tnn.Linear(w, v)
            self.register_buffer("mask", tnn.Transformer.generate_square_subsequent_mask(t))

        def forward(self, x):
            h = self.embed(x) + self.pos[: x.shape[1]]
            for block in self.blocks:
                h = block(h, src_mask=self.mask, is_causal=True)
            return self.out(self.norm(h))

    return TransformerLM()


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
