"""`python -m fnn train`: train a model into a run directory (fnn.train.train_run), printing
its progress; the options are TrainConfig's fields."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time

import jax

from fnn.cli._args import UsageError, number
from fnn.cli._exit import INTERRUPTED, OK, SAVED, TERMINATED
from fnn.nn import ACTIVATIONS, INITIALIZERS, MODELS
from fnn.train.config import (CHECKS, RESUME_MAY_CHANGE, ConfigError, TrainConfig,
                              check_applies, option_flag, option_group, parse_option,
                              resume_flags)
from fnn.train.data import DATASETS
from fnn.train.distributed import JOIN_TIMEOUT, initialize, parse_address
from fnn.train.diagnostics import EVERY as DIAGNOSTICS_EVERY
from fnn.train.interrupt import TrainingInterrupted
from fnn.train.loop import CHUNK_SECONDS
from fnn.train.optim import OPTIMIZERS, SCHEDULES
from fnn.train.parallel import SHARD
from fnn.train.run import train_run, with_defaults
from fnn.train.step import GRADS, LOSSES


def _option(name: str):
    """The argparse type of TrainConfig option `name`: parsed and checked by fnn.train.config,
    the same checks config.json and checkpoints get."""
    def parse(text: str):
        try:
            return parse_option(name, text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = name
    return parse


_chunk_seconds = number(float, low=0, what="a finite number of seconds >= 0")
_positive_int = number(int, low=1, what="a positive integer")
_process_id = number(int, low=0, what="an integer >= 0")
_seconds = number(float, low=1e-3, what="a positive number of seconds")


def _address(text: str) -> str:
    try:
        return parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


HELP = "train a model and save its run directory"
SYNOPSIS = "%(prog)s [options]"
DESCRIPTION = ("Train a model. With no options: an MLP on the bundled digits dataset with "
               "hand-written gradients (>= 97% test accuracy in well under a minute).")


# the topics of --help, in order: a TrainConfig field's is in its declaration
# (fnn.train.config.option), the others' where they are added below
GROUPS = ("model", "data", "optimisation", "gradients and rules", "run folder", "devices")


def add_arguments(p) -> None:
    d = TrainConfig()
    groups = {title: p.add_argument_group(title) for title in GROUPS}

    def a(flag, group=None, dest=None, **kw):
        """An option: one of TrainConfig (its values checked by fnn.train.config, its topic
        the field's), or of the command alone (its topic given here)."""
        name = dest or flag[2:].replace("-", "_")
        if name in CHECKS:
            group = option_group(name)
            if "choices" not in kw and "action" not in kw and "type" not in kw:
                kw["type"] = _option(name)
        groups[group].add_argument(flag, **({"dest": dest} if dest else {}), **kw)

    a("--model", choices=sorted(MODELS), help=f"network (default {d.model}; rnn, lstm, gru and "
      "transformer are language models and train on --dataset text)")
    a("--dataset", choices=DATASETS, help=f"dataset (default {d.dataset}, or text for a "
      "language model)")
    a("--data-dir", metavar="D", help="directory holding the mnist/fashion-mnist/cifar10 files; "
      "for text, a text file or folder (default: the Python standard library's modules)")
    a("--grad", choices=GRADS, help="custom: fnn's hand-written gradients; builtin: jax.grad "
      f"(default {d.grad})")
    a("--optimizer", choices=OPTIMIZERS, help=f"(default {d.optimizer})")
    a("--lr", help=f"learning rate (default {d.lr})")
    a("--schedule", choices=SCHEDULES, help=f"learning-rate schedule (default {d.schedule})")
    a("--epochs", help=f"(default {d.epochs})")
    a("--batch-size", help=f"(default {d.batch_size})")
    a("--seed", help=f"seed of init, shuffling and dropout, 0 to 2**64-1 (default {d.seed})")
    a("--weight-decay", help="weight decay of kernels (default 0)")
    a("--clip", help="clip gradients to this global norm (default: off)")
    a("--l2", help="the lecture's L2 penalty l2*sum(W**2) in the loss")
    a("--loss", choices=sorted(LOSSES), help=f"(default {d.loss})")
    a("--label-smoothing", metavar="E", help="cross-entropy against "
      "(1 - E) one-hot + E / C targets (default 0)")
    a("--val-fraction", help=f"of the training set (default {d.val_fraction})")
    a("--hidden", help="MLP hidden widths, or RNN/LSTM/GRU layer widths, "
      "e.g. 256,128 (default "
      f"{','.join(map(str, d.hidden))})")
    a("--channels", help="CNN channels / ResNet stage widths, e.g. 32,64")
    a("--activation", choices=sorted(ACTIVATIONS), help=f"(default {d.activation})")
    a("--init", choices=sorted(set(INITIALIZERS) - {"zeros", "ones"}),
      help=f"weight initializer (default {d.init})")
    a("--dropout", help="dropout rate of MLP/CNN hidden layers (default 0)")
    a("--limit", help="use only the first N train and test examples")
    a("--context", help=f"text: bytes per training window (default {d.context})")
    a("--width", help=f"transformer width (default {d.width})")
    a("--depth", help=f"transformer blocks (default {d.depth})")
    a("--heads", help=f"transformer attention heads (default {d.heads})")
    a("--out", "run folder", metavar="RUN_DIR",
      help="run directory (default runs/<model>-<dataset>-<time>)")
    a("--resume", "run folder", metavar="RUN_DIR", help="continue the run in RUN_DIR from its "
      "last checkpoint, also one saved in the middle of an epoch by Ctrl-C (its "
      "config is kept and checked against the checkpoint's; only --epochs, "
      "--data-dir and --remat/--no-remat may be changed); a run stopped before its "
      "first checkpoint "
      "starts from the beginning")
    a("--resume-from", "run folder", choices=("last", "best"), default=None,
      help="with --resume: the checkpoint to continue from (default last; best "
      "continues from best.safetensors, cutting the history back to its epoch: "
      "for a run whose last.safetensors is lost)")
    a("--overwrite", "run folder", action="store_true", help="a new run in a folder that "
      "already holds files a run writes (config.json, metrics.jsonl, checkpoints, "
      "results.json, plots, vocab.json, ...) removes them first; without it such a "
      "folder is refused")
    a("--chunk-seconds", "run folder", type=_chunk_seconds, metavar="S", help="run each epoch "
      f"as compiled chunks of about S seconds (default {CHUNK_SECONDS}; at least "
      "one step); Ctrl-C stops between two, saving a checkpoint to resume from")
    a("--rule", action="append", metavar="GATE=RULE", dest="rules",
      help="train with a backward-rule override, e.g. relu=straight_through, "
      "spike=fast_sigmoid:slope=25, affine=feedback_alignment, affine@3_dense="
      "clip_backward:max_norm=1 (repeatable; kept by --resume; see "
      "fnn/train/rules.py)")
    a("--remat", action=argparse.BooleanOptionalAction, default=None,
      help="recompute each block's activations in the backward instead of keeping "
      "them: less memory (a bigger model or batch fits), about one more forward "
      "per step; the same values (default off; --no-remat turns it off on --resume)")
    a("--no-progress", "run folder", action="store_true", help="no progress bars")
    a("--check-nans", "gradients and rules", action="store_true", help="on a NaN/inf loss, "
      "replay the step eagerly under fnn.debug_nans and name the gate (forward or VJP) that "
      "made it; exit 1")
    a("--devices", "devices", type=_positive_int, metavar="N", help="data parallel: split each "
      "batch across N devices (the batch size must be divisible by N), parameters replicated")
    a("--shard", "devices", choices=SHARD, help="params: split the large parameters and their "
      "optimizer state across the devices too (FSDP), for models whose parameters and "
      "optimizer state do not fit on one device; without --devices: all devices (default "
      "none: replicated)")
    a("--coordinator", "devices", type=_address, metavar="HOST:PORT", help="several "
      "processes, one run: process 0's host and a free port, where it starts JAX's "
      "coordinator; with --num-processes and --process-id. Without them: from the environment "
      "(python -m fnn launch; SLURM, Open MPI, Kubernetes, Cloud TPU as JAX detects them), "
      "else one process")
    a("--num-processes", "devices", type=_positive_int, metavar="N", help="how many processes "
      "the run has (each runs this same command)")
    a("--process-id", "devices", type=_process_id, metavar="I", help="this process's number, "
      "0 to N-1 (process 0 writes the run directory)")
    a("--join-timeout", "devices", type=_seconds, metavar="S", help="seconds to wait for every "
      f"process to join (default {JOIN_TIMEOUT:g}); then each says why it could not, and "
      "exits 1")
    a("--diagnostics", "gradients and rules", action="store_true", help="gradient health per "
      "layer: gradient norm, update/parameter ratio, dead ReLUs, saturated sigmoid/tanh, custom "
      "vs built-in gradient; to RUN_DIR/diagnostics.jsonl and diagnostics.png")
    a("--diagnostics-every", "gradients and rules", type=_positive_int, metavar="N",
      help=f"measure every N steps (default {DIAGNOSTICS_EVERY}; implies --diagnostics)")


def _train_config(args):
    """(config or None, overrides, run directory, resume?) from the parsed options."""
    options = [f.name for f in dataclasses.fields(TrainConfig)]  # each has its --option
    given = {k: getattr(args, k) for k in options if getattr(args, k) is not None}
    if "rules" in given:
        given["rules"] = tuple(given["rules"])
    if args.out is not None and not args.out.strip():
        raise ValueError("--out must name a directory, got an empty string")
    if args.resume is None:
        if args.resume_from is not None:
            raise ValueError("--resume-from needs --resume RUN_DIR")
        config = TrainConfig(**with_defaults(given))
        check_applies(config, given)
        out = args.out or os.path.join(
            "runs", f"{config.model}-{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
        return config, {}, out, False
    if not args.resume.strip():
        raise ValueError("--resume must name a run directory, got an empty string")
    if args.overwrite:
        raise ValueError("--overwrite replaces the files of a new run; --resume continues the "
                         "run there: give one of them")
    if args.out is not None and os.path.abspath(args.out) != os.path.abspath(args.resume):
        raise ValueError("--resume RUN_DIR continues the run in RUN_DIR; drop --out")
    fixed = [k for k in given if k not in RESUME_MAY_CHANGE]
    if fixed:  # before anything is read: the options alone say it
        raise ValueError(f"--resume keeps the run's config; it cannot change "
                         f"{', '.join(option_flag(k) for k in fixed)} (only "
                         f"{resume_flags()})")
    return None, given, args.resume, True


def run(args) -> int:
    """Train; the exit status (fnn.cli._exit): 0 done, 2 options refused before anything ran,
    3 stopped by Ctrl-C and saved where it was, 143 the same by SIGTERM, 130 a Ctrl-C outside
    the epochs (loading, saving) or a second one: nothing saved then (errors: fnn.cli.main)."""
    try:
        config, overrides, out, resume = _train_config(args)
    except ValueError as e:  # the options alone say it (ConfigError included): bad usage
        raise UsageError(str(e)) from None
    initialize(args.coordinator, args.num_processes, args.process_id,  # several processes
               timeout=args.join_timeout or JOIN_TIMEOUT)
    every = args.diagnostics_every or (DIAGNOSTICS_EVERY if args.diagnostics else 0)
    chunk = CHUNK_SECONDS if args.chunk_seconds is None else args.chunk_seconds
    try:
        train_run(config, out, resume=resume, overrides=overrides,
                  progress=not args.no_progress, log=print, diagnostics=every,
                  check_nans=args.check_nans, devices=args.devices, chunk_seconds=chunk,
                  shard=args.shard, overwrite=args.overwrite,
                  resume_from=args.resume_from or "last")
    except TrainingInterrupted as e:
        ts = e.state
        where = (f"at step {ts.position} of epoch {ts.epoch + 1}" if ts.position
                 else f"after epoch {ts.epoch}")
        by = "SIGTERM" if e.signum == signal.SIGTERM else "Ctrl-C"
        waited = f" {e.waited_s:.2f} s after {by}" if e.waited_s is not None else ""
        saved = ("saved" if jax.process_index() == 0 else "process 0 saved")  # several processes
        print(f"\ninterrupted {where} (optimizer step {ts.step}); stopped{waited} and {saved} "
              f"{os.path.join(out, 'last.safetensors')}; continue with: python -m fnn train "
              f"--resume {out}", file=sys.stderr)
        return TERMINATED if e.signum == signal.SIGTERM else SAVED
    except KeyboardInterrupt:
        print(f"\ninterrupted; the run's last checkpoint (if any) is unchanged; continue with: "
              f"python -m fnn train --resume {out}", file=sys.stderr)
        return INTERRUPTED
    if jax.process_index() == 0:  # several processes: only process 0 writes and reports
        print(f"run directory: {out}")
    return OK
