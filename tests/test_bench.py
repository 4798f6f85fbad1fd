"""Smoke tests of the benchmark (fnn/bench.py): it runs in --quick mode and produces its rows.

No timing is asserted: benchmarks are never timed tests.
"""

import json

import jax
import jax.numpy as jnp
import pytest

from fnn import bench, cli, registry


def test_every_gate_has_a_benchmark_size():
    assert set(registry) <= set(bench.gate_inputs(quick=True))
    assert set(registry) <= set(bench.gate_inputs(quick=False))


def test_matmul_flops_counts_dots_and_convs_inside_jit_and_scan():
    def f(a, b, x, w):
        y = jax.jit(jnp.matmul)(a, b)  # 2 * 3 * 5 * 4
        conv = jax.lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        scanned = jax.lax.scan(lambda c, _: (c @ b @ b.T, None), a, None, length=2)[0]
        return y, conv, scanned

    args = (jnp.ones((3, 4)), jnp.ones((4, 5)), jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 6)))
    conv = 2 * (1 * 2 * 2 * 6) * (3 * 3 * 2)
    scan = 2 * (2 * 3 * 4 * 5 + 2 * 3 * 5 * 4)
    assert bench.matmul_flops(jax.make_jaxpr(f)(*args)) == 2 * 3 * 5 * 4 + conv + scan


def _rows(result, kind):
    return [r for r in result["rows"] if r["kind"] == kind]


def test_quick_bench_writes_json_and_markdown(tmp_path, capsys):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    status = cli.main(["bench", "--quick", "--only", "gemm,mlp,epoch,relu,max_pool2d",
                       "--json", str(out), "--markdown", str(md)])
    assert status == 0
    result = json.loads(out.read_text())
    assert result["quick"] and result["dtype"] == "float32" and result["device"]
    assert len(_rows(result, "gemm")) == 1
    steps = {r["case"]: r for r in _rows(result, "step")}
    assert set(steps) == {"mlp"}
    for r in steps.values():
        for key in ("custom_ms", "builtin_ms", "ratio", "custom_compile_s", "builtin_compile_s",
                    "custom_eager_ms", "builtin_eager_ms", "gflop", "matmul_share"):
            assert r[key] > 0, key
        assert r["gflop"] > 0 and (r["torch_ms"] is None) == (r["torch"] is None)
    assert _rows(result, "epoch")[0]["steps"] > 0
    assert {(r["case"], r["desc"]) for r in _rows(result, "gate")} >= {("relu", "(4, 8)")}
    assert len([r for r in _rows(result, "gate") if r["case"] == "max_pool2d"]) == 2
    assert any(t["what"].startswith("mlp: hand-written / built-in step") for t in result["targets"])
    assert "| case |" in md.read_text() and "| gate |" in md.read_text()
    assert "custom ms" in capsys.readouterr().out


def test_quick_bench_bfloat16_keeps_dtypes_straight():
    result = bench.run(only=["cnn", "conv2d", "batch_norm", "max_pool2d"], reps=1,
                       dtype="bfloat16", quick=True, torch=False, eager=False, log=lambda s: None)
    assert result["dtype"] == "bfloat16"
    assert {r["dtype"] for r in _rows(result, "gemm")} == {"float32", "bfloat16"}
    steps = _rows(result, "step")
    assert [r["case"] for r in steps] == ["cnn"]
    assert all(r["dtype"] == "bfloat16" and r["custom_ms"] > 0 for r in steps)
    assert {r["case"] for r in _rows(result, "gate")} == {"conv2d", "batch_norm", "max_pool2d"}


def test_quick_bench_sequence_models():
    """Issue 13's language-model rows: token ids in, per-token labels, both gradients."""
    result = bench.run(only=["lstm", "transformer"], reps=1, quick=True, torch=False,
                       eager=False, log=lambda s: None)
    steps = {r["case"]: r for r in _rows(result, "step")}
    assert list(steps) == ["lstm", "transformer"]
    for case, r in steps.items():
        assert r["custom_ms"] > 0 and r["builtin_ms"] > 0 and r["custom_compile_s"] > 0
        assert r["gflop"] > 0 and r["torch_ms"] is None
        assert f"{case}: hand-written / built-in step time" in {t["what"]
                                                                for t in result["targets"]}
    assert "LSTM(8)" in steps["lstm"]["desc"] and "transformer LM" in steps["transformer"]["desc"]


def test_torch_language_models_match_fnn_parameter_counts():
    """The PyTorch references have fnn's architecture (its LSTM has a second bias vector)."""
    torch = pytest.importorskip("torch")
    from fnn.bench.torch_ref import _sequence_model

    specs = bench.model_specs(quick=True)
    for case in ("lstm", "transformer"):
        spec = specs[case]
        params = bench.build(spec).init(jax.random.PRNGKey(0), spec["input"])[0]
        mine = sum(p.size for p in jax.tree_util.tree_leaves(params))
        theirs = sum(p.numel() for p in _sequence_model(spec, torch, torch.nn).parameters())
        assert theirs - mine == (4 * sum(spec["hidden"]) if case == "lstm" else 0)


def test_bfloat16_model_has_float32_gradients():
    import fnn
    from fnn import nn
    from fnn.train.step import make_loss_fn

    net = bench.in_dtype(nn.mlp((8,), batch_norm=True), jnp.bfloat16)
    params, state, _ = net.init(jax.random.PRNGKey(0), (4, 4, 1))
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 4, 4, 1))
    y = jnp.arange(16) % 10
    loss = make_loss_fn(net)
    results = []
    for vg in (fnn.value_and_grad(loss, has_aux=True), jax.value_and_grad(loss, has_aux=True)):
        (value, (new_state, scores)), grads = jax.jit(vg)(params, state, x, y, None)
        assert value.dtype == scores.dtype == jnp.float32
        assert {g.dtype for g in jax.tree_util.tree_leaves(grads)} == {jnp.dtype(jnp.float32)}
        assert all(a.dtype == b.dtype for a, b in zip(jax.tree_util.tree_leaves(new_state),
                                                      jax.tree_util.tree_leaves(state)))
        results.append(jax.tree_util.tree_leaves(grads))
    # bf16 compute: the two agree to bf16 precision, on the scale of the largest gradient (a
    # bias before batch norm has a gradient of 0 up to rounding, in both)
    scale = max(float(jnp.max(jnp.abs(ref))) for ref in results[1])
    for mine, ref in zip(*results):
        assert float(jnp.max(jnp.abs(mine - ref))) <= 5e-2 * scale


def test_unknown_case_is_an_error():
    with pytest.raises(ValueError, match="unknown bench case"):
        bench.run(only=["nope"], quick=True)
