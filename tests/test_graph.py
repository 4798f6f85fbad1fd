"""fnn.graph: values and gradients on every edge, DOT in the lecture's style, text, one gate."""

import argparse
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import ops
from fnn.check import graph
from fnn.check.graph import graph_layers
from fnn.check.zoo import small_model
from fnn.cli._args import UsageError
from fnn.cli.graph import add_arguments, run


def simple(x, y, z):
    return (x + y) * z


def neuron(w0, x0, w1, x1, w2):
    return 1.0 / (1.0 + ops.exp(-(w0 * x0 + w1 * x1 + w2)))


def _edge(g, src_name, dst_name):
    names = {n.key: n.name for n in g.nodes}
    (edge,) = [e for e in g.edges if names[e.src] == src_name and names[e.dst] == dst_name]
    return edge


def test_simple_graph_values_and_gradients_on_edges():
    g = graph(simple, -2.0, 5.0, -4.0)
    assert [n.name for n in g.nodes] == ["x", "y", "z", "#0", "#1", "f"]
    e = _edge(g, "x", "#0")
    assert float(e.value) == -2.0 and float(e.grad) == -4.0
    e = _edge(g, "#0", "#1")  # q = x + y
    assert float(e.value) == 3.0 and float(e.grad) == -4.0
    e = _edge(g, "z", "#1")
    assert float(e.value) == -4.0 and float(e.grad) == 3.0
    e = _edge(g, "#1", "f")
    assert float(e.value) == -12.0 and float(e.grad) == 1.0


def test_dot_has_the_lecture_numbers_values_green_above_gradients_red_below():
    dot = graph(simple, -2.0, 5.0, -4.0, title="(x + y) z").to_dot()
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    for number in ("-12", "-4", "3", "-2", "5"):
        assert f">{number}</font>" in dot
    assert '<font color="darkgreen">-12</font><br/><font color="red">1</font>' in dot
    assert '<font color="darkgreen">3</font><br/><font color="red">-4</font>' in dot
    assert 'label="+"' in dot and 'label="*"' in dot


def test_text_view():
    text = graph(simple, -2.0, 5.0, -4.0, title="(x + y) z").to_text()
    lines = text.splitlines()
    assert lines[0] == "(x + y) z"
    row = next(line for line in lines if line.strip().startswith("#1")).split()
    assert row[:5] == ["#1", "multiply", "*", "#0,", "z"] and row[5:7] == ["-12", "1"]
    assert "test_graph.py:" in text  # the call site of each gate


def test_neuron_in_lecture_style_and_one_gate_explained():
    g = graph(neuron, 2.0, -1.0, -3.0, -2.0, -3.0)
    labels = [n.label for n in g.nodes if n.kind == "gate"]
    assert labels == ["*", "*", "+", "+", "*-1", "exp", "+1", "1/x"]
    dot = g.to_dot()
    for number in ("0.73", "1.37", "0.37", "-0.53", "-0.2", "0.39", "-0.59"):
        assert f">{number}</font>" in dot
    text = g.explain("divide")
    assert "upstream gradient  1" in text
    assert "local gradient -0.53 x upstream 1 = -0.53" in text  # -1 / 1.37**2
    text = g.explain("exp")
    assert "local gradient 0.37 x upstream -0.53 = -0.2" in text
    fused = graph(
        lambda w0, x0, w1, x1, w2: ops.sigmoid(w0 * x0 + w1 * x1 + w2), 2.0, -1.0, -3.0, -2.0, -3.0
    )
    assert "local gradient 0.2 x upstream 1 = 0.2" in fused.explain("sigmoid")  # s (1 - s)
    with pytest.raises(ValueError, match="no gate"):
        g.explain("conv2d")


def test_copy_gate_edges_carry_their_own_share_of_the_gradient():
    g = graph(lambda x: x * 3.0 + x * 4.0, 1.5)
    shares = sorted(float(e.grad) for e in g.edges if e.src == "i0")
    assert shares == [3.0, 4.0]
    (x,) = [n for n in g.nodes if n.name == "x"]
    assert float(x.grad) == 7.0


def test_arrays_constants_and_explain_show_the_vjp():
    W = jnp.array([[0.1, 0.5], [-0.3, 0.8]])
    x = jnp.array([0.2, 0.4])
    g = graph(lambda W: ops.sum((W @ x) ** 2), W)
    assert [n.kind for n in g.nodes].count("const") == 1  # x, not differentiated
    (w,) = [n for n in g.nodes if n.name == "W"]
    np.testing.assert_allclose(w.grad, [[0.088, 0.176], [0.104, 0.208]], rtol=1e-5)
    text = g.explain("matmul")
    assert "VJP sends back [0.088, 0.18, 0.1, 0.21]" in text
    assert "Jacobian" in text


def test_layer_graph_of_a_model():
    model, params, state, x, y = small_model("mlp")
    g = graph_layers(model, params, state, x, y)
    layers = [n.name for n in g.nodes if n.kind == "layer"]
    # 0_flatten of an input already flat computes nothing (jnp.reshape to the same shape is no
    # equation), so it has no node
    assert layers == ["1_dense", "2_relu", "3_dense", "4_relu", "5_dense", "loss"]
    (dense,) = [n for n in g.nodes if n.name == "1_dense"]
    assert dense.op == "affine"
    e = _edge(g, "1_dense/w", "1_dense")
    ref = fnn.grad(lambda p: ops.softmax_cross_entropy(model.apply(p, state, x)[0], y))(params)
    np.testing.assert_allclose(e.grad, ref["1_dense"]["w"], rtol=1e-6)
    assert "norm" in g.to_dot() and "1_dense" in g.to_text()


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_graph_command_lecture_and_model(tmp_path, capsys):
    assert run(_args("lecture", "--out", str(tmp_path))) == 0
    out = capsys.readouterr().out
    assert "-12" in out and "local gradient -0.53 x upstream 1 = -0.53" in out
    for name in ("simple", "neuron", "sigmoid_gate", "copy_gate"):
        assert (tmp_path / f"{name}.dot").exists()
        if shutil.which("dot"):
            assert (tmp_path / f"{name}.svg").stat().st_size > 0
    assert run(_args("--model", "mlp", "--out", str(tmp_path))) == 0
    assert "1_dense" in (tmp_path / "mlp.dot").read_text()
    with pytest.raises(UsageError, match="say what to draw"):
        run(_args())
    from fnn.cli import main

    assert main(["graph"]) == 2  # bad usage
