"""What fit does besides training, as hooks: a progress bar, the per-epoch log line, a callback,
early stopping.

fit is an epoch loop; everything else it does is a Hook, an object with some of these methods
(the base class gives the others as no-ops). No hook depends on another: each sees the same
state and the same record, at these points, in this order:

    on_fit_start(spec, ts)            fit is about to train `spec` (fnn.train.TrainSpec) from
                                      ts: take what the hook needs of it, refuse what cannot
                                      work (raise)
    init_carry(ts) -> value           a hook with a `slot` (a name) keeps state inside the
    in_step(value, before, after,     compiled loop under it: init_carry gives its value when
            batch, key)               an epoch (or the rest of one) starts; in_step, traced into
        -> (value, metrics)           the step, sees each step's (params, state, opt_state)
                                      `before` and `after` it, its batch and key, and returns
                                      the slot's next value and metrics of its own for the step
                                      (a dict; a hook without a slot gets None and may still
                                      return metrics)
    on_compiling(seconds)             XLA has been compiling the epoch's program for `seconds`
                                      (every 50 ms while it does; hooks whose `progress` is True)
    on_epoch_start(ts, n_steps)       the epoch (ts.epoch + 1) is about to run (from step
                                      ts.position when ts was saved in the middle of it)
    on_progress(done)                 after each compiled chunk of the epoch, with the steps of
                                      the epoch done; only for hooks whose `progress` is True
    on_epoch_stop()                   the epoch's chunks are done (or one raised)
    after_epoch(before, params,       it ran: `before` is the TrainState it started from (kept
                losses, key)          when a hook has donate = False), `losses` its per-step
                                      losses
    on_metrics(metrics, record)       the epoch's per-step metrics (the in_step metrics too) and
                                      its record (losses, accuracies, validation, time): add to
                                      the record; raise to stop training with an error (the
                                      NaN replay)
    should_stop(ts, record) -> str    the record is complete: a reason to end training after
                                      this epoch (early stopping), else None; fit puts the
                                      reasons in record["stopped"] and returns after the epoch
    on_epoch_end(ts, record)          the record is final and in the history: log it, save a
                                      checkpoint (fnn.train.run), ...
    on_interrupt(ts)                  Ctrl-C stopped training: ts is the state it stopped at,
                                      in the middle of epoch ts.epoch + 1 when ts.position > 0
                                      (save it: fnn.train.run); fit then raises
                                      TrainingInterrupted

Attributes: `slot` (default None): the name of the hook's state in the compiled loop;
`donate` (default True): False keeps each epoch's inputs alive for after_epoch instead of
donating them; `progress` (default False): True to get on_progress and on_compiling.

The hooks here: ProgressBar (fit's progress=True), EpochLog (log=), Callback (callback=),
EarlyStopping (`train --early-stop`). The others live with what they do:
fnn.train.diagnostics.HealthMonitor (diagnostics=N), fnn.train.nancheck.NanReplay
(check_nans=True), fnn.train.run.RunDirectory (train_run).
"""

from __future__ import annotations

import math
import sys
from typing import Callable


class Hook:
    """A hook that does nothing (see the module docstring for what fit calls)."""

    slot: str | None = None
    donate = True
    progress = False

    def on_fit_start(self, spec, ts) -> None:
        pass

    def init_carry(self, ts):
        return None

    def in_step(self, value, before, after, batch, key):
        return value, {}

    def on_compiling(self, seconds: float) -> None:
        pass

    def on_epoch_start(self, ts, n_steps: int) -> None:
        pass

    def on_progress(self, done) -> None:
        pass

    def on_epoch_stop(self) -> None:
        pass

    def after_epoch(self, before, params, losses, key) -> None:
        pass

    def on_metrics(self, metrics: dict, record: dict) -> None:
        pass

    def should_stop(self, ts, record: dict) -> str | None:
        return None

    def on_epoch_end(self, ts, record: dict) -> None:
        pass

    def on_interrupt(self, ts) -> None:
        pass


def steps_inside(hook: Hook) -> bool:
    """Whether `hook` looks at each step inside the compiled loop (overrides in_step)."""
    return type(hook).in_step is not Hook.in_step


class ProgressBar(Hook):
    """A tqdm progress bar per epoch, fed between the compiled chunks of the epoch, and one
    counting the seconds while XLA compiles the epoch's program; only on a terminal
    (elsewhere, in logs and pipes, the per-epoch lines say it all, the first with its compile
    time)."""

    def __init__(self, epochs: int, enabled: bool = True):
        self.epochs, self.bar = epochs, None
        self.progress = enabled and sys.stderr.isatty()

    def on_compiling(self, seconds):
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(leave=False, bar_format="{desc}", dynamic_ncols=True)
        self.bar.set_description_str(f"compiling the epoch's program (XLA): {seconds:.1f} s")

    def on_epoch_start(self, ts, n_steps):
        self.on_epoch_stop()  # the compile's bar
        if self.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=n_steps,
                desc=f"epoch {ts.epoch + 1}/{self.epochs}",
                unit="step",
                leave=False,
                dynamic_ncols=True,
            )

    def on_progress(self, done):
        if self.bar is not None:
            self.bar.update(int(done) - self.bar.n)

    def on_epoch_stop(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_interrupt(self, ts):  # also a Ctrl-C while compiling
        self.on_epoch_stop()


def format_record(r: dict, epochs: int) -> str:
    """The per-epoch line: train/val loss and accuracy, time and speed."""
    line = f"epoch {r['epoch']:>{len(str(epochs))}}/{epochs}  train loss {r['train_loss']:.4f}"
    if "train_acc" in r:
        line += f" acc {r['train_acc']:.4f}"
    if "val_loss" in r:
        line += f"  val loss {r['val_loss']:.4f}"
        if "val_acc" in r:
            line += f" acc {r['val_acc']:.4f}"
    if "val_bpc" in r:
        line += f" ({r['val_bpc']:.3f} bits/char)"
    speed = r["steps_per_s"]
    line += (
        f"  {r['time_s']:.2f}s ({speed:,.0f} steps/s)"
        if speed >= 10
        else f"  {r['time_s']:.2f}s ({speed:.2f} steps/s)"
    )
    if "compile_s" in r:
        line += f"  compile {r['compile_s']:.2f}s"
    return line


class EpochLog(Hook):
    """log(line) with the per-epoch line (format_record) after each epoch, and why training
    ended there when a hook stopped it (record["stopped"])."""

    def __init__(self, log: Callable, epochs: int):
        self.log, self.epochs = log, epochs

    def on_epoch_end(self, ts, record):
        self.log(format_record(record, self.epochs))
        if record.get("stopped"):
            self.log(record["stopped"])


class Callback(Hook):
    """callback(ts, record) after each epoch (fit's callback=)."""

    def __init__(self, callback: Callable):
        self.callback = callback

    def on_epoch_end(self, ts, record):
        self.callback(ts, record)


class EarlyStopping(Hook):
    """Ends training when the validation loss has stopped improving (`--early-stop PATIENCE`).

    Ends training when the validation loss has not improved (by more than `min_delta`) for
    `patience` epochs in a row (`python -m fnn train --early-stop PATIENCE`); the record of the
    last epoch says why (record["stopped"]). A run directory's best.safetensors stays the epoch
    with the best validation score (fnn.train.run.best_score), and resuming a run that stopped
    trains nothing more.

    Args:
        patience: epochs in a row without improvement before training stops (a positive int).
        min_delta: the least decrease of the validation loss that counts as an improvement.
        history: the records of the epochs already trained (a resumed run), counted as if this
            hook had seen them, so that a run resumed after Ctrl-C stops where it would have
            stopped in one go.

    Raises:
        ValueError: `patience` is not a positive int or `min_delta` not a finite number >= 0;
            (at the start of fit) the data has no validation set.
    """

    def __init__(self, patience: int, *, min_delta: float = 0.0, history=()):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(
                f"EarlyStopping: patience must be a positive integer (epochs), got {patience!r}"
            )
        if not (
            isinstance(min_delta, (int, float)) and math.isfinite(min_delta) and min_delta >= 0
        ):
            raise ValueError(
                f"EarlyStopping: min_delta must be a finite number >= 0, got {min_delta!r}"
            )
        self.patience, self.min_delta = patience, float(min_delta)
        self.best, self.best_epoch, self.waited = math.inf, None, 0
        for record in history:
            self._see(record)

    def on_fit_start(self, spec, ts):
        if not spec.has_validation:
            raise ValueError(
                "early stopping watches the validation loss, but the data has no "
                "validation set (x_val is empty): give it one (--val-fraction > 0)"
            )

    def _see(self, record: dict) -> None:
        loss = record.get("val_loss")
        if loss is None:
            return
        if loss < self.best - self.min_delta:
            self.best, self.best_epoch, self.waited = loss, record.get("epoch"), 0
        else:
            self.waited += 1

    def should_stop(self, ts, record):
        self._see(record)
        if self.waited >= self.patience:
            return (
                f"early stopping after epoch {record['epoch']}: the validation loss has not "
                f"improved for {self.waited} epochs (best {self.best:.4f}, epoch "
                f"{self.best_epoch})"
            )
        return None
