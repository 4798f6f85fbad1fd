"""`python -m fnn train`: train a model into a run directory (fnn.train.train_run), printing
its progress; the options are TrainConfig's fields."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import jax

from fnn.nn import ACTIVATIONS, INITIALIZERS, MODELS
from fnn.train.data import DATASETS
from fnn.train.diagnostics import EVERY as DIAGNOSTICS_EVERY
from fnn.train.optim import OPTIMIZERS, SCHEDULES
from fnn.train.run import TrainConfig, read_config, train_run, with_defaults
from fnn.train.step import GRADS, LOSSES


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def _nonneg_float(s: str) -> float:
    v = float(s)
    if not 0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {s}")
    return v


def _int_tuple(s: str) -> tuple:
    try:
        v = tuple(int(p) for p in s.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, e.g. 256,128; "
                                         f"got {s!r}") from None
    if any(n < 1 for n in v):
        raise argparse.ArgumentTypeError(f"widths must be positive, got {s!r}")
    return v


RESUME_MAY_CHANGE = ("epochs", "data_dir")


HELP = "train a model and save its run directory"
DESCRIPTION = ("Train a model. With no options: an MLP on the bundled digits dataset with "
               "hand-written gradients (>= 97%% test accuracy in well under a minute).")


def add_arguments(p) -> None:
    d = TrainConfig()
    a = p.add_argument
    a("--model", choices=sorted(MODELS), help=f"network (default {d.model}; rnn, lstm, gru and "
      "transformer are language models and train on --dataset text)")
    a("--dataset", choices=DATASETS, help=f"dataset (default {d.dataset}, or text for a "
      "language model)")
    a("--data-dir", metavar="D", help="directory holding the mnist/fashion-mnist/cifar10 files; "
      "for text, a text file or folder (default: the Python standard library's modules)")
    a("--grad", choices=GRADS, help="custom: fnn's hand-written gradients; builtin: jax.grad "
      f"(default {d.grad})")
    a("--optimizer", choices=OPTIMIZERS, help=f"(default {d.optimizer})")
    a("--lr", type=_nonneg_float, help=f"learning rate (default {d.lr})")
    a("--schedule", choices=SCHEDULES, help=f"learning-rate schedule (default {d.schedule})")
    a("--epochs", type=_positive_int, help=f"(default {d.epochs})")
    a("--batch-size", type=_positive_int, help=f"(default {d.batch_size})")
    a("--seed", type=int, help=f"seed of init, shuffling and dropout (default {d.seed})")
    a("--weight-decay", type=_nonneg_float, help="weight decay of kernels (default 0)")
    a("--clip", type=_nonneg_float, help="clip gradients to this global norm (default: off)")
    a("--l2", type=_nonneg_float, help="the lecture's L2 penalty l2*sum(W**2) in the loss")
    a("--loss", choices=sorted(LOSSES), help=f"(default {d.loss})")
    a("--label-smoothing", type=_nonneg_float, metavar="E", help="cross-entropy against "
      "(1 - E) one-hot + E / C targets (default 0)")
    a("--val-fraction", type=_nonneg_float, help=f"of the training set (default {d.val_fraction})")
    a("--hidden", type=_int_tuple, help="MLP hidden widths, or RNN/LSTM/GRU layer widths, "
      "e.g. 256,128 (default "
      f"{','.join(map(str, d.hidden))})")
    a("--channels", type=_int_tuple, help="CNN channels / ResNet stage widths, e.g. 32,64")
    a("--activation", choices=sorted(ACTIVATIONS), help=f"(default {d.activation})")
    a("--init", choices=sorted(set(INITIALIZERS) - {"zeros", "ones"}),
      help=f"weight initializer (default {d.init})")
    a("--dropout", type=_nonneg_float, help="dropout rate of MLP/CNN hidden layers (default 0)")
    a("--limit", type=_positive_int, help="use only the first N train and test examples")
    a("--context", type=_positive_int, help=f"text: bytes per training window (default "
      f"{d.context})")
    a("--width", type=_positive_int, help=f"transformer width (default {d.width})")
    a("--depth", type=_positive_int, help=f"transformer blocks (default {d.depth})")
    a("--heads", type=_positive_int, help=f"transformer attention heads (default {d.heads})")
    a("--out", metavar="RUN_DIR", help="run directory (default runs/<model>-<dataset>-<time>)")
    a("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint "
      "(its config is kept; only --epochs and --data-dir may be changed)")
    a("--rule", action="append", metavar="GATE=RULE", dest="rules",
      help="train with a backward-rule override, e.g. relu=straight_through, "
      "spike=fast_sigmoid:slope=25, affine=feedback_alignment, affine@3_dense=clip_backward:"
      "max_norm=1 (repeatable; kept by --resume; see fnn/train/rules.py)")
    a("--no-progress", action="store_true", help="no progress bars")
    a("--check-nans", action="store_true", help="on a NaN/inf loss, replay the step eagerly "
      "under fnn.debug_nans and name the gate (forward or VJP) that made it; exit 1")
    a("--devices", type=_positive_int, metavar="N", help="data parallel: split each batch "
      "across N devices (the batch size must be divisible by N), parameters replicated")
    a("--diagnostics", action="store_true", help="gradient health per layer: gradient norm, "
      "update/parameter ratio, dead ReLUs, saturated sigmoid/tanh, custom vs built-in gradient; "
      "to RUN_DIR/diagnostics.jsonl and diagnostics.png")
    a("--diagnostics-every", type=_positive_int, metavar="N", help="measure every N steps "
      f"(default {DIAGNOSTICS_EVERY}; implies --diagnostics)")


def _train_config(args):
    """(config, run directory, resume?) from the parsed options."""
    options = [f.name for f in dataclasses.fields(TrainConfig)]  # each has its --option
    given = {k: getattr(args, k) for k in options if getattr(args, k) is not None}
    if "rules" in given:
        given["rules"] = tuple(given["rules"])
    if args.resume is None:
        config = TrainConfig(**with_defaults(given))
        out = args.out or os.path.join(
            "runs", f"{config.model}-{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
        return config, out, False
    if args.out is not None and os.path.abspath(args.out) != os.path.abspath(args.resume):
        raise ValueError("--resume RUN_DIR continues the run in RUN_DIR; drop --out")
    fixed = sorted(k for k in given if k not in RESUME_MAY_CHANGE)
    if fixed:
        raise ValueError(f"--resume keeps the run's config; it cannot change "
                         f"{', '.join('--' + k.replace('_', '-') for k in fixed)} "
                         f"(only --epochs and --data-dir)")
    config = read_config(args.resume)
    if "epochs" in given and given["epochs"] != config.epochs and config.schedule != "constant":
        print(f"note: the {config.schedule} learning-rate schedule now spans {given['epochs']} "
              f"epochs instead of {config.epochs}; the rate continues from its value on the new "
              "schedule", file=sys.stderr)
    for k, v in given.items():
        setattr(config, k, v)
    return config, args.resume, True


def run(args) -> int:
    config, out, resume = _train_config(args)
    every = args.diagnostics_every or (DIAGNOSTICS_EVERY if args.diagnostics else 0)
    try:
        train_run(config, out, resume=resume, progress=not args.no_progress, log=print,
                  diagnostics=every, check_nans=args.check_nans, devices=args.devices)
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: python -m fnn train --resume {out}", file=sys.stderr)
        return 130
    if jax.process_index() == 0:  # several processes: only process 0 writes and reports
        print(f"run directory: {out}")
    return 0
