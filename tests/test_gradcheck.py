"""`python -m fnn gradcheck`: the table and its formats, user gates, timing, a model per layer,
the default part (QUICK) against --all, rows printed as they come and Ctrl-C.

Every registered gate is checked once, by tests/test_gates.py; here the command runs on a few.
"""

import argparse
import json
import textwrap

import fnn
import pytest

from fnn.check.gates import CHECKS, QUICK, SECOND_ORDER, TRANSFORMS, check_gate
from fnn.cli import main
from fnn.cli._args import UsageError
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
    # with no --gate: every registered gate, fnn's own and every primitive's rule
    assert gates_to_check() == dict(fnn.registry)
    assert gates_to_check(primitives=False) == dict(fnn.registry.named)
    # a lecture's name stands for its primitives' gates
    assert gates_to_check(names=["matmul", "relu", "add"]) == {
        "matmul": fnn.registry["lax.dot_general"],
        "relu": fnn.registry["relu"],
        "add:lax.add": fnn.registry["lax.add"],
        "add:lax.add_any": fnn.registry["lax.add_any"],
    }
    assert run(_args("--format", "json", "--gate", ",".join(FEW))) == 0
    captured = capsys.readouterr()
    table = json.loads(captured.out)
    assert table["ok"] is True
    rows = {row["gate"]: row for row in table["gates"]}
    assert set(rows) == set(FEW)
    for name, row in rows.items():
        assert row["verdict"] == "ok", (name, row)
        # the default part: float64 only, the first case(s) and the kinks, under jit alone
        assert 1 <= row["cases"] < row["declared"], (name, row)
        assert row["vs_jax_f64"] is not None
        assert (row["vs_numeric"] is None) == (name == "batch_norm")  # it has no numeric case
        assert row["vs_jax_f32"] is None and row["second_order"] is None
        assert row["transforms"] == {
            t: (t == "jit") or None for t in CHECKS if t != SECOND_ORDER
        }, (name, row["transforms"])
        assert set(row) == {
            "gate",
            "cases",
            "declared",
            "vs_jax_f64",
            "vs_jax_f32",
            "vs_numeric",
            "second_order",
            "custom_us",
            "builtin_us",
            "transforms",
            "verdict",
        }
    meta = table["meta"]
    assert meta["seed"] == 0 and "device" in meta and meta["all"] is False
    assert meta["scope"] == {"dtypes": ["float64"], "cases": 1, "checks": ["jit"]}
    assert all(name in captured.err for name in FEW)  # the rows, on stderr as they came
    # --all: every case, both dtypes, every transform and the 2nd order
    assert run(_args("--format", "json", "--all", "--gate", "relu")) == 0
    row = json.loads(capsys.readouterr().out)["gates"][0]
    assert row["cases"] == row["declared"] and row["vs_jax_f32"] is not None
    assert all(row["transforms"][t] for t in ("eager",) + TRANSFORMS), row["transforms"]
    assert row["second_order"] is True, row


def test_the_default_part_checks_every_gate_meaningfully():
    """QUICK leaves out cases, dtypes and transforms, never a gate: each keeps its first case
    in float64 against jax.vjp and central differences (a numerically checked case is added
    where the first is not one), all its kink cases, and the jit transform."""
    primitives = fnn.registry

    name = "lax.convert_element_type"  # its first case is not checked numerically
    quick, full = check_gate(name, primitives[name], **QUICK), check_gate(name, primitives[name])
    assert quick.ok and full.ok
    assert {c.dtype for c in quick.cases} == {"float64"}
    assert quick.declared == full.declared == sum(c.dtype == "float64" for c in full.cases)
    assert quick.worst("vs_numeric", "float64") is not None
    assert len(quick.cases) == 2
    relu = check_gate("relu", fnn.registry["relu"], **QUICK)
    kinks = [c.label for c in relu.cases if c.label.startswith("kink: ")]
    assert kinks and kinks == [
        c.label
        for c in check_gate("relu", fnn.registry["relu"]).cases
        if c.label.startswith("kink: ")
    ]
    assert relu.transforms["jit"] is True and relu.transforms["vmap"] is None
    # the forward is checked against itself called alone, not jax.vjp's primal output: at
    # lax.reduce's kink (ties, NaN, inf) the two differ by 3e-2
    assert check_gate("lax.reduce", primitives["lax.reduce"], **QUICK).ok
    with pytest.raises(ValueError, match="checks must be among"):
        check_gate("relu", fnn.registry["relu"], checks=("pmap",))


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
    with pytest.raises(UsageError, match="unknown gate"):
        run(_args("--gate", "no_such_gate"))
    assert main(["gradcheck", "--gate", "no_such_gate"]) == 2
    assert "fnn gradcheck: error: unknown gate(s) ['no_such_gate']" in capsys.readouterr().err


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
    assert run(_args("--all", "--gate", "tanh,lax.mul")) == 0
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
