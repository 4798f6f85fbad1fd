"""TrainConfig: everything that defines a run, each option declared once.

Each option is one field of TrainConfig, declared with `option(default, group, check, help,
...)`: its default, the check of its values, its help text and topic in `python -m fnn train
--help`, whether `--resume` may change it, and which models or datasets read it. Everything
else is derived from the declarations: the command line's flags (fnn.cli.train), the checks
(CHECKS), RESUME_MAY_CHANGE, APPLIES and the model's keyword options (from the models' own
facts, fnn.nn.models.FACTS). A new option is one field here, plus the code that uses it.

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
from fnn.nn import ACTIVATIONS, INITIALIZERS
from fnn.nn.models import FACTS, MODELS, SEQUENCE_MODELS, model_options, models_reading
from fnn.train.data import DATASETS
from fnn.train.optim import OPTIMIZERS, SCHEDULES
from fnn.train.state import MAX_SEED
from fnn.train.step import GRADS, LOSSES, cross_entropy, get_loss

TEXT_EPOCHS = 2  # a text epoch of the default corpus is ~1000 steps, ~1.5 min on 2 CPU cores


class ConfigError(FnnError, ValueError):
    """A run's configuration (options, config.json, a checkpoint's config) holds a bad value."""


def _choice(options) -> Callable:
    """One of `options` (the command line lists them in this order, the error sorted)."""
    shown = sorted(options)

    def check(name, v):
        if not isinstance(v, str) or v not in shown:
            raise ConfigError(f"{name} must be one of {', '.join(shown)}, got {v!r}")
        return v

    check.choices = tuple(options)
    return check


def _int(lo: int, hi: int | None = None, what: str = "") -> Callable:
    def check(name, v):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            rng = what or (
                f"an integer >= {lo}" if hi is None else f"an integer between {lo} and {hi}"
            )
            raise ConfigError(
                f"{name} must be {rng}, got {v!r}"
                + (f" ({type(v).__name__})" if not isinstance(v, int) else "")
            )
        return v

    return check


def _number(lo: float, hi: float | None = None, *, closed_hi: bool = False) -> Callable:
    def check(name, v):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if ok:
            ok = v >= lo and (hi is None or v < hi or (closed_hi and v == hi))
        if not ok:
            rng = (
                f"a finite number >= {lo:g}"
                if hi is None
                else f"a number in [{lo:g}, {hi:g}{']' if closed_hi else ')'}"
            )
            raise ConfigError(f"{name} must be {rng}, got {v!r}")
        return float(v)

    return check


def _widths(optional: bool) -> Callable:
    def check(name, v):
        if v is None and optional:
            return None
        if isinstance(v, (list, tuple)) and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in v
        ):
            return tuple(v)
        raise ConfigError(f"{name} must be a list of positive integers (widths), got {v!r}")

    return check


def _hidden(name, v):
    v = _widths(False)(name, v)
    if not v:
        raise ConfigError(
            f"{name} must list one or more widths (e.g. 256 or 256,128), got "
            f"{v!r}: an empty list would make a model without hidden layers"
        )
    return v


def _rules(name, v):
    if isinstance(v, (list, tuple)) and all(isinstance(r, str) and r for r in v):
        return tuple(v)  # each rule's spelling is checked by fnn.train.rule_specs.check_rules
    raise ConfigError(
        f"{name} must be a list of backward-rule specs (strings such as "
        f'"relu=straight_through"), got {v!r}'
    )


def _flag(name, v):
    if not isinstance(v, bool):
        raise ConfigError(f"{name} must be true or false, got {v!r}")
    return v


def _directory(name, v):
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        raise ConfigError(
            f"{name} must be a directory name (a non-empty string) or null, got {v!r}"
        )
    return v


def _ints(text: str) -> tuple:
    return tuple(int(p) for p in text.split(",") if p.strip())


def _count(text: str) -> int:
    """--limit N: N examples (config.json's 0, all of them, is not written on the command line)."""
    if int(text) == 0:
        raise ConfigError("limit must be a positive integer, got 0")
    return int(text)


# how text on the command line becomes a value, by the type of the option's default; and what
# the text must be when it cannot
PARSE = {
    int: (int, "an integer"),
    float: (float, "a number"),
    str: (str, ""),
    tuple: (_ints, "comma-separated integers, e.g. 256,128"),
}


@dataclasses.dataclass(frozen=True)
class Option:
    """The declaration of one TrainConfig field (see `option`)."""

    group: str
    check: Callable[[str, Any], Any]
    help: str
    resume: bool = False
    applies: Any = None
    flag: str | None = None
    metavar: str | None = None
    parse: Any = None
    repeat: bool = False
    default_from: Callable[[dict], Any] | None = None


def option(default, group: str, check: Callable, help: str, **declared):
    """A TrainConfig field, declared once: its `default`, the `group` (topic) it is listed under
    in `python -m fnn train --help` (fnn.cli.train's GROUPS), the `check` of its values
    (check(name, value) -> the value, or ConfigError naming the option), its `help` ("{default}"
    in it: the default), and, when they differ from these defaults:
      resume=True           `--resume` may change it (RESUME_MAY_CHANGE)
      applies="model"       only the models that read it (fnn.nn.models.FACTS) take it;
      applies=("dataset", names)  only these datasets read it (APPLIES: refused for others)
      flag="--rule"         its flag (default --name-with-dashes), metavar=
      parse=(fn, what)      how the command line's text becomes a value (default: by the
                            default's type, PARSE); repeat=True: one flag per value, a list
      default_from=fn       fn(options given) -> its default when it is not given (None: the
                            field's default), e.g. the dataset of a language model
    """
    return dataclasses.field(
        default=default, metadata={"group": group, "option": Option(group, check, help, **declared)}
    )


def _show(default) -> str:
    return ",".join(map(str, default)) if isinstance(default, tuple) else str(default)


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a run.

    The defaults train the MLP on digits to >= 97% test accuracy with hand-written gradients in
    well under a minute on 2 CPU cores. Each field is an option of `python -m fnn train`
    (--batch-size for batch_size), declared with `option`; its help (docs/training.md's table)
    says more.

    Attributes:
        model: the network (fnn.train.config.MODELS).
        dataset: the dataset (fnn.train.DATASETS).
        grad: "custom" (fnn's hand-written gradients) or "builtin" (jax.grad).
        optimizer: the optimizer's name (fnn.train.OPTIMIZERS).
        lr: the learning rate.
        schedule: the learning-rate schedule (fnn.train.SCHEDULES).
        epochs: the number of epochs.
        data_dir: the directory holding the dataset's files (text: a file or folder).
        batch_size: the training batch size.
        seed: the seed of init, shuffling and dropout, 0 to 2**64-1.
        weight_decay: the weight decay of kernels.
        clip: clip gradients to this global norm (0: off).
        l2: the lecture's L2 penalty l2 * sum(W**2) in the loss.
        loss: the loss's name (fnn.train.LOSSES).
        label_smoothing: cross-entropy against (1 - E) one-hot + E / C targets.
        early_stop: the patience of early stopping (fnn.train.EarlyStopping; 0: off).
        val_fraction: the fraction of the training set kept for validation.
        hidden: MLP hidden widths, or RNN/LSTM/GRU layer widths.
        channels: CNN channels / ResNet stage widths (None: the model's default).
        activation: the activation's name.
        init: the weight initializer's name.
        dropout: the dropout rate of MLP/CNN hidden layers.
        limit: use only the first N train and test examples (0: all).
        context: text models: bytes per window.
        width: text models: the model width.
        depth: text models: the number of layers.
        heads: the transformer's attention heads.
        rules: backward-rule overrides (fnn.train.rule_specs).
        remat: recompute activations in the backward (make_train_step's remat).
    """

    model: str = option(
        "mlp",
        "model",
        _choice(sorted(MODELS)),
        f"network (default {{default}}; {', '.join(SEQUENCE_MODELS[:-1])} and "
        f"{SEQUENCE_MODELS[-1]} are language models and train on --dataset text)",
        default_from=lambda given: "transformer" if given.get("dataset") == "text" else None,
    )
    dataset: str = option(
        "digits",
        "data",
        _choice(DATASETS),
        "dataset (default {default}, or text for a language model)",
        default_from=lambda given: "text" if given.get("model") in SEQUENCE_MODELS else None,
    )
    grad: str = option(
        "custom",
        "gradients and rules",
        _choice(GRADS),
        "custom: fnn's hand-written gradients; builtin: jax.grad (default {default})",
    )
    optimizer: str = option("adam", "optimisation", _choice(OPTIMIZERS), "(default {default})")
    lr: float = option(1e-3, "optimisation", _number(0.0), "learning rate (default {default})")
    schedule: str = option(
        "cosine", "optimisation", _choice(SCHEDULES), "learning-rate schedule (default {default})"
    )
    epochs: int = option(
        30,
        "optimisation",
        _int(1),
        "(default {default}; %d for text)" % TEXT_EPOCHS,
        resume=True,
        default_from=lambda given: TEXT_EPOCHS if given.get("dataset") == "text" else None,
    )
    data_dir: str | None = option(
        None,
        "data",
        _directory,
        "directory holding the mnist/fashion-mnist/cifar10 files; for "
        "text, a text file or folder (default: the Python standard library's modules)",
        resume=True,
        applies=("dataset", ("mnist", "fashion-mnist", "cifar10", "text")),
        metavar="D",
        parse=PARSE[str],
    )
    batch_size: int = option(32, "optimisation", _int(1), "(default {default})")
    seed: int = option(
        0,
        "optimisation",
        _int(0, MAX_SEED, "an integer between 0 and 2**64-1"),
        "seed of init, shuffling and dropout, 0 to 2**64-1 (default {default})",
    )
    weight_decay: float = option(
        0.0, "optimisation", _number(0.0), "weight decay of kernels (default 0)"
    )
    clip: float = option(
        0.0, "optimisation", _number(0.0), "clip gradients to this global norm (default: off)"
    )
    l2: float = option(
        0.0, "optimisation", _number(0.0), "the lecture's L2 penalty l2*sum(W**2) in the loss"
    )
    loss: str = option(
        "softmax_cross_entropy", "optimisation", _choice(sorted(LOSSES)), "(default {default})"
    )
    label_smoothing: float = option(
        0.0,
        "optimisation",
        _number(0.0, 1.0),
        "cross-entropy against (1 - E) one-hot + E / C targets (default 0)",
        metavar="E",
    )
    early_stop: int = option(
        0,
        "optimisation",
        _int(0, what="an integer >= 0 (0: off)"),
        "stop when the validation loss has not improved for PATIENCE epochs in a row "
        "(fnn.train.EarlyStopping; needs a validation set; default 0: off)",
        metavar="PATIENCE",
    )
    val_fraction: float = option(
        0.1, "data", _number(0.0, 1.0), "of the training set (default {default})"
    )
    hidden: tuple = option(
        (256,),
        "model",
        _hidden,
        "MLP hidden widths, or RNN/LSTM/GRU layer widths, e.g. 256,128 (default {default})",
        applies="model",
    )
    channels: tuple | None = option(
        None,
        "model",
        _widths(True),
        "CNN channels / ResNet stage widths, e.g. 32,64",
        applies="model",
        parse=PARSE[tuple],
    )
    activation: str = option(
        "relu", "model", _choice(sorted(ACTIVATIONS)), "(default {default})", applies="model"
    )
    init: str = option(
        "he",
        "model",
        _choice(sorted(set(INITIALIZERS) - {"zeros", "ones"})),
        "weight initializer (default {default})",
        applies="model",
    )
    dropout: float = option(
        0.0,
        "model",
        _number(0.0, 1.0),
        "dropout rate of MLP/CNN hidden layers (default 0)",
        applies="model",
    )
    limit: int = option(
        0,
        "data",
        _int(0, what="an integer >= 0 (0: all examples)"),
        "use only the first N train and test examples",
        parse=(_count, "an integer"),
    )
    context: int = option(
        128,
        "data",
        _int(1),
        "text: bytes per training window (default {default})",
        applies=("dataset", ("text",)),
    )
    width: int = option(
        128, "model", _int(1), "transformer width (default {default})", applies="model"
    )
    depth: int = option(
        2, "model", _int(1), "transformer blocks (default {default})", applies="model"
    )
    heads: int = option(
        4, "model", _int(1), "transformer attention heads (default {default})", applies="model"
    )
    rules: tuple = option(
        (),
        "gradients and rules",
        _rules,
        "train with a backward-rule override, e.g. "
        "relu=straight_through, spike=fast_sigmoid:slope=25, affine=feedback_alignment, "
        "affine@3_dense=clip_backward:max_norm=1 (repeatable; kept by --resume; see "
        "fnn/train/rule_specs.py)",
        flag="--rule",
        metavar="GATE=RULE",
        repeat=True,
    )
    remat: bool = option(
        False,
        "gradients and rules",
        _flag,
        "recompute each block's activations in the "
        "backward instead of keeping them: less memory (a bigger model or batch fits), about one "
        "more forward per step; the same values (default off; --no-remat turns it off on "
        "--resume)",
        resume=True,
    )

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
            raise ConfigError(
                f"{source}: must be a JSON object of options, got a {type(d).__name__}"
            )
        unknown = sorted(k for k in d if k not in OPTIONS)
        if unknown:
            raise ConfigError(
                f"{source}: unknown option{'s' * (len(unknown) > 1)} "
                f"{', '.join(map(repr, unknown))} (known: {', '.join(OPTIONS)})"
            )
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
            raise ConfigError(
                f"label_smoothing applies to the cross-entropy loss, not to {self.loss!r}"
            )
        return cross_entropy(label_smoothing=self.label_smoothing)

    def model_options(self) -> dict:
        """Keyword options of the model builder (fnn.nn.build_model): the options the model
        reads (fnn.nn.models.FACTS), by the builder's names."""
        return model_options(self.model, self.to_dict())


def declared(cls=None) -> dict[str, Option]:
    """The declaration of every option of `cls` (TrainConfig), by name, in field order;
    applies="model" resolved from the models' facts to ("model", the models that read it). A
    field declared without `option` is refused (TypeError naming it): it would have no flag,
    no check and no resume rule."""
    out = {}
    for f in dataclasses.fields(cls or TrainConfig):
        o = f.metadata.get("option")
        if not isinstance(o, Option):
            raise TypeError(
                f"TrainConfig.{f.name} is not declared with option(default, group, "
                "check, help): every field of the config is an option of `python "
                "-m fnn train`, with its flag, check and resume rule"
            )
        if o.applies == "model":
            o = dataclasses.replace(o, applies=("model", models_reading(f.name)))
        out[f.name] = o
    return out


OPTIONS: dict[str, Option] = declared()
CHECKS: dict[str, Callable[[str, Any], Any]] = {k: o.check for k, o in OPTIONS.items()}
RESUME_MAY_CHANGE = tuple(k for k, o in OPTIONS.items() if o.resume)  # what `--resume` may
# change, when given explicitly
# options that only some models or datasets read: given for another one, they are refused
APPLIES = {k: o.applies for k, o in OPTIONS.items() if o.applies}


def option_group(name: str) -> str:
    """The help topic of TrainConfig field `name`."""
    return OPTIONS[name].group


def option_flag(name: str) -> str:
    """The command line's flag of option `name`: --batch-size for batch_size."""
    return OPTIONS[name].flag or "--" + name.replace("_", "-")


def option_help(name: str) -> str:
    """The help text of option `name`, its default written in."""
    return OPTIONS[name].help.format(default=_show(TrainConfig.__dataclass_fields__[name].default))


def check_value(name: str, value):
    """`value` for option `name`, checked (ConfigError naming the option otherwise)."""
    return CHECKS[name](name, value)


def parse_option(name: str, text: str):
    """The value of option `name` given as text on the command line, checked like every other
    source of it (ConfigError naming the option)."""
    o = OPTIONS[name]
    parse, example = o.parse or PARSE[type(TrainConfig.__dataclass_fields__[name].default)]
    try:
        value = parse(text)
    except ConfigError:
        raise
    except ValueError:
        raise ConfigError(f"{name} must be {example}, got {text!r}") from None
    return check_value(name, value)


def with_defaults(given: dict) -> dict:
    """The options of a new run, `given` and the defaults that depend on them (default_from):
    a sequence model trains on text, and text trains the transformer by default, for
    TEXT_EPOCHS epochs."""
    given = dict(given)
    for name, o in OPTIONS.items():
        if name not in given and o.default_from is not None:
            value = o.default_from(given)
            if value is not None:
                given[name] = value
    return given


def check_applies(config: "TrainConfig", given) -> None:
    """ConfigError naming each option of `given` (the names set explicitly) that the
    config's model or dataset does not read: it would be ignored without a word."""
    for name in given:
        if name not in APPLIES:
            continue
        by, which = APPLIES[name]
        chosen = getattr(config, by)
        if chosen not in which:
            raise ConfigError(
                f"{option_flag(name)} does not apply to --{by} {chosen} (it is "
                f"read by --{by} {', '.join(which)} only): drop it, or choose "
                f"another --{by}"
            )


def check_model_data(config: TrainConfig) -> None:
    """Sequence models train on text and image models on images (the model's facts, in
    fnn.nn.models.FACTS): a clear error otherwise."""
    text_model = FACTS[config.model].data == "text"
    if text_model != (config.dataset == "text"):
        raise ConfigError(
            f"model {config.model!r} "
            + (
                f"reads token sequences; train it with --dataset text, not {config.dataset!r}"
                if text_model
                else f"reads images; a text dataset needs a sequence model "
                f"(--model {'|'.join(SEQUENCE_MODELS)})"
            )
        )


def differences(a: TrainConfig, b: TrainConfig) -> list[str]:
    """The options whose values differ between two configs, in field order."""
    return [k for k in OPTIONS if getattr(a, k) != getattr(b, k)]


def resume_flags() -> str:
    """The options --resume may change, as the user types them: '--epochs, --data-dir and ...'."""
    flags = [option_flag(k) for k in RESUME_MAY_CHANGE]
    return ", ".join(flags[:-1]) + " and " + flags[-1]


def check_resume_overrides(overrides) -> None:
    """ConfigError naming the options of `overrides` that --resume may not change."""
    fixed = [k for k in overrides if k not in RESUME_MAY_CHANGE]
    if fixed:
        raise ConfigError(
            f"--resume keeps the run's config; it cannot change "
            f"{', '.join(option_flag(k) for k in fixed)} (only "
            f"{resume_flags()})"
        )


def resume_config(
    saved: TrainConfig,
    checkpoint: TrainConfig | None,
    overrides: dict,
    *,
    saved_file: str = "config.json",
    checkpoint_file: str = "last.safetensors",
) -> TrainConfig:
    """The config a resumed run continues with: `saved` (config.json) with `overrides` applied.

    overrides may only hold keys of RESUME_MAY_CHANGE. `checkpoint` is the config stored inside
    the checkpoint the run resumes from: it must equal `saved` on every key that `overrides`
    does not set (ConfigError naming each key and both values otherwise).
    """
    check_resume_overrides(overrides)
    overrides = {k: check_value(k, v) for k, v in overrides.items()}
    if checkpoint is not None:
        clash = [k for k in differences(saved, checkpoint) if k not in overrides]
        if clash:
            said = "; ".join(
                f"{k} is {getattr(saved, k)!r} in {saved_file} but "
                f"{getattr(checkpoint, k)!r} in {checkpoint_file}"
                for k in clash
            )
            may = [k for k in clash if k in RESUME_MAY_CHANGE]
            hint = f"; choose with {', '.join(option_flag(k) for k in may)}" if may else ""
            raise ConfigError(
                f"{saved_file} does not match the config the checkpoint was trained with: "
                f"{said}. The file was edited or replaced after the run started; restore it "
                f"(the checkpoint's values are the run's){hint}"
            )
    return dataclasses.replace(saved, **overrides)
