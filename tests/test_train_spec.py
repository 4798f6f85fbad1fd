"""The training path said once: a `python -m fnn train` run traces its step once, early
stopping is one hook (`--early-stop`), hooks keep state in named carry slots and may stop
training, and every training option is one declared field from which the command line is
derived."""

import dataclasses
import json
import os
import sys

import jax
import jax.numpy as jnp
import pytest

import fnn.train.epoch
import fnn.train.run
import fnn.train.spec
from fnn import train
from fnn.cli import build_parser, main
from fnn.nn.models import FACTS, build_model
from fnn.train.config import OPTIONS, RESUME_MAY_CHANGE, TrainConfig, declared, option, option_flag
from fnn.train.hooks import EarlyStopping, Hook

TINY = ["--hidden", "16", "--lr", "0.01", "--batch-size", "64", "--no-progress", "--limit", "600"]


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture
def counted(monkeypatch):
    """Counts, over a run: the traces of the spec's train step (its Python runs once per
    trace) and of the model's forward in training mode (the step's, fnn.grad's included)."""
    counts = {"step": 0, "forward": 0}
    make_step, build = fnn.train.spec.make_train_step, fnn.train.run.build_model

    def make_train_step(*args, **kwargs):
        step = make_step(*args, **kwargs)

        def traced(*a):
            counts["step"] += 1
            return step(*a)

        return traced

    def build_model(*args, **kwargs):
        model = build(*args, **kwargs)
        apply = model.apply

        def counting(*a, **kw):
            counts["forward"] += bool(kw.get("train"))
            return apply(*a, **kw)

        object.__setattr__(model, "apply", counting)
        return model

    monkeypatch.setattr(fnn.train.spec, "make_train_step", make_train_step)
    monkeypatch.setattr(fnn.train.run, "build_model", build_model)
    return counts


def test_a_train_run_traces_its_step_once(tmp_path, counted, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--epochs", "3", "--out", out, "--chunk-seconds", "0", *TINY]) == 0
    assert counted == {"step": 1, "forward": 1}, counted  # 3 epochs, chunks of one step
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2, 3]
    # a resumed run is a run of its own: it traces its step once as well
    counted.update(step=0, forward=0)
    assert main(["train", "--resume", out, "--epochs", "4", "--no-progress"]) == 0
    assert counted == {"step": 1, "forward": 1}, counted
    # the hooks' work inside the step (gradient health, early stopping) is in that one trace
    counted.update(step=0, forward=0)
    assert (
        main(
            [
                "train",
                "--epochs",
                "2",
                "--out",
                str(tmp_path / "more"),
                "--diagnostics",
                "--early-stop",
                "5",
                *TINY,
            ]
        )
        == 0
    )
    assert counted["step"] == 1, counted


def test_a_train_run_works_out_the_steps_of_an_epoch_once(tmp_path, monkeypatch, capsys):
    """The spec's n_steps is what the run reads (the start's position, each epoch's batches);
    make_spec works them out once more, before the spec exists, for the schedule's length."""
    calls = []
    count = fnn.train.epoch.steps_per_epoch

    def steps_per_epoch(n, batch_size):
        calls.append(sys._getframe(1).f_code.co_name)
        return count(n, batch_size)

    for module in (fnn.train.epoch, fnn.train.spec, fnn.train.run):
        monkeypatch.setattr(module, "steps_per_epoch", steps_per_epoch)
    out = str(tmp_path / "run")
    assert main(["train", "--epochs", "2", "--out", out, *TINY]) == 0
    assert calls == ["make_spec", "__post_init__"], calls
    calls.clear()
    assert main(["train", "--resume", out, "--epochs", "3", "--no-progress"]) == 0
    assert calls == ["make_spec", "__post_init__"], calls


def test_early_stop_ends_the_run_and_resume_finds_it_finished(tmp_path, capsys):
    """--lr 0: the validation loss never improves after epoch 1, so --early-stop 2 stops the
    run after epoch 3 of 10; the record says so, the results are written; resuming it trains
    nothing more; a run cut short (--epochs 2) and resumed stops where the run in one go
    stopped."""
    args = [*TINY, "--lr", "0", "--early-stop", "2"]  # the last --lr counts
    out = str(tmp_path / "run")
    assert main(["train", "--epochs", "10", "--out", out, *args]) == 0
    printed = capsys.readouterr().out
    metrics = read_metrics(out)
    assert [r["epoch"] for r in metrics] == [1, 2, 3]
    assert "stopped" not in metrics[0] and "stopped" not in metrics[1]
    assert metrics[2]["stopped"].startswith("early stopping after epoch 3")
    assert "not improved for 2 epochs" in metrics[2]["stopped"]
    assert "early stopping after epoch 3" in printed and "epoch  3/10" in printed
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["epoch"] == 3 and "test_acc" in results
    assert train.read_checkpoint(os.path.join(out, "last.safetensors"))[1]["epoch"] == 3
    # resumed, even with more epochs: finished, nothing trained, its results again
    assert main(["train", "--resume", out, "--epochs", "20", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "nothing more to train" in printed and "epoch 4/" not in printed
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2, 3]
    assert json.load(open(os.path.join(out, "results.json")))["epoch"] == 3
    # cut after epoch 2 and resumed: the hook counts the epochs before the resume
    cut = str(tmp_path / "cut")
    assert main(["train", "--epochs", "2", "--out", cut, *args]) == 0
    assert main(["train", "--resume", cut, "--epochs", "10", "--no-progress"]) == 0
    resumed = read_metrics(cut)
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    assert resumed[2]["stopped"] == metrics[2]["stopped"]


def test_early_stop_needs_a_validation_set(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--out", out, "--early-stop", "2", "--val-fraction", "0", *TINY]) == 1
    assert "--early-stop 2 watches the validation loss" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(out, "config.json"))
    with pytest.raises(SystemExit) as e:  # argparse's own error
        main(["train", "--out", out, "--early-stop", "-1", *TINY])
    assert e.value.code == 2
    assert "early_stop must be an integer >= 0" in capsys.readouterr().err
    data = train.load_dataset("digits", limit=200, val_fraction=0.0)
    with pytest.raises(ValueError, match="no validation set"):
        train.fit(
            fnn.nn.mlp((8,)),
            train.make_optimizer("sgd", 0.1),
            data,
            epochs=1,
            batch_size=50,
            hooks=[EarlyStopping(1)],
        )


class CountSteps(Hook):
    """A hook with a carry slot: counts the steps inside the compiled loop, reports the count
    as a per-step metric, and stops training after `stop_after` epochs."""

    slot = "count"

    def __init__(self, stop_after):
        self.stop_after, self.seen = stop_after, []

    def init_carry(self, ts):
        return jnp.asarray(ts.step, jnp.int32)

    def in_step(self, count, before, after, batch, key):
        return count + 1, {"count": count + 1}

    def on_metrics(self, metrics, record):
        self.seen.append([int(c) for c in metrics["count"]])

    def should_stop(self, ts, record):
        return "enough" if record["epoch"] >= self.stop_after else None


def test_a_hook_keeps_state_in_a_slot_and_stops_training():
    data = train.load_dataset("digits", limit=300)
    model, opt = fnn.nn.mlp((8,)), train.make_optimizer("sgd", 0.1)
    spec = train.TrainSpec(model, opt, data, batch_size=50)
    hook = CountSteps(stop_after=2)
    ts, history = train.fit(spec, epochs=5, hooks=[hook], chunk_seconds=0)
    n = spec.n_steps
    assert [r["epoch"] for r in history] == [1, 2] and history[-1]["stopped"] == "enough"
    assert hook.seen == [list(range(1, n + 1)), list(range(n + 1, 2 * n + 1))]
    assert ts.epoch == 2 and ts.step == 2 * n
    # a slot's state leaves the params and optimizer state as they are: the same training
    plain, _ = train.fit(spec, epochs=2)
    for a, b in zip(jax.tree_util.tree_leaves(ts.params), jax.tree_util.tree_leaves(plain.params)):
        assert jnp.array_equal(a, b)
    with pytest.raises(ValueError, match="share a carry slot"):
        train.fit(spec, epochs=1, hooks=[CountSteps(1), CountSteps(1)])
    with pytest.raises(TypeError, match="are the spec's"):
        train.fit(spec, model, epochs=1)


# ---- options declared once ---------------------------------------------------------------------
def test_every_option_is_one_declared_field_with_a_flag():
    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = {a.dest: a for a in train_parser._actions}
    for f in dataclasses.fields(TrainConfig):
        o = OPTIONS[f.name]  # declared with option(): its check, help, group, resume rule
        assert f.name in flags, f.name  # the command line's flag, made from the declaration
        assert option_flag(f.name) in flags[f.name].option_strings, f.name
        assert flags[f.name].default is None  # given or not: the config's default otherwise
        assert o.check(f.name, f.default) == f.default or f.default is None, f.name
    assert RESUME_MAY_CHANGE == tuple(k for k, o in OPTIONS.items() if o.resume)
    # the model options are the models' facts
    for name, facts in FACTS.items():
        config = TrainConfig(model=name, dataset="text" if facts.data == "text" else "digits")
        assert set(config.model_options()) <= set(facts.options.values())
        build_model(name, 10, **config.model_options())


def test_a_field_without_its_declaration_is_refused():
    """A config field without option(...) would have no flag, no check and no resume rule:
    the declarations refuse it, naming it (at import, for TrainConfig itself)."""

    @dataclasses.dataclass
    class Bad(TrainConfig):
        momentum: float = 0.9

    with pytest.raises(TypeError, match="TrainConfig.momentum is not declared"):
        declared(Bad)

    @dataclasses.dataclass
    class Good(TrainConfig):
        momentum: float = option(0.9, "optimisation", lambda name, v: v, "(default {default})")

    assert list(declared(Good))[-1] == "momentum"
