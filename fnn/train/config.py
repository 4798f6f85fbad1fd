"""TrainConfig: everything that defines a run, and the one validation of its values.

The same checks serve the command line (`python -m fnn train --lr ...`: `parse_option`), a
run directory's config.json and the config stored inside a checkpoint (`TrainConfig.from_dict`),
so a value the command line refuses is refused everywhere, with the key named:

    ConfigError: runs/x/config.json: lr must be a finite number >= 0, got -1

`resume_config` decides what a resumed run may change: config.json and the checkpoint's own
copy of the config must agree on every key, except those in RESUME_MAY_CHANGE that the user
sets explicitly (`--epochs`, `--data-dir`, `--remat`/`--no-remat`: recomputing activations in
the backward changes the memory and time of a step, not its values).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from fnn.errors import FnnError
from fnn.nn import ACTIVATIONS, INITIALIZERS, MODELS
from fnn.train.data import DATASETS
from fnn.train.optim import OPTIMIZERS, SCHEDULES
from fnn.train.state import MAX_SEED
from fnn.train.step import GRADS, LOSSES, cross_entropy, get_loss

RESUME_MAY_CHANGE = ("epochs", "data_dir",  # what `--resume` may change, when given explicitly
                     "remat")


class ConfigError(FnnError, ValueError):
    """A run's configuration (options, config.json, a checkpoint's config) holds a bad value."""


def option(default, group: str):
    """A TrainConfig field: its default, and the topic it is listed under in `python -m fnn
    train --help` (model, data, optimisation, gradients and rules; fnn.cli.train's GROUPS)."""
    return dataclasses.field(default=default, metadata={"group": group})


def option_group(name: str) -> str:
    """The help topic of TrainConfig field `name` (declared with `option`)."""
    return {f.name: f.metadata["group"] for f in dataclasses.fields(TrainConfig)}[name]


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a run. The defaults train the MLP on digits to >= 97% test
    accuracy with hand-written gradients in well under a minute on 2 CPU cores. Each field is
    an option of `python -m fnn train` (--batch-size for batch_size), listed in --help under
    the topic its declaration gives (`option(default, group)`)."""

    model: str = option("mlp", "model")
    dataset: str = option("digits", "data")
    data_dir: str | None = option(None, "data")
    grad: str = option("custom", "gradients and rules")
    optimizer: str = option("adam", "optimisation")
    lr: float = option(1e-3, "optimisation")
    schedule: str = option("cosine", "optimisation")
    epochs: int = option(30, "optimisation")
    batch_size: int = option(32, "optimisation")
    seed: int = option(0, "optimisation")
    weight_decay: float = option(0.0, "optimisation")
    clip: float = option(0.0, "optimisation")
    l2: float = option(0.0, "optimisation")
    loss: str = option("softmax_cross_entropy", "optimisation")
    label_smoothing: float = option(0.0, "optimisation")
    val_fraction: float = option(0.1, "data")
    hidden: tuple = option((256,), "model")
    channels: tuple | None = option(None, "model")
    activation: str = option("relu", "model")
    init: str = option("he", "model")
    dropout: float = option(0.0, "model")
    limit: int = option(0, "data")
    context: int = option(128, "data")
    width: int = option(128, "model")
    depth: int = option(2, "model")
    heads: int = option(4, "model")
    # backward-rule overrides, "GATE=RULE[:opt=v]" (fnn.train.rules)
    rules: tuple = option((), "gradients and rules")
    # recompute activations in the backward (the model's blocks; fit(remat=))
    remat: bool = option(False, "gradients and rules")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            setattr(self, f.name, check_value(f.name, getattr(self, f.name)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d, *, source: str = "config") -> "TrainConfig":
        """A TrainConfig from a JSON object, every value checked as on the command line;
        keys it lacks take their defaults, keys it does not know are refused."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: must be a JSON object of options, got a "
                              f"{type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(k for k in d if k not in names)
        if unknown:
            raise ConfigError(f"{source}: unknown option{'s' * (len(unknown) > 1)} "
                              f"{', '.join(map(repr, unknown))} (known: {', '.join(names)})")
        values = {}
        for k, v in d.items():
            try:
                values[k] = check_value(k, v)
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None
        return cls(**values)

    def training_loss(self):
        """The loss fit trains with: `loss` by name, with label_smoothing when it is set."""
        if not self.label_smoothing:
            return self.loss
        if get_loss(self.loss).name != "softmax_cross_entropy":
            raise ConfigError(f"label_smoothing applies to the cross-entropy loss, not to "
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


# ---- the checks: one per option, shared by the CLI, config.json and checkpoints -------------
def _choice(options) -> Callable:
    options = sorted(options)

    def check(name, v):
        if not isinstance(v, str) or v not in options:
            raise ConfigError(f"{name} must be one of {', '.join(options)}, got {v!r}")
        return v
    return check


def _int(lo: int, hi: int | None = None, what: str = "") -> Callable:
    def check(name, v):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            rng = what or (f"an integer >= {lo}" if hi is None else
                           f"an integer between {lo} and {hi}")
            raise ConfigError(f"{name} must be {rng}, got {v!r}"
                              + (f" ({type(v).__name__})" if not isinstance(v, int) else ""))
        return v
    return check


def _number(lo: float, hi: float | None = None, *, closed_hi: bool = False) -> Callable:
    def check(name, v):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if ok:
            ok = v >= lo and (hi is None or v < hi or (closed_hi and v == hi))
        if not ok:
            rng = (f"a finite number >= {lo:g}" if hi is None else
                   f"a number in [{lo:g}, {hi:g}{']' if closed_hi else ')'}")
            raise ConfigError(f"{name} must be {rng}, got {v!r}")
        return float(v)
    return check


def _widths(optional: bool) -> Callable:
    def check(name, v):
        if v is None and optional:
            return None
        if isinstance(v, (list, tuple)) and all(isinstance(n, int) and not isinstance(n, bool)
                                                and n >= 1 for n in v):
            return tuple(v)
        raise ConfigError(f"{name} must be a list of positive integers (widths), got {v!r}")
    return check


def _hidden(name, v):
    v = _widths(False)(name, v)
    if not v:
        raise ConfigError(f"{name} must list one or more widths (e.g. 256 or 256,128), got "
                          f"{v!r}: an empty list would make a model without hidden layers")
    return v


def _rules(name, v):
    if isinstance(v, (list, tuple)) and all(isinstance(r, str) and r for r in v):
        return tuple(v)  # each rule's spelling is checked by fnn.train.rules.check_rules
    raise ConfigError(f"{name} must be a list of backward-rule specs (strings such as "
                      f"\"relu=straight_through\"), got {v!r}")


def _flag(name, v):
    if not isinstance(v, bool):
        raise ConfigError(f"{name} must be true or false, got {v!r}")
    return v


def _directory(name, v):
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{name} must be a directory name (a non-empty string) or null, "
                          f"got {v!r}")
    return v


CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "model": _choice(MODELS), "dataset": _choice(DATASETS), "data_dir": _directory,
    "grad": _choice(GRADS), "optimizer": _choice(OPTIMIZERS), "lr": _number(0.0),
    "schedule": _choice(SCHEDULES), "epochs": _int(1), "batch_size": _int(1),
    "seed": _int(0, MAX_SEED, "an integer between 0 and 2**64-1"),
    "weight_decay": _number(0.0), "clip": _number(0.0), "l2": _number(0.0),
    "loss": _choice(LOSSES), "label_smoothing": _number(0.0, 1.0),
    "val_fraction": _number(0.0, 1.0), "hidden": _hidden,
    "channels": _widths(True), "activation": _choice(ACTIVATIONS),
    "init": _choice(set(INITIALIZERS) - {"zeros", "ones"}), "dropout": _number(0.0, 1.0),
    "limit": _int(0, what="an integer >= 0 (0: all examples)"),
    "context": _int(1), "width": _int(1), "depth": _int(1), "heads": _int(1), "rules": _rules,
    "remat": _flag,
}


def check_value(name: str, value):
    """`value` for option `name`, checked (ConfigError naming the option otherwise)."""
    return CHECKS[name](name, value)


def parse_option(name: str, text: str):
    """The value of option `name` given as text on the command line, checked like every other
    source of it (ConfigError naming the option)."""
    kind = type(getattr(TrainConfig(), name)) if name != "channels" else tuple
    try:
        if kind is tuple:
            value = tuple(int(p) for p in text.split(",") if p.strip())
        elif kind is int:
            value = int(text)
        elif kind is float:
            value = float(text)
        else:
            value = text
    except ValueError:
        example = {tuple: "comma-separated integers, e.g. 256,128", int: "an integer",
                   float: "a number"}[kind]
        raise ConfigError(f"{name} must be {example}, got {text!r}") from None
    if name == "limit" and value == 0:  # on the command line, --limit N keeps N examples
        raise ConfigError("limit must be a positive integer, got 0")
    return check_value(name, value)


# options that only some models or datasets read: given for another one, they are refused
APPLIES = {
    "hidden": ("model", ("mlp", "rnn", "lstm", "gru")),
    "channels": ("model", ("cnn", "resnet")),
    "activation": ("model", ("mlp", "cnn")),
    "init": ("model", ("mlp", "cnn", "resnet")),
    "dropout": ("model", ("mlp", "cnn", "rnn", "lstm", "gru", "transformer")),
    "width": ("model", ("transformer",)),
    "depth": ("model", ("transformer",)),
    "heads": ("model", ("transformer",)),
    "context": ("dataset", ("text",)),
    "data_dir": ("dataset", ("mnist", "fashion-mnist", "cifar10", "text")),
}


def check_applies(config: "TrainConfig", given) -> None:
    """ConfigError naming each option of `given` (the names set explicitly) that the
    config's model or dataset does not read: it would be ignored without a word."""
    for name in given:
        if name not in APPLIES:
            continue
        by, which = APPLIES[name]
        chosen = getattr(config, by)
        if chosen not in which:
            raise ConfigError(f"{option_flag(name)} does not apply to --{by} {chosen} (it is "
                              f"read by --{by} {', '.join(which)} only): drop it, or choose "
                              f"another --{by}")


def differences(a: TrainConfig, b: TrainConfig) -> list[str]:
    """The options whose values differ between two configs, in field order."""
    return [f.name for f in dataclasses.fields(TrainConfig)
            if getattr(a, f.name) != getattr(b, f.name)]


def option_flag(name: str) -> str:
    return "--rule" if name == "rules" else "--" + name.replace("_", "-")


def resume_flags() -> str:
    """The options --resume may change, as the user types them: '--epochs, --data-dir and ...'."""
    flags = [option_flag(k) for k in RESUME_MAY_CHANGE]
    return ", ".join(flags[:-1]) + " and " + flags[-1]


def resume_config(saved: TrainConfig, checkpoint: TrainConfig | None, overrides: dict, *,
                  saved_file: str = "config.json",
                  checkpoint_file: str = "last.safetensors") -> TrainConfig:
    """The config a resumed run continues with: `saved` (config.json) with `overrides` applied.

    overrides may only hold keys of RESUME_MAY_CHANGE. `checkpoint` is the config stored inside
    the checkpoint the run resumes from: it must equal `saved` on every key that `overrides`
    does not set (ConfigError naming each key and both values otherwise).
    """
    fixed = [k for k in overrides if k not in RESUME_MAY_CHANGE]
    if fixed:
        raise ConfigError(f"--resume keeps the run's config; it cannot change "
                          f"{', '.join(option_flag(k) for k in fixed)} (only "
                          f"{resume_flags()})")
    overrides = {k: check_value(k, v) for k, v in overrides.items()}
    if checkpoint is not None:
        clash = [k for k in differences(saved, checkpoint) if k not in overrides]
        if clash:
            said = "; ".join(f"{k} is {getattr(saved, k)!r} in {saved_file} but "
                             f"{getattr(checkpoint, k)!r} in {checkpoint_file}" for k in clash)
            may = [k for k in clash if k in RESUME_MAY_CHANGE]
            hint = (f"; choose with {', '.join(option_flag(k) for k in may)}" if may else "")
            raise ConfigError(
                f"{saved_file} does not match the config the checkpoint was trained with: "
                f"{said}. The file was edited or replaced after the run started; restore it "
                f"(the checkpoint's values are the run's){hint}")
    return dataclasses.replace(saved, **overrides)
