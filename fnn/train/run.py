"""A training run in a directory: what `python -m fnn train` does.

    RUN_DIR/config.json       the TrainConfig of the run
    RUN_DIR/metrics.jsonl     one JSON record per epoch (see fnn.train.fit)
    RUN_DIR/last.safetensors  the TrainState after the latest epoch (what --resume loads)
    RUN_DIR/best.safetensors  the TrainState with the best validation accuracy so far
    RUN_DIR/curves.png        loss and accuracy curves
    RUN_DIR/results.json      final test loss and accuracy (last and best checkpoints); for text,
                              also bits per character and perplexity
    RUN_DIR/vocab.json        text runs: the byte vocabulary (what `python -m fnn sample` reads)
    RUN_DIR/diagnostics.jsonl, diagnostics.png   gradient health per layer every N steps
                              (train_run(..., diagnostics=N); fnn.train.health_log)

The run directory is written by a fit hook, RunDirectory, after each epoch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Callable

import jax

from fnn.nn import SEQUENCE_MODELS, build_model, count_params, summary
from fnn.train.checkpoint import (atomic_write, load_train_state, read_checkpoint, restore,
                                  save_train_state)
from fnn.train.data import load_dataset
from fnn.train.epoch import make_evaluate, steps_per_epoch
from fnn.train.health_log import HealthLog
from fnn.train.hooks import Hook
from fnn.train.loop import fit
from fnn.train.optim import make_optimizer, make_schedule
from fnn.train.parallel import data_parallel
from fnn.train.plot import plot_curves
from fnn.train.state import TrainState, init_train_state
from fnn.train.step import cross_entropy, get_loss
from fnn.train.rules import check_rules, make_rules
from fnn.train.text import check_vocab

LAST, BEST = "last.safetensors", "best.safetensors"


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a run. The defaults train the MLP on digits to >= 97% test
    accuracy with hand-written gradients in well under a minute on 2 CPU cores."""

    model: str = "mlp"
    dataset: str = "digits"
    data_dir: str | None = None
    grad: str = "custom"
    optimizer: str = "adam"
    lr: float = 1e-3
    schedule: str = "cosine"
    epochs: int = 30
    batch_size: int = 32
    seed: int = 0
    weight_decay: float = 0.0
    clip: float = 0.0
    l2: float = 0.0
    loss: str = "softmax_cross_entropy"
    label_smoothing: float = 0.0
    val_fraction: float = 0.1
    hidden: tuple = (256,)
    channels: tuple | None = None
    activation: str = "relu"
    init: str = "he"
    dropout: float = 0.0
    limit: int = 0
    context: int = 128
    width: int = 128
    depth: int = 2
    heads: int = 4
    rules: tuple = ()  # backward-rule overrides, "GATE=RULE[:opt=v]" (fnn.train.rules)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**d)

    def training_loss(self):
        """The loss fit trains with: `loss` by name, with label_smoothing when it is set."""
        if not self.label_smoothing:
            return self.loss
        if get_loss(self.loss).name != "softmax_cross_entropy":
            raise ValueError(f"label_smoothing applies to the cross-entropy loss, not to "
                             f"{self.loss!r}")
        return cross_entropy(label_smoothing=self.label_smoothing)

    def model_options(self) -> dict:
        """Keyword options of the model builder (fnn.nn.build_model)."""
        if self.model == "mlp":
            return {"hidden": tuple(self.hidden), "activation": self.activation,
                    "init": self.init, "dropout": self.dropout}
        if self.model == "cnn":
            opts = {"activation": self.activation, "init": self.init, "dropout": self.dropout}
            return {**opts, "channels": tuple(self.channels)} if self.channels else opts
        if self.model in ("rnn", "lstm", "gru"):
            return {"hidden": tuple(self.hidden), "dropout": self.dropout}
        if self.model == "transformer":
            return {"width": self.width, "depth": self.depth, "heads": self.heads,
                    "dropout": self.dropout}
        return {"init": self.init, **({"widths": tuple(self.channels)} if self.channels else {})}


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
    """The TrainConfig saved in a run directory."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has no config.json")
    try:
        with open(path) as f:
            d = json.load(f)
        if not isinstance(d, dict):
            raise ValueError(f"it holds a JSON {type(d).__name__}, not an object")
        return TrainConfig.from_dict(d)
    except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{run_dir} is not a usable run directory: {path} is damaged ({e}); "
                         "start a new run with --out") from None


def _read_history(path: str, upto: int) -> list[dict]:
    """Epoch records of metrics.jsonl up to epoch `upto` (later ones never reached a checkpoint)."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if r.get("epoch", 0) <= upto]


def _write_json(path: str, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def setup(config: TrainConfig):
    """(data, model, optimizer, schedule) of a config."""
    check_model_data(config)
    config.training_loss()  # a bad loss option fails before anything is loaded
    check_rules(config.rules, config.grad)
    data = load_dataset(config.dataset, config.data_dir, val_fraction=config.val_fraction,
                        limit=config.limit or None, context=config.context)
    model = build_model(config.model, data.num_classes, **config.model_options())
    total = steps_per_epoch(len(data.x_train), config.batch_size) * config.epochs
    schedule = make_schedule(config.schedule, config.lr, total_steps=total)
    optimizer = make_optimizer(config.optimizer, schedule, weight_decay=config.weight_decay,
                               clip=config.clip or None)
    return data, model, optimizer, schedule


class RunDirectory(Hook):
    """The fit hook of train_run: after each epoch, the gradient-health rows (popped from the
    record) to diagnostics.jsonl, the record to metrics.jsonl, the checkpoints last and (on a
    better validation score than `best_acc`: accuracy, or minus the loss for text and
    regression) best. Text runs add bits per character and perplexity to the record and log
    them. Only the primary process writes."""

    def __init__(self, out_dir: str, config: TrainConfig, *, best_acc: float,
                 health: HealthLog | None, primary: bool, log: Callable | None = None):
        self.out_dir, self.config, self.best_acc = out_dir, config, best_acc
        self.health, self.primary = health, primary
        self.log = log or (lambda line: None)
        self.metrics_path = os.path.join(out_dir, "metrics.jsonl")

    def on_epoch_end(self, ts: TrainState, record: dict):
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
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        score = best_score(record)
        if score is not None and score > self.best_acc:  # no validation: no best
            self.best_acc = score
            extra = ({"val_acc": record["val_acc"]} if "val_acc" in record
                     else {"val_loss": record["val_loss"]})
            save_train_state(os.path.join(self.out_dir, BEST), ts, self.config.to_dict(),
                             **extra)
        save_train_state(os.path.join(self.out_dir, LAST), ts, self.config.to_dict())


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


def train_run(config: TrainConfig, out_dir: str, *, resume: bool = False, progress: bool = True,
              log: Callable | None = None, diagnostics: int = 0, check_nans: bool = False,
              devices: int | None = None) -> dict:
    """Train per `config` into `out_dir` (or continue the run there, resume=True).

    log(line) gets the progress lines (the model summary, one line per epoch, gradient health,
    the results; None: silent). diagnostics=N > 0: gradient health every N steps into
    diagnostics.jsonl and .png. check_nans: name the gate behind a non-finite loss (fit's
    check_nans). devices=N: data parallel over N devices (fit's devices); not part of the
    config, a resumed run may change it.

    Several processes (multi-host JAX): every process trains, only process 0 writes the run
    directory and logs; the others return the final test results of their (identical) params.

    Returns the final results: {"test_loss", "test_acc", "best_epoch", "best_test_acc", ...}.
    """
    primary = jax.process_index() == 0  # the one process that writes and logs
    log = log if log and primary else (lambda line: None)
    data, model, optimizer, schedule = setup(config)
    if devices:  # fail before the run directory is made
        data_parallel(devices).check_batch_size(config.batch_size, "--batch-size")
    ts = init_train_state(model, optimizer, data.input_shape, config.seed)
    metrics_path = os.path.join(out_dir, "metrics.jsonl")
    if resume:
        if not os.path.isfile(os.path.join(out_dir, LAST)):
            raise FileNotFoundError(f"{out_dir} has no {LAST}: the run stopped before its first "
                                    "epoch ended; start it again without --resume")
        ts, _ = load_train_state(os.path.join(out_dir, LAST), ts)
        history = _read_history(metrics_path, ts.epoch)
        if data.vocab is not None:
            check_vocab(out_dir, data.vocab)
        log(f"resuming {out_dir} after epoch {ts.epoch} (step {ts.step})")
    elif primary:
        os.makedirs(out_dir, exist_ok=True)
        if os.path.exists(os.path.join(out_dir, "config.json")):
            raise FileExistsError(f"{out_dir} already holds a run: continue it with --resume "
                                  f"{out_dir}, or choose another --out")
        history = []
        if data.vocab is not None:
            data.vocab.save(out_dir)
        log(summary(model, data.input_shape))
    else:
        history = []
    if primary:
        with open(metrics_path, "w") as f:  # rewritten: drops epochs past the checkpoint
            f.writelines(json.dumps(r) + "\n" for r in history)
        _write_json(os.path.join(out_dir, "config.json"), config.to_dict())
    log(f"{data!r}; {count_params(ts.params):,} parameters; grad={config.grad}; "
        f"device {jax.devices()[0].platform}"
        + (f" x {devices} (data parallel, batch {config.batch_size // devices} per device)"
           if devices else ""))
    health = HealthLog(out_dir, upto_epoch=ts.epoch, log=log) if primary else None
    run_dir = RunDirectory(out_dir, config, health=health, primary=primary,
                           best_acc=max((best_score(r) for r in history
                                         if best_score(r) is not None), default=-math.inf),
                           log=log)
    rules = make_rules(config.rules, ts.params, config.seed)
    if rules:
        log(f"backward rules: {', '.join(config.rules)}")
    ts, new = fit(model, optimizer, data, epochs=config.epochs, batch_size=config.batch_size,
                  grad=config.grad, loss=config.training_loss(), l2=config.l2, seed=config.seed, start=ts,
                  schedule=schedule, progress=progress and primary, log=log,
                  diagnostics=diagnostics, check_nans=check_nans, devices=devices,
                  hooks=[run_dir], rules=rules)
    history += new
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
        tensors, meta = read_checkpoint(best_path)
        best = restore(tensors, {"params": ts.params, "state": ts.state})
        r = evaluate(best["params"], best["state"], x, y)
        results.update(best_epoch=meta.get("epoch"), best_test_loss=float(r["loss"]))
        if "accuracy" in r:
            results.update(best_val_acc=meta.get("val_acc"), best_test_acc=float(r["accuracy"]))
        else:
            results["best_val_loss"] = meta.get("val_loss")
        if text:
            results["best_test_bpc"] = float(r["loss"]) / math.log(2)
    return results
