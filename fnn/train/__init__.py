"""Training: compiled steps and epochs, optimizers, data, checkpoints, runs.

Layering: fnn.train builds on fnn.nn and fnn.check (the gradient-health monitor measures with
fnn.check.gradient_health, given train's loss function); nothing in fnn.check imports train.
fnn.bench and fnn.cli build on train. See ARCHITECTURE.md.

  make_train_step, make_eval_step, make_loss_fn   one step; grad="custom" (fnn) | "builtin" (jax)
  Loss, get_loss, cross_entropy, LOSSES           losses by name, or any loss(scores, labels)
                                                  function: (N,) labels, per-token (N, T), mse
  make_train_epoch, make_evaluate                 a whole epoch as one lax.scan; evaluation
  TrainSpec (fnn.train.spec)                      what a run computes, made and checked once
  fit, TrainState, init_train_state               the epoch loop: fit(spec, epochs=, hooks=)
  Hook, EarlyStopping (fnn.train.hooks)           what fit does besides training, as objects
  diagnostics, health_log (modules)               gradient health every N steps: fit(diagnostics=N)
  make_optimizer, make_schedule                   optax optimizers and schedules by name
  load_dataset, Dataset, standardize, split       digits (bundled), MNIST, Fashion-MNIST, CIFAR-10
  load_text, Vocab (fnn.train.text)               byte-level text windows (dataset "text")
  sample_run (fnn.train.sample)                   text from a trained language model
  read_idx, read_cifar10_file, DataError          the raw file formats
  save_checkpoint, load_checkpoint, save_train_state, load_train_state, load_params,
  CheckpointError                                 safetensors checkpoints, every dtype, bounded reads
  TrainConfig, ConfigError, train_run             a run directory: what `python -m fnn train` does
  RunLock, RunDirError                            one process per run directory (a lock on the folder)
  files (module): write_file, read_file, Folder   every file written one way: a temporary file
                                                  renamed over it, never through a link, in a
                                                  folder held by identity; bounded reads
  TrainingInterrupted                             Ctrl-C or SIGTERM: fit stops between compiled
                                                  chunks (or while XLA compiles)
  OutOfMemoryError                                a run that does not fit, with its sizes
  data_parallel, DataParallel                     split batches across devices (fit(devices=N)),
                                                  and parameters too (shard="params")
  distributed (module): initialize,               several processes, one run: join it first
  DistributedError                                (jax.distributed, gloo on CPU); errors and
                                                  decisions (stop, options) shared by all
  check_fit_inputs                                the data checked against the model and loss
"""

from fnn.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_params,
    load_train_state,
    read_checkpoint,
    save_checkpoint,
    save_train_state,
)
from fnn.train.config import ConfigError, TrainConfig
from fnn.train.data import DATASETS, Dataset, load_dataset, split, standardize
from fnn.train.distributed import DistributedError
from fnn.train.epoch import make_evaluate, make_train_epoch, steps_per_epoch
from fnn.train.hooks import EarlyStopping, Hook
from fnn.train.interrupt import TrainingInterrupted
from fnn.train.lock import RunDirError, RunLock
from fnn.train.loop import fit
from fnn.train.memory import OutOfMemoryError
from fnn.train.optim import OPTIMIZERS, SCHEDULES, make_optimizer, make_schedule
from fnn.train.parallel import DataParallel, data_parallel
from fnn.train.plot import plot_curves
from fnn.train.readers import DataError, read_cifar10, read_cifar10_file, read_idx, read_mnist
from fnn.train.run import read_config, train_run
from fnn.train.spec import TrainSpec
from fnn.train.state import TrainState, init_train_state, make_key
from fnn.train.step import (
    GRADS,
    LOSSES,
    Loss,
    accuracy,
    cross_entropy,
    get_loss,
    make_eval_step,
    make_loss_fn,
    make_train_step,
)
from fnn.train.text import Vocab, load_text
from fnn.train.validate import check_fit_inputs

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DATASETS",
    "DataError",
    "DataParallel",
    "Dataset",
    "DistributedError",
    "EarlyStopping",
    "GRADS",
    "Hook",
    "LOSSES",
    "Loss",
    "OPTIMIZERS",
    "OutOfMemoryError",
    "RunDirError",
    "RunLock",
    "SCHEDULES",
    "TrainConfig",
    "TrainSpec",
    "TrainState",
    "TrainingInterrupted",
    "Vocab",
    "accuracy",
    "check_fit_inputs",
    "cross_entropy",
    "data_parallel",
    "fit",
    "get_loss",
    "init_train_state",
    "load_checkpoint",
    "load_params",
    "load_text",
    "make_key",
    "load_dataset",
    "load_train_state",
    "make_eval_step",
    "make_evaluate",
    "make_loss_fn",
    "make_optimizer",
    "make_schedule",
    "make_train_epoch",
    "make_train_step",
    "plot_curves",
    "read_checkpoint",
    "read_cifar10",
    "read_cifar10_file",
    "read_config",
    "read_idx",
    "read_mnist",
    "save_checkpoint",
    "save_train_state",
    "split",
    "standardize",
    "steps_per_epoch",
    "train_run",
]
