"""Training with backward-rule overrides (issue 14, item 4): --rule specs, kept by --resume,
refused with jax.grad, the alignment angle in the gradient health."""

import json
import os

import jax
import numpy as np
import pytest

from fnn.cli import main
from fnn.ops import rulebook
from fnn.train.rule_specs import RuleSpecError, check_rules, make_rules, parse_rule


def test_specs_parse_and_bad_ones_are_named():
    assert parse_rule("spike=fast_sigmoid:slope=25") == (
        "spike",
        (),
        "fast_sigmoid",
        {"slope": 25.0},
    )
    assert parse_rule("affine@1_dense+3_dense=feedback_alignment") == (
        "affine",
        ("1_dense", "3_dense"),
        "feedback_alignment",
        {},
    )
    for spec, message in [
        ("relu", "expected GATE=RULE"),
        ("relu=magic", "unknown rule 'magic'"),
        ("spike=fast_sigmoid:slope=x", "slope must be a number"),
        ("spike=fast_sigmoid:speed=2", "options are NAME=NUMBER"),
        ("=straight_through", "name a gate"),
        ("rellu=straight_through", "no gate is called 'rellu'"),
        ("lax.tanh=straight_through", None),
        ("tanh=straight_through", None),
    ]:
        if message is None:
            parse_rule(spec)
            continue
        with pytest.raises(RuleSpecError, match=message):
            parse_rule(spec)
    with pytest.raises(RuleSpecError, match="needs --grad custom"):
        check_rules(("relu=straight_through",), "builtin")


def test_make_rules_builds_the_library_rules():
    params = {
        "1_dense": {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)},
        "3_dense": {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)},
    }
    table = make_rules(
        ("relu=straight_through", "spike=arctan:slope=2", "affine@3_dense=feedback_alignment"),
        params,
        seed=5,
    )
    assert table["relu"] is rulebook.straight_through
    assert table["spike"].name == "arctan(slope=2)"
    fa = table["affine"]
    assert list(fa.feedback) == ["3_dense"] and fa.feedback["3_dense"].shape == (3, 2)
    again = make_rules(("affine@3_dense=feedback_alignment",), params, seed=5)["affine"]
    np.testing.assert_array_equal(fa.feedback["3_dense"], again.feedback["3_dense"])  # resume
    other = make_rules(("affine@3_dense=feedback_alignment",), params, seed=6)["affine"]
    assert not np.array_equal(fa.feedback["3_dense"], other.feedback["3_dense"])
    assert make_rules((), params) is None
    with pytest.raises(RuleSpecError, match="no Dense layer named 9_dense"):
        make_rules(("affine@9_dense=feedback_alignment",), params)
    with pytest.raises(RuleSpecError, match="slope must be positive|slope"):
        make_rules(("spike=triangle:slope=-1",), params)
    with pytest.raises(RuleSpecError, match="already has a rule"):
        make_rules(("relu=straight_through", "relu=clipped_straight_through"), params)


def test_train_with_feedback_alignment_logs_alignment_and_resumes(tmp_path, capsys):
    out = str(tmp_path / "fa")
    args = [
        "--rule",
        "affine@3_dense=feedback_alignment",
        "--hidden",
        "32,32",
        "--limit",
        "300",
        "--diagnostics-every",
        "5",
        "--no-progress",
    ]
    assert main(["train", "--epochs", "1", "--out", out, *args]) == 0
    printed = capsys.readouterr().out
    assert "backward rules: affine@3_dense=feedback_alignment" in printed
    assert "alignment" in printed and "WARNING" not in printed
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["rules"] == ["affine@3_dense=feedback_alignment"]
    rows = [json.loads(line) for line in open(os.path.join(out, "diagnostics.jsonl"))]
    angles = rows[0]["alignment"]
    # 3_dense sends B's signal down instead of its weights': the layer below learns from it
    assert angles["1_dense"] > 5.0
    assert angles["3_dense"] == pytest.approx(0.0, abs=0.1)  # its own dw, db are exact
    assert angles["5_dense"] == pytest.approx(0.0, abs=0.1)
    assert main(["train", "--resume", out, "--epochs", "2", "--no-progress"]) == 0
    assert "backward rules: affine@3_dense=feedback_alignment" in capsys.readouterr().out
    assert main(["train", "--resume", out, "--rule", "relu=straight_through"]) == 2


def test_rules_with_builtin_gradients_are_refused(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "--rule",
                "relu=straight_through",
                "--grad",
                "builtin",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 1
    )
    assert "needs --grad custom" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x" / "config.json")


def test_straight_through_relu_changes_the_gradient_below_it():
    import optax

    from fnn import nn
    from fnn.train.step import make_train_step
    from fnn.train.state import init_train_state

    model = nn.mlp((8,))
    opt = optax.sgd(0.1)
    x = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    y = np.arange(16) % 10
    updates = {}
    for rules in (None, {"relu": rulebook.straight_through}):
        ts = init_train_state(model, opt, (4,), 0)
        step = make_train_step(model, opt, rules=rules)
        p, *_ = step(ts.params, ts.state, ts.opt_state, (x, y), jax.random.PRNGKey(0))
        updates[rules is None] = p
    assert not np.allclose(updates[True]["1_dense"]["w"], updates[False]["1_dense"]["w"])
    np.testing.assert_allclose(updates[True]["3_dense"]["w"], updates[False]["3_dense"]["w"])
