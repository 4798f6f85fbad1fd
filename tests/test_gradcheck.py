"""`python -m fnn gradcheck`: every registered gate in one table, user gates, a model per layer."""

import argparse
import json
import textwrap

import fnn
from fnn.check.gradcheck import TRANSFORMS, add_gradcheck_arguments, check_gate, gradcheck_main

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
    add_gradcheck_arguments(parser)
    return parser.parse_args(argv)


def test_every_registered_gate_passes_and_is_listed(capsys):
    assert gradcheck_main(_args("--format", "json", "--no-timing")) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["ok"] is True
    rows = {row["gate"]: row for row in table["gates"]}
    assert set(rows) == set(fnn.registry)
    for name, row in rows.items():
        assert row["verdict"] == "ok", (name, row)
        assert row["cases"] >= 1
        assert all(row["transforms"][t] for t in TRANSFORMS), (name, row["transforms"])
    assert table["meta"]["seed"] == 0 and "device" in table["meta"]


def test_user_module_with_a_wrong_vjp_fails(tmp_path, monkeypatch, capsys):
    (tmp_path / "user_gates_broken.py").write_text(textwrap.dedent(BROKEN))
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ("--module", "user_gates_broken", "--gate", "cube,bad_square")
    assert gradcheck_main(_args(*argv)) == 1
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[2:] if line.strip()}
    assert rows["cube"].rstrip().endswith("ok")
    assert "FAIL" in rows["bad_square"] and "vs jax.vjp" in rows["bad_square"]
    assert "FAILED: bad_square" in out
    assert gradcheck_main(_args(*argv[:2], "--gate", "cube", "--format", "markdown")) == 0
    assert "| cube | 1 |" in capsys.readouterr().out
    assert gradcheck_main(_args("--gate", "no_such_gate")) == 2


def test_timing_columns_are_microseconds():
    row = check_gate("relu", fnn.registry["relu"])
    assert row.ok
    assert 0 < row.custom_us < 1e5 and 0 < row.builtin_us < 1e5


def test_model_check_per_layer(capsys):
    assert gradcheck_main(_args("--model", "mlp")) == 0
    out = capsys.readouterr().out
    for leaf in ("1_dense/w", "1_dense/b", "3_dense/w", "5_dense/b"):
        assert leaf in out
    assert "gradient check OK" in out and "agree with jax.vjp" in out
