"""`python -m fnn gradcheck`: the table and its formats, user gates, timing, a model per layer.

Every registered gate is checked once, by tests/test_gates.py; here the command runs on a few.
"""

import argparse
import json
import textwrap

import fnn
from fnn.check.gates import TRANSFORMS, check_gate
from fnn.cli.gradcheck import add_arguments, gates_to_check, run, timing_us

BROKEN = '''
import jax.numpy as jnp
import fnn


@fnn.defgate
def cube(x):
    """x ** 3.  Local gradient: 3 x**2."""
    return x ** 3, x


@cube.defvjp
def cube_vjp(g, x):
    return (3.0 * g * x ** 2,)


@cube.defcases
def _cube_cases(rng, dtype):
    return [fnn.Case((rng.standard_normal((3, 4)).astype(dtype),))]


@fnn.defgate
def bad_square(x):
    """x ** 2.  Local gradient: 2 x (the VJP below forgets the 2)."""
    return x * x, x


@bad_square.defvjp
def bad_square_vjp(g, x):
    return (g * x,)


@bad_square.defcases
def _bad_cases(rng, dtype):
    return [fnn.Case((rng.standard_normal((3, 4)).astype(dtype),))]
'''


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


FEW = ("relu", "conv2d", "batch_norm")  # elementwise, NHWC with a static stride, 3 outputs


def test_the_gates_asked_for_pass_and_are_listed(capsys):
    from fnn.ops.primitives import registry as primitives

    # with no --gate: every registered gate and every primitive's rule
    assert gates_to_check() == {**fnn.registry, **primitives}
    assert gates_to_check(primitives=False) == dict(fnn.registry)
    assert run(_args("--format", "json", "--no-timing", "--gate", ",".join(FEW))) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["ok"] is True
    rows = {row["gate"]: row for row in table["gates"]}
    assert set(rows) == set(FEW)
    for name, row in rows.items():
        assert row["verdict"] == "ok", (name, row)
        assert row["cases"] >= 1
        assert all(row["transforms"][t] for t in TRANSFORMS), (name, row["transforms"])
        assert set(row) == {"gate", "cases", "vs_jax_f64", "vs_jax_f32", "vs_numeric",
                            "second_order", "custom_us", "builtin_us", "transforms", "verdict"}
        assert row["second_order"] is True, (name, row)
    assert table["meta"]["seed"] == 0 and "device" in table["meta"]


def test_user_module_with_a_wrong_vjp_fails(tmp_path, monkeypatch, capsys):
    (tmp_path / "user_gates_broken.py").write_text(textwrap.dedent(BROKEN))
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ("--module", "user_gates_broken", "--gate", "cube,bad_square")
    assert run(_args(*argv)) == 1
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[2:] if line.strip()}
    assert rows["cube"].rstrip().endswith("ok")
    assert "FAIL" in rows["bad_square"] and "vs jax.vjp" in rows["bad_square"]
    assert "FAILED: bad_square" in out
    assert run(_args(*argv[:2], "--gate", "cube", "--format", "markdown")) == 0
    assert "| cube | 1 |" in capsys.readouterr().out
    assert run(_args("--gate", "no_such_gate")) == 2


def test_a_failure_keeps_its_reason():
    @fnn.defgate
    def crashing(x):
        """x.  Local gradient: 1 (the VJP below raises)."""
        return x, None

    @crashing.defvjp
    def crashing_vjp(g, saved):
        raise RuntimeError("the reason, kept")

    @crashing.defcases
    def _(rng, dtype):
        return [fnn.Case((rng.standard_normal(3).astype(dtype),), label="three")]

    report = check_gate("crashing", crashing)
    assert not report.ok and "RuntimeError: the reason, kept" in report.verdict


def test_timing_columns_are_microseconds():
    report = check_gate("relu", fnn.registry["relu"])
    assert report.ok
    custom_us, builtin_us = timing_us(fnn.registry["relu"], report)
    assert 0 < custom_us < 1e5 and 0 < builtin_us < 1e5


def test_model_check_per_layer(capsys):
    assert run(_args("--model", "mlp")) == 0
    out = capsys.readouterr().out
    for leaf in ("1_dense/w", "1_dense/b", "3_dense/w", "5_dense/b"):
        assert leaf in out
    assert "gradient check OK" in out and "agree with jax.vjp" in out


def test_second_order_column_and_the_rule_library(capsys):
    assert run(_args("--no-timing", "--gate", "tanh,lax.mul")) == 0
    out = capsys.readouterr().out
    assert "2nd order" in out.splitlines()[0]
    assert all(line.split()[5] == "ok" for line in out.splitlines()[2:4])
    # the rule library: every rule follows its declared formula
    from fnn.check.rules import check_library
    from fnn.cli.gradcheck import format_rows, rule_row

    rules = [rule_row(c) for c in check_library()]
    assert rules and all(r["verdict"].startswith("ok") for r in rules), rules
    text = format_rows([], "text", None, rules)
    assert "fast_sigmoid(slope=1)" in text and "feedback_alignment" in text
