"""`python -m fnn train`: train a model into a run directory (fnn.train.train_run), printing
its progress; the options are TrainConfig's fields."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import jax

from fnn.cli._args import UsageError, number
from fnn.cli._exit import INTERRUPTED, OK, SAVED, TERMINATED
from fnn.train.config import (
    OPTIONS,
    ConfigError,
    TrainConfig,
    check_applies,
    check_resume_overrides,
    option_flag,
    option_help,
    parse_option,
    resume_flags,
    with_defaults,
)
from fnn.train.distributed import JOIN_TIMEOUT, initialize, parse_address
from fnn.train.diagnostics import EVERY as DIAGNOSTICS_EVERY
from fnn.train.interrupt import TrainingInterrupted
from fnn.train.loop import CHUNK_SECONDS
from fnn.train.parallel import SHARD
from fnn.train.run import train_run


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
DESCRIPTION = (
    "Train a model. With no options: an MLP on the bundled digits dataset with "
    "hand-written gradients (>= 97% test accuracy in well under a minute)."
)


# the topics of --help, in order: a TrainConfig field's is in its declaration
# (fnn.train.config.option), the command's own options' where they are added below
GROUPS = ("model", "data", "optimisation", "gradients and rules", "run folder", "devices")


def _add_option(group, name: str) -> None:
    """The flag of TrainConfig option `name`, all from its declaration (fnn.train.config.option):
    help, metavar, choices (a choice's check), a --x/--no-x pair (a flag whose default is a
    bool), repeatable (repeat=True), else text parsed and checked by fnn.train.config (the
    checks config.json and checkpoints get). Its default is None: given or not."""
    o, default = OPTIONS[name], TrainConfig.__dataclass_fields__[name].default
    kw = {"help": option_help(name), "default": None}
    if o.metavar:
        kw["metavar"] = o.metavar
    if isinstance(default, bool):
        kw["action"] = argparse.BooleanOptionalAction
    elif o.repeat:
        kw["action"] = "append"
    elif hasattr(o.check, "choices"):
        kw["choices"] = o.check.choices
    else:
        kw["type"] = _option(name)
    group.add_argument(option_flag(name), dest=name, **kw)


def add_arguments(p) -> None:
    groups = {title: p.add_argument_group(title) for title in GROUPS}
    for name in OPTIONS:  # TrainConfig's, each under the topic its declaration names
        _add_option(groups[OPTIONS[name].group], name)
    # the options of the command alone (not of the run's config), each under its topic
    _add_run_folder_options(groups["run folder"])
    _add_nan_check(groups["gradients and rules"])
    _add_device_options(groups["devices"])
    _add_diagnostics(groups["gradients and rules"])


def _add_run_folder_options(group) -> None:
    """Where the run's files go: a new run directory, or the one a run resumes from."""
    group.add_argument(
        "--out",
        metavar="RUN_DIR",
        help="run directory (default runs/<model>-<dataset>-<time>)",
    )
    group.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its "
        "last checkpoint, also one saved in the middle of an epoch by Ctrl-C (its "
        f"config is kept and checked against the checkpoint's; only {resume_flags()} may be "
        "changed); a run stopped before its first checkpoint starts from the beginning",
    )
    group.add_argument(
        "--resume-from",
        choices=("last", "best"),
        default=None,
        help="with --resume: the checkpoint to continue from (default last; best "
        "continues from best.safetensors, cutting the history back to its epoch: "
        "for a run whose last.safetensors is lost)",
    )
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="a new run in a folder that "
        "already holds files a run writes (config.json, metrics.jsonl, checkpoints, "
        "results.json, plots, vocab.json, ...) removes them first; without it such a "
        "folder is refused",
    )
    group.add_argument(
        "--chunk-seconds",
        type=_chunk_seconds,
        metavar="S",
        help="run each epoch "
        f"as compiled chunks of about S seconds (default {CHUNK_SECONDS}; at least "
        "one step); Ctrl-C stops between two, saving a checkpoint to resume from",
    )
    group.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_nan_check(group) -> None:
    """--check-nans: name the gate that made a NaN/inf loss."""
    group.add_argument(
        "--check-nans",
        action="store_true",
        help="on a NaN/inf loss, "
        "replay the step eagerly under fnn.debug_nans and name the gate (forward or VJP) that "
        "made it; exit 1",
    )


def _add_device_options(group) -> None:
    """The devices a run uses, and the processes of a run on several hosts."""
    group.add_argument(
        "--devices",
        type=_positive_int,
        metavar="N",
        help="data parallel: split each "
        "batch across N devices (the batch size must be divisible by N), parameters replicated",
    )
    group.add_argument(
        "--shard",
        choices=SHARD,
        help="params: split the large parameters and their "
        "optimizer state across the devices too (FSDP), for models whose parameters and "
        "optimizer state do not fit on one device; without --devices: all devices (default "
        "none: replicated)",
    )
    group.add_argument(
        "--coordinator",
        type=_address,
        metavar="HOST:PORT",
        help="several "
        "processes, one run: process 0's host and a free port, where it starts JAX's "
        "coordinator; with --num-processes and --process-id. Without them: from the environment "
        "(python -m fnn launch; SLURM, Open MPI, Kubernetes, Cloud TPU as JAX detects them), "
        "else one process",
    )
    group.add_argument(
        "--num-processes",
        type=_positive_int,
        metavar="N",
        help="how many processes the run has (each runs this same command)",
    )
    group.add_argument(
        "--process-id",
        type=_process_id,
        metavar="I",
        help="this process's number, 0 to N-1 (process 0 writes the run directory)",
    )
    group.add_argument(
        "--join-timeout",
        type=_seconds,
        metavar="S",
        help="seconds to wait for every "
        f"process to join (default {JOIN_TIMEOUT:g}); then each says why it could not, and "
        "exits 1",
    )


def _add_diagnostics(group) -> None:
    """--diagnostics: the gradient health of each layer, measured as the run trains."""
    group.add_argument(
        "--diagnostics",
        action="store_true",
        help="gradient health per "
        "layer: gradient norm, update/parameter ratio, dead ReLUs, saturated sigmoid/tanh, custom "
        "vs built-in gradient; to RUN_DIR/diagnostics.jsonl and diagnostics.png",
    )
    group.add_argument(
        "--diagnostics-every",
        type=_positive_int,
        metavar="N",
        help=f"measure every N steps (default {DIAGNOSTICS_EVERY}; implies --diagnostics)",
    )


def _train_config(args):
    """(config or None, overrides, run directory, resume?) from the parsed options."""
    given = {k: getattr(args, k) for k in OPTIONS if getattr(args, k) is not None}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}  # repeat=True
    if args.out is not None and not args.out.strip():
        raise ValueError("--out must name a directory, got an empty string")
    if args.resume is None:
        if args.resume_from is not None:
            raise ValueError("--resume-from needs --resume RUN_DIR")
        config = TrainConfig(**with_defaults(given))
        check_applies(config, given)
        out = args.out or os.path.join(
            "runs", f"{config.model}-{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        return config, {}, out, False
    if not args.resume.strip():
        raise ValueError("--resume must name a run directory, got an empty string")
    if args.overwrite:
        raise ValueError(
            "--overwrite replaces the files of a new run; --resume continues the "
            "run there: give one of them"
        )
    if args.out is not None and os.path.abspath(args.out) != os.path.abspath(args.resume):
        raise ValueError("--resume RUN_DIR continues the run in RUN_DIR; drop --out")
    check_resume_overrides(given)  # before anything is read: the options alone say it
    return None, given, args.resume, True


def run(args) -> int:
    """Train; the exit status (fnn.cli._exit): 0 done, 2 options refused before anything ran,
    3 stopped by Ctrl-C and saved where it was, 143 the same by SIGTERM, 130 a Ctrl-C outside
    the epochs (loading, saving) or a second one: nothing saved then (errors: fnn.cli.main)."""
    try:
        config, overrides, out, resume = _train_config(args)
    except ValueError as e:  # the options alone say it (ConfigError included): bad usage
        raise UsageError(str(e)) from None
    initialize(
        args.coordinator,
        args.num_processes,
        args.process_id,  # several processes
        timeout=args.join_timeout or JOIN_TIMEOUT,
    )
    every = args.diagnostics_every or (DIAGNOSTICS_EVERY if args.diagnostics else 0)
    chunk = CHUNK_SECONDS if args.chunk_seconds is None else args.chunk_seconds
    try:
        train_run(
            config,
            out,
            resume=resume,
            overrides=overrides,
            progress=not args.no_progress,
            log=print,
            diagnostics=every,
            check_nans=args.check_nans,
            devices=args.devices,
            chunk_seconds=chunk,
            shard=args.shard,
            overwrite=args.overwrite,
            resume_from=args.resume_from or "last",
        )
    except TrainingInterrupted as e:
        ts = e.state
        where = (
            f"at step {ts.position} of epoch {ts.epoch + 1}"
            if ts.position
            else f"after epoch {ts.epoch}"
        )
        by = "SIGTERM" if e.signum == signal.SIGTERM else "Ctrl-C"
        waited = f" {e.waited_s:.2f} s after {by}" if e.waited_s is not None else ""
        saved = "saved" if jax.process_index() == 0 else "process 0 saved"  # several processes
        print(
            f"\ninterrupted {where} (optimizer step {ts.step}); stopped{waited} and {saved} "
            f"{os.path.join(out, 'last.safetensors')}; continue with: python -m fnn train "
            f"--resume {out}",
            file=sys.stderr,
        )
        return TERMINATED if e.signum == signal.SIGTERM else SAVED
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; the run's last checkpoint (if any) is unchanged; continue with: "
            f"python -m fnn train --resume {out}",
            file=sys.stderr,
        )
        return INTERRUPTED
    if jax.process_index() == 0:  # several processes: only process 0 writes and reports
        print(f"run directory: {out}")
    return OK
