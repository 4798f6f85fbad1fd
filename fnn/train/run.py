"""A training run in a directory: what `python -m fnn train` does.

    RUN_DIR/config.json       the TrainConfig of the run
    RUN_DIR/metrics.jsonl     one JSON record per epoch (see fnn.train.fit)
    RUN_DIR/last.safetensors  the TrainState after the latest epoch, or where Ctrl-C stopped
                              it in the middle of one (what --resume loads)
    RUN_DIR/best.safetensors  the TrainState with the best validation accuracy so far
    RUN_DIR/curves.png        loss and accuracy curves
    RUN_DIR/results.json      final test loss and accuracy (last and best checkpoints); for text,
                              also bits per character and perplexity
    RUN_DIR/vocab.json        text runs: the byte vocabulary (what `python -m fnn sample` reads)
    RUN_DIR/diagnostics.jsonl, diagnostics.png   gradient health per layer every N steps
                              (train_run(..., diagnostics=N); fnn.train.health_log)
    RUN_DIR/.lock             who holds the run (the lock is on the folder: fnn.train.lock)

A run directory is fnn's or refused. A new run refuses a folder holding any of these files
(naming them) unless overwrite=True (`--overwrite`) removes them first; a resume refuses a
folder whose history (metrics.jsonl records, best.safetensors, results.json) has lost its
last.safetensors, naming it, and continues from best.safetensors when asked to
(resume_from="best", `--resume-from best`). Every file is written through
fnn.train.files.write_file, in the folder the lock holds by identity (a renamed folder stops
the run), never through a symbolic link, and read back with a size bound and every field
checked.

The writes are ordered so that a crash anywhere leaves a folder that resumes or restarts:
a new run writes config.json first (a folder holding config.json and no checkpoint is started
from the beginning by --resume), then vocab.json and metrics.jsonl. After each epoch: the
gradient-health rows, last.safetensors (holding the epoch's record), best.safetensors (read
back and verified; never parameters holding NaN/inf), the record to metrics.jsonl. A resume
puts back what a crash between them lost: the record from the checkpoint when metrics.jsonl
lacks it, best.safetensors from last when the checkpoint's epoch beat it.

A run (new or resumed) holds the directory's lock for its whole life, so a second process on
the same directory is refused at once; the check that a new directory holds no run and the
writing of its config happen under the lock. Before anything is written, the data (training,
validation and test sets) is checked against the model. A resumed run validates what it
reads: config.json as the command line's options are validated, then against the config
stored in the checkpoint (fnn.train.config.resume_config), the data against the sizes and the
fingerprint (sha256) of the data the checkpoint was trained on, metrics.jsonl record by record
(a damaged last line is dropped, and said so), a best.safetensors by its digest.

Several processes (fnn.train.distributed): every process trains, only process 0 locks and
writes the run directory and logs; the others read it when resuming (it must be on a file
system they share) and return the final test results of their (identical) params. An error of
one process while the run starts or saves is an error in all (distributed.together: the others
raise DistributedError naming it), and the options, the data's fingerprint and the checkpoint
resumed from must be the same in every process (distributed.same). With shard="params" the
processes gather the parameters and optimizer state after each epoch (a collective), so that
process 0 can write them whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from typing import Callable

import jax
import numpy as np

from fnn.nn import build_model, count_params, layer_shapes, summary
from fnn.train import jsonl
from fnn.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_train_state,
    read_header,
    save_train_state,
    verify_checkpoint,
)
from fnn.train.config import (
    RESUME_MAY_CHANGE,
    ConfigError,
    TrainConfig,
    check_model_data,
    differences,
    option_flag,
    resume_config,
)
from fnn.train.data import load_dataset
from fnn.train.distributed import same, together
from fnn.train.epoch import make_evaluate, steps_per_epoch
from fnn.train.health_log import FILE as HEALTH_FILE, PLOT as HEALTH_PLOT, HealthLog
from fnn.train.hooks import EarlyStopping, Hook
from fnn.train.files import Folder, RunDirError, read_file, write_file
from fnn.train.lock import LOCK_FILE, RunLock, is_lock_file
from fnn.train.loop import CHUNK_SECONDS, fit, standard_hooks
from fnn.train.optim import make_optimizer, make_schedule
from fnn.train.parallel import check_shard, gather
from fnn.train.plot import plot_curves
from fnn.train.readers import DataError
from fnn.train.state import TrainState, init_train_state
from fnn.train.rule_specs import check_rules, make_rules
from fnn.train.text import VOCAB_FILE, check_vocab
from fnn.train.spec import TrainSpec, mesh
from fnn.train.validate import check_finite_state, non_finite_leaves

__all__ = [
    "BEST",
    "LAST",
    "METRICS",
    "RESUME_MAY_CHANGE",
    "RunDirectory",
    "TrainConfig",
    "read_config",
    "setup",
    "train_run",
]

LAST, BEST, CONFIG, METRICS = "last.safetensors", "best.safetensors", "config.json", "metrics.jsonl"
RESULTS, CURVES = "results.json", "curves.png"
RUN_FILES = (CONFIG, METRICS, LAST, BEST)  # any of them: the directory holds a run
FILES = (CONFIG, VOCAB_FILE, METRICS, LAST, BEST, RESULTS, CURVES, HEALTH_FILE, HEALTH_PLOT)
MAX_CONFIG_BYTES = 1 << 20  # a config.json is about 600 bytes
RESUME_FROM = ("last", "best")


def read_config(run_dir: str, *, folder: Folder | None = None) -> TrainConfig:
    """The TrainConfig saved in a run directory.

    It is read with a size bound, never through a link, every value validated as on the command
    line.

    Args:
        run_dir: the run directory.
        folder: its fnn.train.files.Folder (None: opened here).

    Returns:
        The TrainConfig.

    Raises:
        FileNotFoundError: `run_dir` has no config file.
        ConfigError: the config file is damaged or holds invalid values.
    """
    path = os.path.join(run_dir, CONFIG)
    there = folder.exists(CONFIG) if folder is not None else os.path.lexists(path)
    if not there:
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has no {CONFIG}")
    try:
        text = read_file(
            CONFIG if folder is not None else path,
            folder=folder,
            limit=MAX_CONFIG_BYTES,
            what="config.json",
        )
        d = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        if isinstance(e, RunDirError):
            raise
        raise ConfigError(
            f"{run_dir} is not a usable run directory: {path} is damaged ({e}); "
            "restore it, or start a new run with --out"
        ) from None
    return TrainConfig.from_dict(d, source=path)


def _write_json(name: str, obj, folder: Folder | None) -> None:
    write_file(name, (json.dumps(obj, indent=2) + "\n").encode(), folder=folder)


def make_spec(config: TrainConfig, devices=None, shard: str | None = None) -> TrainSpec:
    """The TrainSpec of `config` (its data, model, optimizer, schedule and backward rules) on
    `devices` with `shard` (not part of the config: they do not change the math), made and
    checked once: everything here fails before the run directory is written."""
    check_model_data(config)
    loss = config.training_loss()  # a bad loss option fails before anything is loaded
    check_rules(config.rules, config.grad)
    data = load_dataset(
        config.dataset,
        config.data_dir,
        val_fraction=config.val_fraction,
        limit=config.limit or None,
        context=config.context,
    )
    if not len(data.x_test):
        raise DataError(
            f"the test set of {config.dataset} is empty (x_test "
            f"{tuple(data.x_test.shape)}): the run could not report its results"
        )
    if config.early_stop and not len(data.x_val):
        raise ConfigError(
            f"--early-stop {config.early_stop} watches the validation loss, but "
            f"--val-fraction {config.val_fraction:g} leaves no validation set"
        )
    model = build_model(
        config.model,
        data.num_classes,
        **config.model_options(),
        **({"remat": True} if config.remat else {}),
    )  # each block checkpointed
    dp = mesh(devices, shard)  # several processes: every device of every process
    if dp is not None:
        dp.check_batch_size(config.batch_size, "--batch-size")
    # the schedule's length, needed before the spec (which holds the optimizer) exists; the
    # spec's n_steps is the one every later step reads
    total = steps_per_epoch(len(data.x_train), config.batch_size) * config.epochs
    schedule = make_schedule(config.schedule, config.lr, total_steps=total)
    optimizer = make_optimizer(
        config.optimizer, schedule, weight_decay=config.weight_decay, clip=config.clip or None
    )
    rules = make_rules(config.rules, layer_shapes(model, data.input_shape)[0], config.seed)
    return TrainSpec(
        model,
        optimizer,
        data,
        batch_size=config.batch_size,
        loss=loss,
        grad=config.grad,
        l2=config.l2,
        rules=rules,
        seed=config.seed,
        devices=dp,
        shard=shard,
        remat=config.remat,
        schedule=schedule,
    )


def setup(config: TrainConfig):
    """(data, model, optimizer, schedule) of a config (its make_spec's)."""
    spec = make_spec(config)
    return spec.data, spec.model, spec.optimizer, spec.schedule


def data_sizes(data) -> dict:
    """What a checkpoint records of the data it was trained on (checked on resume): the sizes
    of the splits, the input shape and the data's fingerprint (its sha256, when known)."""
    out = {
        "train": len(data.x_train),
        "val": len(data.x_val),
        "test": len(data.x_test),
        "input_shape": list(data.input_shape),
    }
    if getattr(data, "sha256", None):
        out["sha256"] = data.sha256
    return out


class RunDirectory(Hook):
    """The fit hook of train_run: after each epoch, in this order (see the module docstring),
    the gradient-health rows (the record's "diagnostics") to diagnostics.jsonl, the checkpoint
    `last` (with the epoch's record in its metadata), `best` on a better validation score
    than `best_acc` (accuracy, or minus the loss for text and regression; verified once
    written; never parameters holding NaN/inf, log says so), the record to metrics.jsonl; on
    Ctrl-C, `last` where training stopped (in the middle of an epoch: with the position and
    the epoch's batch order). config.json is (re)written with the first checkpoint when
    `write_config` (a resumed run whose --epochs or --data-dir changed). Only the primary
    process writes; every write goes through `folder` (the run directory's Folder)."""

    def __init__(
        self,
        out_dir: str,
        config: TrainConfig,
        *,
        best_acc: float,
        health: HealthLog | None,
        primary: bool,
        data: dict | None = None,
        write_config: bool = False,
        log: Callable | None = None,
        folder: Folder | None = None,
        record: dict | None = None,
    ):
        self.out_dir, self.config, self.best_acc = out_dir, config, best_acc
        self.health, self.primary, self.data = health, primary, data or {}
        self.log = log or (lambda line: None)
        self.folder = folder
        self.write_config = write_config
        self.record = record  # the latest complete epoch's record (kept in `last`)

    def _save_last(self, ts: TrainState) -> None:
        extra = {"record": self.record} if self.record is not None else {}
        save_train_state(
            LAST, ts, self.config.to_dict(), folder=self.folder, data=self.data, **extra
        )
        if self.write_config:
            _write_json(CONFIG, self.config.to_dict(), self.folder)
            self.write_config = False

    def on_epoch_end(self, ts: TrainState, record: dict):
        ts = _gathered(ts)  # every process, before only the primary one writes
        rows = record.get("diagnostics", [])  # to diagnostics.jsonl, not to metrics.jsonl
        record = {k: v for k, v in record.items() if k != "diagnostics"}
        with together(f"saving epoch {record['epoch']}"):  # a failed write stops every process
            if self.primary:
                self._save_epoch(ts, record, rows)

    def _save_epoch(self, ts: TrainState, record: dict, rows: list) -> None:
        self.health.write(rows)
        self.record = dict(record)
        self._save_last(ts)
        score = best_score(record)
        if score is not None and score > self.best_acc:  # no validation: no best
            bad = [*non_finite_leaves(ts.params, "params"), *non_finite_leaves(ts.state, "state")]
            if bad:
                self.log(
                    f"note: epoch {record['epoch']} has the best validation score so far, "
                    f"but its parameters hold NaN/inf ({', '.join(bad[:4])}): it is not "
                    f"saved as {BEST}"
                )
            else:
                self.best_acc = score
                save_best(self.folder, ts, self.config, self.data, record)
        jsonl.append(METRICS, [record], folder=self.folder)

    def on_interrupt(self, ts: TrainState):
        ts = _gathered(ts)
        with together("saving where training stopped"):
            if self.primary:
                self._save_last(ts)


def save_best(
    folder: Folder, ts: TrainState, config: TrainConfig, data: dict, record: dict
) -> None:
    """best.safetensors of `ts`, the state after the epoch of `record`; read back and verified."""
    extra = (
        {"val_acc": record["val_acc"]} if "val_acc" in record else {"val_loss": record["val_loss"]}
    )
    save_train_state(BEST, ts, config.to_dict(), folder=folder, verify=True, data=data, **extra)


def _sharded_note(dp, params) -> str:
    """', parameters sharded: k of n leaves split, x of y MiB per device' for the log line."""
    leaves = jax.tree_util.tree_leaves(params)
    split = [leaf for leaf in leaves if not dp.param_sharding(leaf).is_fully_replicated]
    whole = sum(leaf.size * leaf.dtype.itemsize for leaf in leaves)
    mine = whole - sum(leaf.size * leaf.dtype.itemsize for leaf in split) * (1 - 1 / dp.size)
    if not split:
        return (
            ", parameters sharded: none split, every leaf is under "
            f"{dp.min_shard_size:,} elements or has no dimension divisible by {dp.size}"
        )
    return (
        f", parameters sharded: {len(split)} of {len(leaves)} leaves split, "
        f"{mine / 2**20:.2f} of {whole / 2**20:.2f} MiB per device"
    )


def _gathered(ts: TrainState) -> TrainState:
    """ts with params and optimizer state that several processes hold slices of (shard="params"
    on several hosts) gathered whole, so that process 0 can write them; else ts itself."""
    if jax.process_count() == 1:
        return ts
    return dataclasses.replace(ts, params=gather(ts.params), opt_state=gather(ts.opt_state))


def best_score(record: dict) -> float | None:
    """What 'best' maximizes: the validation accuracy, or minus the validation loss when there
    is no accuracy (text, regression); None without validation."""
    if "val_acc" in record:
        return record["val_acc"]
    if "val_loss" in record:
        return -record["val_loss"]
    return None


def text_metrics(loss_nats, split: str) -> dict:
    """{split_bpc, split_ppl} of a loss in nats per byte (empty for None)."""
    if loss_nats is None:
        return {}
    return {
        f"{split}_bpc": loss_nats / math.log(2),
        f"{split}_ppl": math.exp(min(loss_nats, 700.0)),
    }


class TextMetrics(Hook):
    """A text run's hook: bits per character and perplexity of the epoch's losses in its record
    (train_bpc, train_ppl, val_bpc, val_ppl), and a line of them in the log."""

    def __init__(self, log: Callable):
        self.log = log

    def on_metrics(self, metrics, record):
        record.update(
            text_metrics(record.get("train_loss"), "train"),
            **text_metrics(record.get("val_loss"), "val"),
        )

    def on_epoch_end(self, ts, record):
        if "val_bpc" in record:
            self.log(f"  val {record['val_bpc']:.3f} bits/char, perplexity {record['val_ppl']:.2f}")


def _check_new(folder: Folder, overwrite: bool) -> list[str]:
    """The files of FILES (and a .lock that is not fnn's) that `folder` holds; RunDirError
    naming them unless `overwrite`."""
    found = [n for n in FILES if folder.exists(n)]
    if not is_lock_file(folder):
        found.append(LOCK_FILE)
    if not found or overwrite:
        return found
    out = folder.path
    if (
        CONFIG in found
        and not set(found) & {LAST, BEST, RESULTS}
        and not (METRICS in found and _history(folder))
    ):
        raise RunDirError(
            f"{out} already holds a run that stopped before its first "
            f"checkpoint: start it from the beginning with its own config by "
            f"`--resume {out}`, choose another --out, or replace it with "
            f"--overwrite"
        )
    what = "a run" if set(found) & set(RUN_FILES) else "files a run writes"
    raise RunDirError(
        f"{out} already holds {what} ({', '.join(found)}): a new run would "
        f"overwrite them. Continue it with --resume {out}, choose another --out, "
        f"or pass --overwrite to replace them"
    )


def _history(folder: Folder) -> list[dict]:
    """The records of metrics.jsonl, each checked (epoch an integer >= 1, in order; the
    scores numbers): RunDirError naming the file, the record and the field otherwise."""
    records, _ = jsonl.read(METRICS, folder=folder)
    return check_history(records, folder.join(METRICS))


NUMBERS = ("train_loss", "train_acc", "val_loss", "val_acc")


def check_history(records: list[dict], path: str) -> list[dict]:
    """`records` (of metrics.jsonl at `path`) if every one holds an integer epoch >= 1, in
    increasing order, and numbers for the scores; RunDirError naming the record and field."""
    last = 0
    for i, r in enumerate(records, 1):
        e = r.get("epoch")
        if isinstance(e, bool) or not isinstance(e, int) or e < 1:
            raise RunDirError(
                f"{path}: record {i}: field 'epoch' must be an integer >= 1, got "
                f"{e!r}; fix or delete that line"
            )
        if e <= last:
            raise RunDirError(
                f"{path}: record {i}: epoch {e} follows epoch {last}; the epochs "
                "must increase (was the file edited?)"
            )
        last = e
        for k in NUMBERS:
            v = r.get(k)
            if k in r and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise RunDirError(
                    f"{path}: record {i} (epoch {e}): field {k!r} must be a number, got {v!r}"
                )
    return records


def _checkpoint_config(path: str, folder: Folder | None) -> TrainConfig:
    """The config stored in checkpoint `path` (its header only), validated."""
    header = read_header(path, folder=folder)
    meta = header.meta()
    if not header.is_fnn or not isinstance(meta.get("config"), dict) or not meta["config"]:
        raise CheckpointError(
            f"{header.path} is not an fnn training checkpoint with its run's "
            "config (a file from elsewhere, or from an older fnn): it cannot "
            "be resumed; start a new run (fnn.train.load_params loads its "
            "parameters in Python)"
        )
    return TrainConfig.from_dict(meta["config"], source=f"the config stored in {header.path}")


def _start_from(folder: Folder, resume_from: str) -> str | None:
    """The checkpoint a resumed run continues from (LAST, or BEST for resume_from="best"), or
    None: the run stopped before its first checkpoint and starts from the beginning. Refused
    (RunDirError naming the file) when the checkpoint is missing while the run has a history
    that starting again would replace, or when it is a link."""
    out = folder.path
    if resume_from not in RESUME_FROM:
        raise ValueError(
            f"resume_from must be one of {', '.join(RESUME_FROM)}, got {resume_from!r}"
        )
    wanted = BEST if resume_from == "best" else LAST
    folder.refuse_non_file(wanted)
    if folder.exists(wanted):
        return wanted
    if resume_from == "best":
        raise RunDirError(
            f"--resume-from best: {folder.join(BEST)} does not exist (the run "
            "never had a validation score, or it was deleted)"
        )
    history = _history(folder)
    kept = [n for n in (BEST, RESULTS) if folder.exists(n)]
    if not history and not kept:
        return None
    had = (
        [f"{METRICS} (epochs {history[0]['epoch']}..{history[-1]['epoch']})"] if history else []
    ) + kept
    hint = ""
    if folder.exists(BEST):
        try:
            meta = verify_checkpoint(BEST, folder=folder).meta()
            hint = (
                f"; continue from its best checkpoint (epoch {meta.get('epoch')}) with "
                f"`--resume {out} --resume-from best`"
            )
        except CheckpointError as e:
            hint = f"; its {BEST} cannot stand in for it ({e})"
    raise RunDirError(
        f"{folder.join(LAST)} is missing, but the run in {out} has a history "
        f"({', '.join(had)}) that starting again would replace{hint}. Restore "
        f"{LAST}, or start a new run with another --out (--overwrite replaces "
        "this one)"
    )


def _resume_config(
    folder: Folder, config: TrainConfig | None, overrides: dict | None, start: str | None
):
    """(the config a resumed run continues with (see resume_config), the one in config.json)."""
    saved = read_config(folder.path, folder=folder)
    overrides = dict(overrides or {})
    if config is not None:  # a config given in Python: its differences are the overrides
        overrides.update({k: getattr(config, k) for k in differences(saved, config)})
    checkpoint = _checkpoint_config(start, folder) if start else None
    merged = resume_config(
        saved,
        checkpoint,
        overrides,
        saved_file=folder.join(CONFIG),
        checkpoint_file=folder.join(start or LAST),
    )
    return merged, saved


def train_run(
    config: TrainConfig | None,
    out_dir: str,
    *,
    resume: bool = False,
    overrides: dict | None = None,
    progress: bool = True,
    log: Callable | None = None,
    diagnostics: int = 0,
    check_nans: bool = False,
    devices: int | None = None,
    chunk_seconds: float | None = CHUNK_SECONDS,
    shard: str | None = None,
    overwrite: bool = False,
    resume_from: str = "last",
) -> dict:
    """Train per `config` into `out_dir` (or continue the run there, resume=True).

    A directory whose run stopped before its first checkpoint is started from the beginning
    with its config. A run that early stopping ended (config.early_stop; its last record's
    "stopped") is finished, as one that trained all its epochs: resuming it trains nothing
    more and writes its results again. The directory is locked for the run's life. Several
    processes: see the module docstring; devices=None means all of their devices.

    Args:
        config: the TrainConfig (None with resume=True: the run's own).
        out_dir: the run directory.
        resume: continue the run in `out_dir`: its config.json, validated and matched against
            the config in its last checkpoint (a ConfigError names any key that differs).
        overrides: ({"epochs": 40}, {"data_dir": ...}: only RESUME_MAY_CHANGE keys) change the
            resumed run's config, as does a `config` that differs from it in those keys.
        progress: show a progress bar.
        log: log(line) gets the progress lines (the model summary, one line per epoch, gradient
            health, the results, notes; None: silent).
        diagnostics: N > 0: gradient health every N steps into diagnostics.jsonl and .png.
        check_nans: name the gate behind a non-finite loss or model state (fit's check_nans).
        devices: N: data parallel over N devices (fit's devices); not part of the config, a
            resumed run may change it.
        chunk_seconds: fit's.
        shard: "params": parameters and optimizer state split across the devices too (fit's shard;
            devices None: all of them); not part of the config either (it does not change the math).
        overwrite: remove the files of an earlier run in `out_dir` first (else a new run
            refuses a folder holding files a run writes, naming them).
        resume_from: "last", or "best": continue from best.safetensors (its history cut back
            to that epoch; a run with a history that lost its last.safetensors needs "best").

    Returns:
        The final results: {"test_loss", "test_acc", "best_epoch", "best_test_acc", ...}.

    Raises:
        RunDirError: `out_dir` holds another run's files, is locked by another process, or is
            renamed during the run (the run stops at its next write).
        ConfigError: an invalid config, or a resumed run's config differing from its checkpoint's.
        TrainingInterrupted: Ctrl-C or SIGTERM stopped the run; its state is in last.safetensors.
    """
    options = _Options(progress, diagnostics, check_nans, devices, shard, chunk_seconds)
    job = _Job(out_dir, resume, resume_from, overwrite, log, options)
    _check_call(job, config)
    with _locked(job):
        return _run_locked(job, config, overrides)


@contextlib.contextmanager
def _locked(job: "_Job"):
    """The run directory opened for the run's life (job.folder): locked by the primary
    process (a folder it made for a run that failed before writing anything removed again),
    opened by the others to resume from it."""
    out_dir, lock, created = job.out_dir, None, False
    try:
        # several processes: process 0 takes the lock, the others open the folder to resume
        # from it; an error in any of them (the folder in use by another run, not there on
        # that host) is an error in all
        with together("opening the run directory"):
            if job.resume and (
                not os.path.isdir(out_dir) or not os.path.lexists(os.path.join(out_dir, CONFIG))
            ):
                read_config(out_dir)  # the error: not a run directory (nothing is created)
            if job.primary:
                created = not os.path.exists(out_dir)
                lock = RunLock(out_dir, overwrite=job.overwrite).acquire()
                job.folder = lock.folder
                job.folder.remove_stale_temporaries((*FILES, LOCK_FILE))
            elif job.resume:
                job.folder = Folder(out_dir)
        yield job.folder
    except BaseException:
        if (
            lock is not None
            and created
            and lock.folder.moved() is None
            and os.listdir(out_dir) == [LOCK_FILE]
        ):
            lock.release(remove=True)  # failed before writing anything
            with contextlib.suppress(OSError):
                os.rmdir(out_dir)
        raise
    finally:
        if lock is not None:
            lock.release()
        elif job.folder is not None:
            job.folder.close()


@dataclasses.dataclass
class _Options:
    """train_run's options that are not the run's config: how it shows its progress, what it
    watches, where and in what chunks it trains."""

    progress: bool
    diagnostics: int
    check_nans: bool
    devices: int | None
    shard: str | None
    chunk_seconds: float | None


@dataclasses.dataclass
class _Job:
    """How train_run was called: its run directory (`folder` once opened), whether this is the
    primary process (the one that writes and logs: process 0; the others' `log` is silent) and
    its `options`, what is not the run's config."""

    out_dir: str
    resume: bool
    resume_from: str
    overwrite: bool
    log: Callable | None
    options: _Options
    primary: bool = dataclasses.field(init=False)
    folder: Folder | None = None

    def __post_init__(self):
        self.primary = jax.process_index() == 0  # the one process that writes and logs
        if not (self.log and self.primary):
            self.log = lambda line: None


@dataclasses.dataclass
class _Past:
    """What a run continues from: its TrainState (a fresh one for a new run), its history, the
    best validation score so far, the checkpoint it was read from (None: a new run, or a
    folder stopped before its first checkpoint), whether config.json is still to be written
    with the next checkpoint, and the checkpoint's digest."""

    ts: TrainState
    history: list
    best_acc: float = -math.inf
    start: str | None = None
    write_config: bool = False
    sha256: str | None = None


def _check_call(job: _Job, config: TrainConfig | None) -> None:
    """train_run's arguments that do not go together (ValueError naming them)."""
    if not isinstance(job.out_dir, str) or not job.out_dir.strip():
        raise ValueError(f"the run directory (--out) must be a directory name, got {job.out_dir!r}")
    if job.resume_from not in RESUME_FROM:
        raise ValueError(
            f"resume_from must be one of {', '.join(RESUME_FROM)}, got {job.resume_from!r}"
        )
    if job.resume and job.overwrite:
        raise ValueError(
            "--overwrite replaces the files of a new run; --resume continues the "
            "run there: give one of them"
        )
    if job.resume_from != "last" and not job.resume:
        raise ValueError("--resume-from needs --resume RUN_DIR")
    if config is None and not job.resume:
        raise ValueError("train_run needs a config for a new run")


def _run_locked(job: _Job, config: TrainConfig | None, overrides: dict | None) -> dict:
    """The run, its folder locked: the config and spec, what it resumes from, fit, results."""
    start, config, saved, found, spec = _config_and_spec(job, config, overrides)
    past = _past(job, spec, config, saved, start)
    _write_start(job, config, spec, past, found)
    _log_start(job, config, spec, past.ts)
    run_dir = _run_directory(job, config, spec, past)
    ts, new = _train(job, config, spec, past, run_dir)
    return _results(job, config, spec, past, run_dir, ts, new)


def _config_and_spec(job: _Job, config: TrainConfig | None, overrides: dict | None):
    """(start, config, saved, found) as _which_config gives them, and the run's TrainSpec: read
    and made in every process, and the same in all (its options and its data)."""
    with together("reading the run's config and data"):
        start, config, saved, found = _which_config(job, config, overrides)
        spec = make_spec(config, job.options.devices, job.options.shard)
    same(
        "the run's options and data",
        {
            "config": config.to_dict(),
            "devices": spec.dp.size if spec.dp is not None else None,
            "shard": check_shard(job.options.shard),
            "resume": job.resume,
            "resume_from": job.resume_from,
            "diagnostics": job.options.diagnostics,
            "check_nans": job.options.check_nans,
            "data": data_sizes(spec.data),
        },
    )
    return start, config, saved, found, spec


def _run_directory(job: _Job, config: TrainConfig, spec: TrainSpec, past: _Past) -> RunDirectory:
    """The run's RunDirectory hook, continuing from `past` (its best score, its latest record),
    with the gradient-health log in the primary process."""
    return RunDirectory(
        job.out_dir,
        config,
        best_acc=past.best_acc,
        primary=job.primary,
        health=(
            HealthLog(job.out_dir, upto_epoch=past.ts.epoch, log=job.log, folder=job.folder)
            if job.primary
            else None
        ),
        data=data_sizes(spec.data),
        write_config=past.write_config,
        log=job.log,
        folder=job.folder,
        record=past.history[-1] if past.history else None,
    )


def _train(job: _Job, config: TrainConfig, spec: TrainSpec, past: _Past, run_dir: RunDirectory):
    """(the final TrainState, the records of the epochs it trained): fit from `past`, or nothing
    more for a run a hook ended (early stopping)."""
    stopped = _stopped(past)
    if stopped:  # finished, as a run that trained all its epochs: its results, again
        job.log(f"the run ended after epoch {past.ts.epoch} ({stopped}): nothing more to train")
        return past.ts, []
    return fit(
        spec,
        epochs=config.epochs,
        start=past.ts,
        chunk_seconds=job.options.chunk_seconds,
        hooks=_hooks(job, config, spec, past, run_dir),
    )


def _stopped(past: _Past) -> str | None:
    """Why a hook ended the run (early stopping: its last record's "stopped") when it resumes
    from the end of that epoch; else None."""
    last = past.history[-1] if past.history else {}
    if last.get("stopped") and last["epoch"] == past.ts.epoch and not past.ts.position:
        return str(last["stopped"])
    return None


def _which_config(job: _Job, config: TrainConfig | None, overrides: dict | None):
    """(the checkpoint a resumed run continues from or None, the run's config, the one in its
    config.json (resumed) or None, the files a new run found in its folder)."""
    if job.resume:
        start = _start_from(job.folder, job.resume_from)
        config, saved = _resume_config(job.folder, config, overrides, start)
        return start, config, saved, []
    return None, config, None, (_check_new(job.folder, job.overwrite) if job.primary else [])


def _init_state(spec: TrainSpec) -> TrainState:
    """A fresh TrainState of the spec (XLA running out of memory explained)."""
    return spec.init_state(init_train_state)


def _past(
    job: _Job, spec: TrainSpec, config: TrainConfig, saved: TrainConfig | None, start: str | None
) -> _Past:
    """What the run continues from: a checkpoint read back and checked, or a fresh state."""
    ts = _init_state(spec)  # sharded parameters: made split on the mesh, never whole
    if not start:
        if job.resume:
            job.log(
                f"{job.out_dir} has no checkpoint yet (it stopped before its first one): "
                "starting the run from the beginning with its config"
            )
        job.log(summary(spec.model, spec.data.input_shape))
        return _Past(ts, [])
    with together(f"reading {start} to resume from it"):
        past = _read_checkpoint(job, spec, config, start, ts)
        past.write_config = bool(differences(saved, config))
        if saved.epochs != config.epochs and config.schedule != "constant":
            job.log(
                f"note: the {config.schedule} learning-rate schedule now spans "
                f"{config.epochs} epochs instead of {saved.epochs}; the rate continues "
                "from its value on the new schedule"
            )
    same(
        "the checkpoint it resumes from",
        {
            "file": start,
            "epoch": past.ts.epoch,
            "step": past.ts.step,
            "position": past.ts.position,
            "sha256": past.sha256,
        },
    )
    return past


def _read_checkpoint(
    job: _Job, spec: TrainSpec, config: TrainConfig, start: str, ts: TrainState
) -> _Past:
    """The state in checkpoint `start`, checked against the run (its data, its epochs, its
    values, its vocabulary), with the history it ends; what a crash lost, put back."""
    folder, log, path = job.folder, job.log, job.folder.join(start)
    ts, meta = load_train_state(start, ts, folder=folder)
    if spec.dp is not None and spec.dp.shard_params:  # split at once; the whole copy let go
        ts = spec.dp.place_train_state(ts)
    _check_resumed(path, ts, meta, data_sizes(spec.data), spec.n_steps, log)
    check_finite_state(ts, path)
    if spec.data.vocab is not None:
        check_vocab(job.out_dir, spec.data.vocab, folder=folder)
    history, note = jsonl.read(METRICS, folder=folder)
    if note:
        log(f"note: {note}")
    history = [r for r in check_history(history, folder.join(METRICS)) if r["epoch"] <= ts.epoch]
    record = meta.get("record") if isinstance(meta.get("record"), dict) else None
    past = _Past(ts, history, _best_acc(folder, history), start, sha256=meta.get("sha256"))
    if (
        record is not None
        and record.get("epoch") == ts.epoch
        and ts.epoch > 0
        and (not history or history[-1]["epoch"] == ts.epoch - 1)
    ):
        history.append(record)  # saved in `last`, lost from metrics.jsonl by a crash
        log(
            f"note: {folder.join(METRICS)} lacked epoch {ts.epoch} (the run stopped while "
            f"saving it): restored from {path}"
        )
    if (
        job.primary
        and record is not None
        and record.get("epoch") == ts.epoch
        and ts.position == 0
        and start == LAST
    ):
        _put_back_best(job, spec, config, past, record, path)
    where = (
        f"at step {ts.position} of epoch {ts.epoch + 1}"
        if ts.position
        else f"after epoch {ts.epoch}"
    )
    log(
        f"resuming {job.out_dir} {where} (optimizer step {ts.step})"
        + (f" from {BEST}" if start == BEST else "")
    )
    return past


def _put_back_best(
    job: _Job, spec: TrainSpec, config: TrainConfig, past: _Past, record: dict, path: str
) -> None:
    """best.safetensors of the checkpoint's epoch when a crash lost it (its score beat best's)."""
    score = best_score(record)
    if score is not None and score > past.best_acc and not non_finite_leaves(past.ts.params, ""):
        save_best(job.folder, past.ts, config, data_sizes(spec.data), record)
        past.best_acc = score
        job.log(
            f"note: {job.folder.join(BEST)} was not saved for epoch {past.ts.epoch} (the "
            f"run stopped while saving it): saved from {path}"
        )


def _write_start(
    job: _Job, config: TrainConfig, spec: TrainSpec, past: _Past, found: list[str]
) -> None:
    """What the run directory holds before the first epoch: the files of a run it replaces
    (--overwrite) removed, config.json (first: a folder with config.json resumes) and the
    vocabulary of a run starting, metrics.jsonl rewritten (dropping epochs past the
    checkpoint, and a damaged last line)."""
    with together("writing the run directory"):
        if not job.primary:
            return
        folder = job.folder
        if job.overwrite and found:
            for name in (
                RESULTS,
                CURVES,
                HEALTH_PLOT,
                HEALTH_FILE,
                BEST,
                LAST,
                METRICS,
                VOCAB_FILE,
                CONFIG,
            ):
                if name in found:
                    folder.remove(name)
            job.log(
                f"--overwrite: removed {', '.join(n for n in found if n != LOCK_FILE)} of "
                f"the run that was in {job.out_dir}"
            )
        if not past.start:
            _write_json(CONFIG, config.to_dict(), folder)
            if spec.data.vocab is not None:
                spec.data.vocab.save(job.out_dir, folder=folder)
        jsonl.write(METRICS, past.history, folder=folder)


def _log_start(job: _Job, config: TrainConfig, spec: TrainSpec, ts: TrainState) -> None:
    """The line saying what trains on what, and on which devices; the rules in effect."""
    dp, processes = spec.dp, spec.processes
    devices = dp.size if dp is not None else None
    job.log(
        f"{spec.data!r}; {count_params(ts.params):,} parameters; grad={config.grad}; "
        f"device {jax.devices()[0].platform}"
        + (
            f" x {devices} (data parallel, batch {config.batch_size // devices} per device"
            + (f", {processes} processes" if processes > 1 else "")
            + (_sharded_note(dp, ts.params) if dp.shard_params else "")
            + ")"
            if devices
            else ""
        )
    )
    if spec.rules:
        job.log(f"backward rules: {', '.join(config.rules)}")


def _hooks(
    job: _Job, config: TrainConfig, spec: TrainSpec, past: _Past, run_dir: RunDirectory
) -> list[Hook]:
    """fit's hooks in a run: progress, log, gradient health, NaN replay, text metrics, early
    stopping, and the run directory."""
    return [
        *standard_hooks(
            config.epochs,
            progress=job.options.progress and job.primary,
            log=job.log,
            diagnostics=job.options.diagnostics,
            check_nans=job.options.check_nans,
        ),
        *([TextMetrics(job.log)] if spec.data.vocab is not None else []),
        *([EarlyStopping(config.early_stop, history=past.history)] if config.early_stop else []),
        run_dir,
    ]


def _results(
    job: _Job,
    config: TrainConfig,
    spec: TrainSpec,
    past: _Past,
    run_dir: RunDirectory,
    ts: TrainState,
    new: list[dict],
) -> dict:
    """The run's end: its curves and gradient-health plot, the test results of the last and
    the best checkpoints (results.json), logged."""
    history = past.history + new
    ts = _gathered(ts)  # several processes, sharded parameters: evaluated whole in each
    if not job.primary:  # process 0 writes the best checkpoint; no waiting for it here
        return final_results(spec.model, ts, spec.data, None, config)
    if past.start == BEST and not new:  # nothing trained: last is still the one that was lost
        run_dir._save_last(ts)
    what = f"{config.model} on {config.dataset}, grad={config.grad}"
    if history:
        plot_curves(history, CURVES, what, folder=job.folder)
    run_dir.health.plot(f"gradient health: {what}")
    results = final_results(spec.model, ts, spec.data, job.out_dir, config, folder=job.folder)
    _write_json(RESULTS, results, job.folder)
    job.log(results_line(results))
    return results


def results_line(results: dict) -> str:
    """The line reporting a run's final results (results.json)."""
    if "test_bpc" in results:
        line = (
            f"test loss {results['test_loss']:.4f} nats/char = {results['test_bpc']:.3f} "
            f"bits/char, perplexity {results['test_ppl']:.2f}, next-char accuracy "
            f"{results['test_acc']:.4f} (unigram baseline {results['unigram_loss']:.4f} "
            f"nats = {results['unigram_bpc']:.3f} bits/char)"
        )
        if "best_epoch" in results:
            line += (
                f"; best validation epoch {results['best_epoch']}: test "
                f"{results['best_test_bpc']:.3f} bits/char"
            )
        return line
    if "test_acc" not in results:
        return f"test loss {results['test_loss']:.4f}"
    line = f"test accuracy {results['test_acc']:.4f} (loss {results['test_loss']:.4f})"
    if "best_epoch" in results:
        line += (
            f"; best validation epoch {results['best_epoch']}: test accuracy "
            f"{results['best_test_acc']:.4f}"
        )
    return line


def _check_resumed(
    path: str, ts: TrainState, meta: dict, sizes: dict, n_steps: int, log: Callable
) -> None:
    """The checkpoint a run resumes from must be of this data (its sizes and fingerprint) and
    these epochs; a checkpoint from an older fnn that records no fingerprint, or no digest,
    is resumed with a note saying what could not be checked."""
    saved = meta.get("data")
    if not isinstance(saved, dict) or not saved:
        log(
            f"note: {path} records nothing of the data it was trained on (an older fnn): the "
            "data could not be checked against it"
        )
        saved = {}
    diff = ", ".join(
        f"{k} {saved.get(k)!r} then, {sizes[k]!r} now"
        for k in sizes
        if k != "sha256" and k in saved and saved.get(k) != sizes[k]
    )
    if not diff and "sha256" in saved and "sha256" in sizes and saved["sha256"] != sizes["sha256"]:
        diff = (
            f"the same sizes but other contents: sha256 {str(saved['sha256'])[:12]}... "
            f"then, {sizes['sha256'][:12]}... now"
        )
    if diff:
        raise ConfigError(
            f"{path} was trained on other data than this run loads ({diff}): "
            f"{option_flag('data_dir')} points at other files, or they changed"
        )
    if saved and "sha256" not in saved:
        log(
            f"note: {path} records no fingerprint of its data (an older fnn): only the sizes "
            "of the data were checked, not its contents"
        )
    if "sha256" not in meta:
        log(
            f"note: {path} carries no digest (an older fnn-checkpoint/1 file): it was loaded "
            "unverified"
        )
    if ts.step != ts.epoch * n_steps + ts.position:
        raise ConfigError(
            f"{path} was saved at optimizer step {ts.step} after {ts.epoch} "
            f"epochs (+{ts.position} steps), which does not fit this run's "
            f"{n_steps} steps per epoch: the batch size or the data changed"
        )


def _best_acc(folder: Folder, history: list[dict]) -> float:
    """The score (best_score) of best.safetensors, from its metadata once its digest is
    checked (a damaged one is refused: CheckpointError naming it), else the best in history."""
    if folder.exists(BEST):
        try:
            meta = verify_checkpoint(BEST, folder=folder).meta()
        except CheckpointError as e:
            raise CheckpointError(
                f"{e}. The run's best checkpoint is damaged: remove "
                f"{folder.join(BEST)} to resume (the best of the epochs to "
                "come is then saved), or restore it from a copy"
            ) from None
        score = best_score(
            {k: meta[k] for k in ("val_acc", "val_loss") if isinstance(meta.get(k), (int, float))}
        )
        if score is not None:
            return float(score)
    return max((best_score(r) for r in history if best_score(r) is not None), default=-math.inf)


def final_results(
    model,
    ts: TrainState,
    data,
    out_dir: str | None,
    config: TrainConfig,
    *,
    folder: Folder | None = None,
) -> dict:
    """Test loss/accuracy of the final params and of the best checkpoint in `out_dir` (None:
    the final params only; folder: its Folder)."""
    evaluate = make_evaluate(model, loss=config.loss)
    if jax.process_count() > 1:  # each process evaluates alone, on one device of its own
        ts = dataclasses.replace(
            ts,
            params=jax.tree_util.tree_map(np.asarray, ts.params),
            state=jax.tree_util.tree_map(np.asarray, ts.state),
        )
    x, y = jax.device_put(data.x_test), jax.device_put(data.y_test)
    last = evaluate(ts.params, ts.state, x, y)
    results = {"epoch": ts.epoch, "step": ts.step, "test_loss": float(last["loss"])}
    if "accuracy" in last:
        results["test_acc"] = float(last["accuracy"])
    text = getattr(data, "vocab", None) is not None
    if text:
        results.update(
            text_metrics(results["test_loss"], "test"),
            unigram_loss=data.unigram_loss,
            unigram_bpc=data.unigram_loss / math.log(2),
        )
    best_path = None if out_dir is None else os.path.join(out_dir, BEST)
    there = best_path and (folder.exists(BEST) if folder is not None else os.path.isfile(best_path))
    if there:
        best, meta = load_checkpoint(
            BEST if folder is not None else best_path,
            {"params": ts.params, "state": ts.state},
            folder=folder,
        )
        r = evaluate(best["params"], best["state"], x, y)
        results.update(best_epoch=meta.get("epoch"), best_test_loss=float(r["loss"]))
        if "accuracy" in r:
            results.update(best_val_acc=meta.get("val_acc"), best_test_acc=float(r["accuracy"]))
        else:
            results["best_val_loss"] = meta.get("val_loss")
        if text:
            results["best_test_bpc"] = float(r["loss"]) / math.log(2)
    return results
