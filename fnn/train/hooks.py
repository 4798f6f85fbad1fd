"""What fit does besides training, as hooks: a progress bar, the per-epoch log line, a callback.

fit is an epoch loop; everything else it does is a Hook, an object with some of these methods
(the base class gives the others as no-ops). fit calls them in this order:

    wrap_step(step) -> step           once, before the epoch is compiled; the step is the
                                      uncompiled train step (what fnn.train.diagnostics wraps)
    carry_in(opt_state, ts)           each epoch, before it runs: what the wrapped step carries
        -> carried                    in place of opt_state (undone by carry_out)
    on_compiling(seconds)             XLA has been compiling the epoch's program for `seconds`
                                      (called every 50 ms while it does, for hooks whose
                                      `progress` is True)
    on_epoch_start(ts, n_steps)       the epoch (ts.epoch + 1) is about to run (from step
                                      ts.position when ts was saved in the middle of it)
    on_progress(done)                 after each compiled chunk of the epoch, with the steps of
                                      the epoch done; only for hooks whose `progress` is True
    on_epoch_stop()                   the epoch's chunks are done (or one raised)
    after_epoch(before, params,       it ran: `before` is the TrainState it started from (kept
                losses, key)          when a hook has donate = False), `losses` its per-step
                                      losses; raise here to stop training (the NaN replay)
    carry_out(carried, metrics,       (in reverse order) the epoch's carried state back to
              record) -> carried      opt_state; may add to the epoch's record
    on_epoch_end(ts, record)          the record is complete and in the history: log it, save a
                                      checkpoint (fnn.train.run), ...
    on_interrupt(ts)                  Ctrl-C stopped training: ts is the state it stopped at,
                                      in the middle of epoch ts.epoch + 1 when ts.position > 0
                                      (save it: fnn.train.run); fit then raises
                                      TrainingInterrupted

Attributes: `donate` (default True): False keeps each epoch's inputs alive for after_epoch
instead of donating them; `progress` (default False): True to get on_progress.

The hooks here: ProgressBar (fit's progress=True), EpochLog (log=), Callback (callback=). The
others live with what they do: fnn.train.diagnostics.HealthMonitor (diagnostics=N),
fnn.train.nancheck.NanReplay (check_nans=True), fnn.train.run.RunDirectory (train_run).
"""

from __future__ import annotations

import sys
from typing import Callable


class Hook:
    """A hook that does nothing (see the module docstring for what fit calls)."""

    donate = True
    progress = False

    def wrap_step(self, step):
        return step

    def carry_in(self, opt_state, ts):
        return opt_state

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

    def carry_out(self, carried, metrics, record: dict):
        return carried

    def on_epoch_end(self, ts, record: dict) -> None:
        pass

    def on_interrupt(self, ts) -> None:
        pass


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

            self.bar = tqdm(total=n_steps, desc=f"epoch {ts.epoch + 1}/{self.epochs}",
                            unit="step", leave=False, dynamic_ncols=True)

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
    line += f"  {r['time_s']:.2f}s ({speed:,.0f} steps/s)" if speed >= 10 else \
        f"  {r['time_s']:.2f}s ({speed:.2f} steps/s)"
    if "compile_s" in r:
        line += f"  compile {r['compile_s']:.2f}s"
    return line


class EpochLog(Hook):
    """log(line) with the per-epoch line (format_record) after each epoch."""

    def __init__(self, log: Callable, epochs: int):
        self.log, self.epochs = log, epochs

    def on_epoch_end(self, ts, record):
        self.log(format_record(record, self.epochs))


class Callback(Hook):
    """callback(ts, record) after each epoch (fit's callback=)."""

    def __init__(self, callback: Callable):
        self.callback = callback

    def on_epoch_end(self, ts, record):
        self.callback(ts, record)
