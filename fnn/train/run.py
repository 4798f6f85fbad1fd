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
    RUN_DIR/.lock             held by the process that runs it (fnn.train.lock)

The run directory is written by a fit hook, RunDirectory, after each epoch and on Ctrl-C.
A run (new or resumed) holds the directory's lock for its whole life, so a second process on
the same directory is refused at once; the check that a new directory holds no run and the
writing of its config happen under the lock. Before anything is written, the data (training,
validation and test sets) is checked against the model. A resumed run validates what it
reads: config.json as the command line's options are validated, then against the config
stored in the checkpoint (fnn.train.config.resume_config), the data against the sizes the
checkpoint was trained on, metrics.jsonl line by line (a damaged last line is dropped, and
said so).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from typing import Callable

import jax

from fnn.nn import SEQUENCE_MODELS, build_model, count_params, summary
from fnn.train import jsonl
from fnn.train.checkpoint import (CheckpointError, atomic_write, load_checkpoint,
                                  load_train_state, read_header, save_train_state)
from fnn.train.config import (RESUME_MAY_CHANGE, ConfigError, TrainConfig, differences,
                              option_flag, resume_config)
from fnn.train.data import load_dataset
from fnn.train.epoch import make_evaluate, steps_per_epoch
from fnn.train.health_log import HealthLog
from fnn.train.hooks import Hook
from fnn.train.lock import LOCK_FILE, RunDirError, RunLock
from fnn.train.loop import CHUNK_SECONDS, fit
from fnn.train.optim import make_optimizer, make_schedule
from fnn.train.parallel import check_shard, data_parallel, gather
from fnn.train.plot import plot_curves
from fnn.train.readers import DataError
from fnn.train.state import TrainState, init_train_state
from fnn.train.rules import check_rules, make_rules
from fnn.train.text import check_vocab
from fnn.train.validate import check_fit_inputs

__all__ = ["BEST", "CONFIG", "LAST", "METRICS", "RESUME_MAY_CHANGE", "RunDirectory",
           "TrainConfig", "final_results", "read_config", "setup", "train_run"]

LAST, BEST, CONFIG, METRICS = "last.safetensors", "best.safetensors", "config.json", "metrics.jsonl"
RUN_FILES = (CONFIG, METRICS, LAST, BEST)  # any of them: the directory holds a run


TEXT_EPOCHS = 2  # a text epoch of the default corpus is ~1000 steps, ~1.5 min on 2 CPU cores


def with_defaults(given: dict) -> dict:
    """The options of a new run with the defaults that depend on others filled in: a sequence
    model trains on text and text trains the transformer by default, for TEXT_EPOCHS epochs."""
    given = dict(given)
    if given.get("model") in SEQUENCE_MODELS:
        given.setdefault("dataset", "text")
    if given.get("dataset") == "text":
        given.setdefault("model", "transformer")
        given.setdefault("epochs", TEXT_EPOCHS)
    return given


def check_model_data(config: TrainConfig) -> None:
    """Sequence models train on text and image models on images: a clear error otherwise."""
    text_model = config.model in SEQUENCE_MODELS
    if text_model != (config.dataset == "text"):
        raise ValueError(
            f"model {config.model!r} " + (
                f"reads token sequences; train it with --dataset text, not {config.dataset!r}"
                if text_model else f"reads images; a text dataset needs a sequence model "
                f"(--model {'|'.join(SEQUENCE_MODELS)})"))


def read_config(run_dir: str) -> TrainConfig:
    """The TrainConfig saved in a run directory, every value validated as on the command line."""
    path = os.path.join(run_dir, CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has no {CONFIG}")
    try:
        with open(path) as f:
            d = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise ConfigError(f"{run_dir} is not a usable run directory: {path} is damaged ({e}); "
                          "restore it, or start a new run with --out") from None
    return TrainConfig.from_dict(d, source=path)


def _write_json(path: str, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def setup(config: TrainConfig):
    """(data, model, optimizer, schedule) of a config."""
    check_model_data(config)
    config.training_loss()  # a bad loss option fails before anything is loaded
    check_rules(config.rules, config.grad)
    data = load_dataset(config.dataset, config.data_dir, val_fraction=config.val_fraction,
                        limit=config.limit or None, context=config.context)
    model = build_model(config.model, data.num_classes, **config.model_options(),
                        **({"remat": True} if config.remat else {}))  # each block checkpointed
    total = steps_per_epoch(len(data.x_train), config.batch_size) * config.epochs
    schedule = make_schedule(config.schedule, config.lr, total_steps=total)
    optimizer = make_optimizer(config.optimizer, schedule, weight_decay=config.weight_decay,
                               clip=config.clip or None)
    return data, model, optimizer, schedule


def data_sizes(data) -> dict:
    """What a checkpoint records of the data it was trained on (checked on resume)."""
    return {"train": len(data.x_train), "val": len(data.x_val), "test": len(data.x_test),
            "input_shape": list(data.input_shape)}


class RunDirectory(Hook):
    """The fit hook of train_run: after each epoch, the gradient-health rows (popped from the
    record) to diagnostics.jsonl, the record to metrics.jsonl, the checkpoints last and (on a
    better validation score than `best_acc`: accuracy, or minus the loss for text and
    regression) best; on Ctrl-C, `last` where training stopped (in the middle of an epoch: with
    the position and the epoch's batch order). config.json is (re)written with the first
    checkpoint when `write_config` (a resumed run whose --epochs or --data-dir changed). Text
    runs add bits per character and perplexity to the record and log them. Only the primary
    process writes."""

    def __init__(self, out_dir: str, config: TrainConfig, *, best_acc: float,
                 health: HealthLog | None, primary: bool, data: dict | None = None,
                 write_config: bool = False, log: Callable | None = None):
        self.out_dir, self.config, self.best_acc = out_dir, config, best_acc
        self.health, self.primary, self.data = health, primary, data or {}
        self.log = log or (lambda line: None)
        self.metrics_path = os.path.join(out_dir, METRICS)
        self.write_config = write_config

    def _save_last(self, ts: TrainState) -> None:
        save_train_state(os.path.join(self.out_dir, LAST), ts, self.config.to_dict(),
                         data=self.data)
        if self.write_config:
            _write_json(os.path.join(self.out_dir, CONFIG), self.config.to_dict())
            self.write_config = False

    def on_epoch_end(self, ts: TrainState, record: dict):
        ts = _gathered(ts)  # every process, before only the primary one writes
        rows = record.pop("diagnostics", [])
        if self.config.dataset == "text":
            record.update(text_metrics(record.get("train_loss"), "train"),
                          **text_metrics(record.get("val_loss"), "val"))
            if "val_bpc" in record:
                self.log(f"  val {record['val_bpc']:.3f} bits/char, perplexity "
                         f"{record['val_ppl']:.2f}")
        if not self.primary:
            return
        self.health.write(rows)
        jsonl.append(self.metrics_path, [record])
        score = best_score(record)
        if score is not None and score > self.best_acc:  # no validation: no best
            self.best_acc = score
            extra = ({"val_acc": record["val_acc"]} if "val_acc" in record
                     else {"val_loss": record["val_loss"]})
            save_train_state(os.path.join(self.out_dir, BEST), ts, self.config.to_dict(),
                             data=self.data, **extra)
        self._save_last(ts)

    def on_interrupt(self, ts: TrainState):
        ts = _gathered(ts)
        if self.primary:
            self._save_last(ts)


def _sharded_note(dp, params) -> str:
    """', parameters sharded: k of n leaves split, x of y MiB per device' for the log line."""
    leaves = jax.tree_util.tree_leaves(params)
    split = [leaf for leaf in leaves if not dp.param_sharding(leaf).is_fully_replicated]
    whole = sum(leaf.size * leaf.dtype.itemsize for leaf in leaves)
    mine = whole - sum(leaf.size * leaf.dtype.itemsize for leaf in split) * (1 - 1 / dp.size)
    if not split:
        return (", parameters sharded: none split, every leaf is under "
                f"{dp.min_shard_size:,} elements or has no dimension divisible by {dp.size}")
    return (f", parameters sharded: {len(split)} of {len(leaves)} leaves split, "
            f"{mine / 2**20:.2f} of {whole / 2**20:.2f} MiB per device")


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
    return {f"{split}_bpc": loss_nats / math.log(2),
            f"{split}_ppl": math.exp(min(loss_nats, 700.0))}


def _holds_run(out_dir: str) -> list[str]:
    return [n for n in RUN_FILES if os.path.exists(os.path.join(out_dir, n))]


def _check_new(out_dir: str) -> None:
    """RunDirError unless `out_dir` holds no run (it may exist, empty or with other files)."""
    found = _holds_run(out_dir)
    if not found:
        return
    if not os.path.exists(os.path.join(out_dir, LAST)) and CONFIG in found:
        raise RunDirError(f"{out_dir} already holds a run that stopped before its first "
                          f"checkpoint: start it from the beginning with its own config by "
                          f"`--resume {out_dir}`, or choose another --out")
    raise RunDirError(f"{out_dir} already holds a run ({', '.join(found)}): continue it with "
                      f"--resume {out_dir}, or choose another --out")


def _checkpoint_config(path: str) -> TrainConfig:
    """The config stored in checkpoint `path` (its header only), validated."""
    header = read_header(path)
    meta = header.meta()
    if not header.is_fnn or not isinstance(meta.get("config"), dict) or not meta["config"]:
        raise CheckpointError(f"{path} is not an fnn training checkpoint with its run's config "
                              "(a file from elsewhere, or from an older fnn): it cannot be "
                              "resumed; start a new run (fnn.train.load_params loads its "
                              "parameters in Python)")
    return TrainConfig.from_dict(meta["config"], source=f"the config stored in {path}")


def _resume_config(out_dir: str, config: TrainConfig | None, overrides: dict | None):
    """(the config a resumed run continues with (see resume_config), the one in config.json)."""
    saved = read_config(out_dir)
    overrides = dict(overrides or {})
    if config is not None:  # a config given in Python: its differences are the overrides
        overrides.update({k: getattr(config, k) for k in differences(saved, config)})
    last = os.path.join(out_dir, LAST)
    checkpoint = _checkpoint_config(last) if os.path.exists(last) else None
    merged = resume_config(saved, checkpoint, overrides,
                           saved_file=os.path.join(out_dir, CONFIG), checkpoint_file=last)
    return merged, saved


def train_run(config: TrainConfig | None, out_dir: str, *, resume: bool = False,
              overrides: dict | None = None, progress: bool = True, log: Callable | None = None,
              diagnostics: int = 0, check_nans: bool = False, devices: int | None = None,
              chunk_seconds: float | None = CHUNK_SECONDS, shard: str | None = None) -> dict:
    """Train per `config` into `out_dir` (or continue the run there, resume=True).

    resume=True: the run's config.json, validated and matched against the config in its last
    checkpoint (a ConfigError names any key that differs); `overrides` ({"epochs": 40},
    {"data_dir": ...}: only RESUME_MAY_CHANGE keys) or a `config` that differs from it in
    those keys change them. A directory whose run stopped before its first checkpoint is
    started from the beginning with its config.

    log(line) gets the progress lines (the model summary, one line per epoch, gradient health,
    the results, notes; None: silent). diagnostics=N > 0: gradient health every N steps into
    diagnostics.jsonl and .png. check_nans: name the gate behind a non-finite loss or model
    state (fit's check_nans). devices=N: data parallel over N devices (fit's devices); not
    part of the config, a resumed run may change it. chunk_seconds: fit's. shard="params":
    parameters and optimizer state split across the devices as well (fit's shard; devices
    None: all of them); not part of the config either (it does not change the math).

    The directory is locked for the run's life (RunDirError if another process has it). On
    Ctrl-C the state is saved to last.safetensors and fit's TrainingInterrupted propagates.

    Several processes (multi-host JAX): every process trains, only process 0 locks and writes
    the run directory and logs; the others return the final test results of their (identical)
    params. With shard="params" the processes gather the parameters and optimizer state after
    each epoch (a collective), so that process 0 can write them whole.

    Returns the final results: {"test_loss", "test_acc", "best_epoch", "best_test_acc", ...}.
    """
    primary = jax.process_index() == 0  # the one process that writes and logs
    log = log if log and primary else (lambda line: None)
    if not isinstance(out_dir, str) or not out_dir.strip():
        raise ValueError(f"the run directory (--out) must be a directory name, got {out_dir!r}")
    if resume and not os.path.isfile(os.path.join(out_dir, CONFIG)):
        read_config(out_dir)  # the error: not a run directory (nothing is created)
    if config is None and not resume:
        raise ValueError("train_run needs a config for a new run")
    if not primary:
        return _run_locked(config, out_dir, resume, overrides, primary, log, progress,
                           diagnostics, check_nans, devices, chunk_seconds, shard)
    created = not os.path.exists(out_dir)
    lock = RunLock(out_dir).acquire()
    try:
        return _run_locked(config, out_dir, resume, overrides, primary, log, progress,
                           diagnostics, check_nans, devices, chunk_seconds, shard)
    except BaseException:
        if created and os.listdir(out_dir) == [LOCK_FILE]:  # failed before writing anything
            lock.release(remove=True)
            with contextlib.suppress(OSError):
                os.rmdir(out_dir)
        raise
    finally:
        lock.release()


def _run_locked(config, out_dir, resume, overrides, primary, log, progress, diagnostics,
                check_nans, devices, chunk_seconds, shard=None) -> dict:
    rewrite_config, saved = False, None
    if resume:
        config, saved = _resume_config(out_dir, config, overrides)
        rewrite_config = bool(differences(saved, config))
    elif primary:
        _check_new(out_dir)
    data, model, optimizer, schedule = setup(config)
    if not len(data.x_test):
        raise DataError(f"the test set of {config.dataset} is empty (x_test "
                        f"{tuple(data.x_test.shape)}): the run could not report its results")
    # training, validation and test sets against the model, before anything is written
    check_fit_inputs(model, data, loss=config.training_loss(), batch_size=config.batch_size,
                     epochs=config.epochs)
    dp = None
    if devices or check_shard(shard) == "params":
        dp = data_parallel(devices, shard)
        dp.check_batch_size(config.batch_size, "--batch-size")
        devices = dp.size
    # sharded parameters: made split on the mesh, never whole on one device
    ts = init_train_state(model, optimizer, data.input_shape, config.seed, place=dp)
    sizes, n_steps = data_sizes(data), steps_per_epoch(len(data.x_train), config.batch_size)
    metrics_path = os.path.join(out_dir, METRICS)
    last = os.path.join(out_dir, LAST)
    history, best_acc = [], -math.inf
    if resume and os.path.isfile(last):
        ts, meta = load_train_state(last, ts)
        if dp is not None and dp.shard_params:  # split at once; the whole copy is let go
            ts = dp.place_train_state(ts)
        _check_resumed(last, ts, meta, sizes, n_steps)
        if data.vocab is not None:
            check_vocab(out_dir, data.vocab)
        history, note = jsonl.read(metrics_path)
        if note:
            log(f"note: {note}")
        history = [r for r in history if r.get("epoch", 0) <= ts.epoch]
        best_acc = _best_acc(os.path.join(out_dir, BEST), history)
        where = (f"at step {ts.position} of epoch {ts.epoch + 1}" if ts.position
                 else f"after epoch {ts.epoch}")
        log(f"resuming {out_dir} {where} (optimizer step {ts.step})")
        if saved.epochs != config.epochs and config.schedule != "constant":
            log(f"note: the {config.schedule} learning-rate schedule now spans "
                f"{config.epochs} epochs instead of {saved.epochs}; the rate continues from "
                "its value on the new schedule")
    elif resume:
        log(f"{out_dir} has no checkpoint yet (it stopped before its first one): starting the "
            "run from the beginning with its config")
        if primary and data.vocab is not None:
            data.vocab.save(out_dir)
        log(summary(model, data.input_shape))
        rewrite_config = True
    else:
        if primary and data.vocab is not None:
            data.vocab.save(out_dir)
        log(summary(model, data.input_shape))
        rewrite_config = True
    if primary:
        jsonl.write(metrics_path, history)  # rewritten: drops epochs past the checkpoint
        if rewrite_config and not os.path.isfile(last):
            _write_json(os.path.join(out_dir, CONFIG), config.to_dict())
            rewrite_config = False
    log(f"{data!r}; {count_params(ts.params):,} parameters; grad={config.grad}; "
        f"device {jax.devices()[0].platform}"
        + (f" x {devices} (data parallel, batch {config.batch_size // devices} per device"
           + (_sharded_note(dp, ts.params) if dp is not None and dp.shard_params else "")
           + ")" if devices else ""))
    health = HealthLog(out_dir, upto_epoch=ts.epoch, log=log) if primary else None
    run_dir = RunDirectory(out_dir, config, health=health, primary=primary, best_acc=best_acc,
                           data=sizes, write_config=rewrite_config, log=log)
    rules = make_rules(config.rules, ts.params, config.seed)
    if rules:
        log(f"backward rules: {', '.join(config.rules)}")
    ts, new = fit(model, optimizer, data, epochs=config.epochs, batch_size=config.batch_size,
                  grad=config.grad, loss=config.training_loss(), l2=config.l2, seed=config.seed,
                  start=ts,
                  schedule=schedule, progress=progress and primary, log=log,
                  diagnostics=diagnostics, check_nans=check_nans, devices=devices,
                  hooks=[run_dir], rules=rules, chunk_seconds=chunk_seconds, shard=shard,
                  remat=config.remat)
    history += new
    ts = _gathered(ts)  # several processes, sharded parameters: evaluated whole in each
    if not primary:  # process 0 writes the best checkpoint; no waiting for it here
        return final_results(model, ts, data, None, config)
    if history:
        plot_curves(history, os.path.join(out_dir, "curves.png"),
                    f"{config.model} on {config.dataset}, grad={config.grad}")
    health.plot(f"gradient health: {config.model} on {config.dataset}, grad={config.grad}")
    results = final_results(model, ts, data, out_dir, config)
    _write_json(os.path.join(out_dir, "results.json"), results)
    if "test_bpc" in results:
        line = (f"test loss {results['test_loss']:.4f} nats/char = {results['test_bpc']:.3f} "
                f"bits/char, perplexity {results['test_ppl']:.2f}, next-char accuracy "
                f"{results['test_acc']:.4f} (unigram baseline {results['unigram_loss']:.4f} "
                f"nats = {results['unigram_bpc']:.3f} bits/char)")
        if "best_epoch" in results:
            line += (f"; best validation epoch {results['best_epoch']}: test "
                     f"{results['best_test_bpc']:.3f} bits/char")
    elif "test_acc" not in results:
        line = f"test loss {results['test_loss']:.4f}"
    else:
        line = f"test accuracy {results['test_acc']:.4f} (loss {results['test_loss']:.4f})"
    if "best_epoch" in results and "test_bpc" not in results and "test_acc" in results:
        line += (f"; best validation epoch {results['best_epoch']}: test accuracy "
                 f"{results['best_test_acc']:.4f}")
    log(line)
    return results


def _check_resumed(path: str, ts: TrainState, meta: dict, sizes: dict, n_steps: int) -> None:
    """The checkpoint a run resumes from must be of this data and these epochs."""
    saved = meta.get("data")
    if isinstance(saved, dict) and saved and saved != sizes:
        diff = ", ".join(f"{k} {saved.get(k)!r} then, {sizes[k]!r} now" for k in sizes
                         if saved.get(k) != sizes[k])
        raise ConfigError(f"{path} was trained on other data than this run loads ({diff}): "
                          f"{option_flag('data_dir')} points at other files, or they changed")
    if ts.step != ts.epoch * n_steps + ts.position:
        raise ConfigError(f"{path} was saved at optimizer step {ts.step} after {ts.epoch} "
                          f"epochs (+{ts.position} steps), which does not fit this run's "
                          f"{n_steps} steps per epoch: the batch size or the data changed")


def _best_acc(path: str, history: list[dict]) -> float:
    """The score (best_score) of best.safetensors, from its metadata, else the best in
    history."""
    if os.path.isfile(path):
        try:
            meta = read_header(path).meta()
            score = best_score({k: meta[k] for k in ("val_acc", "val_loss")
                                if isinstance(meta.get(k), (int, float))})
            if score is not None:
                return float(score)
        except CheckpointError:
            pass
    return max((best_score(r) for r in history if best_score(r) is not None), default=-math.inf)


def final_results(model, ts: TrainState, data, out_dir: str | None, config: TrainConfig) -> dict:
    """Test loss/accuracy of the final params and of the best checkpoint in `out_dir` (None:
    the final params only)."""
    evaluate = make_evaluate(model, loss=config.loss)
    x, y = jax.device_put(data.x_test), jax.device_put(data.y_test)
    last = evaluate(ts.params, ts.state, x, y)
    results = {"epoch": ts.epoch, "step": ts.step, "test_loss": float(last["loss"])}
    if "accuracy" in last:
        results["test_acc"] = float(last["accuracy"])
    text = getattr(data, "vocab", None) is not None
    if text:
        results.update(text_metrics(results["test_loss"], "test"),
                       unigram_loss=data.unigram_loss,
                       unigram_bpc=data.unigram_loss / math.log(2))
    best_path = None if out_dir is None else os.path.join(out_dir, BEST)
    if best_path and os.path.isfile(best_path):
        best, meta = load_checkpoint(best_path, {"params": ts.params, "state": ts.state})
        r = evaluate(best["params"], best["state"], x, y)
        results.update(best_epoch=meta.get("epoch"), best_test_loss=float(r["loss"]))
        if "accuracy" in r:
            results.update(best_val_acc=meta.get("val_acc"), best_test_acc=float(r["accuracy"]))
        else:
            results["best_val_loss"] = meta.get("val_loss")
        if text:
            results["best_test_bpc"] = float(r["loss"]) / math.log(2)
    return results
