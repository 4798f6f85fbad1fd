"""Smoke tests of the benchmark (fnn/bench.py): it runs in --quick mode and produces its rows.

No timing is asserted: benchmarks are never timed tests.
"""

import json

import jax
import jax.numpy as jnp
import pytest

from fnn import bench, cli, registry


def test_every_gate_has_a_benchmark_size():
    """fnn's own gates and the lecture's names of JAX's functions (its primitives' rules are
    timed inside the model steps)."""
    from fnn.ops import aliases

    named = set(registry.named) | set(aliases.__all__)
    assert named <= set(bench.gate_inputs(quick=True))
    assert named <= set(bench.gate_inputs(quick=False))


def test_matmul_flops_counts_dots_and_convs_inside_jit_and_scan():
    def f(a, b, x, w):
        y = jax.jit(jnp.matmul)(a, b)  # 2 * 3 * 5 * 4
        conv = jax.lax.conv_general_dilated(
            x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
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
    status = cli.main(
        [
            "bench",
            "--quick",
            "--only",
            "gemm,mlp,epoch,relu,max_pool2d",
            "--json",
            str(out),
            "--markdown",
            str(md),
        ]
    )
    assert status == 0
    result = json.loads(out.read_text())
    assert result["quick"] and result["dtype"] == "float32" and result["device"]
    assert len(_rows(result, "gemm")) == 1
    steps = {r["case"]: r for r in _rows(result, "step")}
    assert set(steps) == {"mlp"}
    for r in steps.values():
        for key in (
            "custom_ms",
            "builtin_ms",
            "ratio",
            "custom_compile_s",
            "builtin_compile_s",
            "custom_eager_ms",
            "builtin_eager_ms",
            "gflop",
            "matmul_share",
        ):
            assert r[key] > 0, key
        assert r["gflop"] > 0 and (r["torch_ms"] is None) == (r["torch"] is None)
    assert _rows(result, "epoch")[0]["steps"] > 0
    assert {(r["case"], r["desc"]) for r in _rows(result, "gate")} >= {("relu", "(4, 8)")}
    assert len([r for r in _rows(result, "gate") if r["case"] == "max_pool2d"]) == 2
    assert any(t["what"].startswith("mlp: hand-written / built-in step") for t in result["targets"])
    assert "| case |" in md.read_text() and "| gate |" in md.read_text()
    assert "custom ms" in capsys.readouterr().out


def test_quick_bench_bfloat16_keeps_dtypes_straight():
    result = bench.run(
        only=["cnn", "conv2d", "batch_norm", "max_pool2d"],
        reps=1,
        dtype="bfloat16",
        quick=True,
        torch=False,
        eager=False,
        log=lambda s: None,
    )
    assert result["dtype"] == "bfloat16"
    assert {r["dtype"] for r in _rows(result, "gemm")} == {"float32", "bfloat16"}
    steps = _rows(result, "step")
    assert [r["case"] for r in steps] == ["cnn"]
    assert all(r["dtype"] == "bfloat16" and r["custom_ms"] > 0 for r in steps)
    assert {r["case"] for r in _rows(result, "gate")} == {"conv2d", "batch_norm", "max_pool2d"}


def test_quick_bench_sequence_models():
    """Issue 13's language-model rows: token ids in, per-token labels, both gradients."""
    result = bench.run(
        only=["lstm", "transformer"],
        reps=1,
        quick=True,
        torch=False,
        eager=False,
        log=lambda s: None,
    )
    steps = {r["case"]: r for r in _rows(result, "step")}
    assert list(steps) == ["lstm", "transformer"]
    for case, r in steps.items():
        assert r["custom_ms"] > 0 and r["builtin_ms"] > 0 and r["custom_compile_s"] > 0
        assert r["gflop"] > 0 and r["torch_ms"] is None
        assert f"{case}: hand-written / built-in step time" in {
            t["what"] for t in result["targets"]
        }
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
        assert all(
            a.dtype == b.dtype
            for a, b in zip(jax.tree_util.tree_leaves(new_state), jax.tree_util.tree_leaves(state))
        )
        results.append(jax.tree_util.tree_leaves(grads))
    # bf16 compute: the two agree to bf16 precision, on the scale of the largest gradient (a
    # bias before batch norm has a gradient of 0 up to rounding, in both)
    scale = max(float(jnp.max(jnp.abs(ref))) for ref in results[1])
    for mine, ref in zip(*results):
        assert float(jnp.max(jnp.abs(mine - ref))) <= 5e-2 * scale


def test_unknown_case_is_an_error():
    with pytest.raises(ValueError, match="unknown bench case"):
        bench.run(only=["nope"], quick=True)
    with pytest.raises(ValueError, match="unknown bench case.s. jax:nope"):
        bench.run(only=["jax:fno", "jax:nope"], quick=True)


def test_one_plain_jax_model_is_a_case():
    """`--only jax:fno` runs the Fourier neural operator's row alone (no trace rows)."""
    from fnn.bench.plan import plan

    _, steps = plan(only=["jax:fno"], quick=True, torch=False)
    assert [label for label, _ in steps] == ["fno"]
    (row,) = steps[0][1]()
    assert row["case"] == "fno" and row["custom_ms"] > 0 and row["builtin_ms"] > 0


def test_pytorch_runs_in_its_own_process_with_only_its_path_added(tmp_path):
    """The reference process gets --torch-path on its path (here a stand-in torch package that
    reports what it sees and refuses to load), imports no JAX, and its failure is a row's
    torch_error, not an exception; this process never imports torch."""
    import sys

    from fnn.bench.steps import torch_columns

    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import sys\nraise ImportError(f'stand-in torch; jax imported: {\"jax\" in sys.modules}')\n"
    )
    spec = bench.model_specs(quick=True)["mlp"]
    out = torch_columns(
        spec,
        "float32",
        0,
        1,
        1e6,
        100.0,
        1.0,
        torch=True,
        torch_path=str(tmp_path),
        load_tolerance=0.5,
        attempts=1,
    )
    assert "stand-in torch; jax imported: False" in out["torch_error"], out
    assert out["torch_ms"] is None and out["torch_ratio"] is None
    assert "torch" not in sys.modules or sys.modules["torch"].__file__ != str(fake)
    skipped = torch_columns(
        spec,
        "float32",
        0,
        1,
        1e6,
        100.0,
        1.0,
        torch=False,
        torch_path=None,
        load_tolerance=0.5,
        attempts=1,
    )
    assert skipped["torch_error"] is None and skipped["torch_ms"] is None


def test_pytorch_on_the_gpu_jax_runs_on(tmp_path, monkeypatch):
    """On JAX's CPU the reference is PyTorch's CPU step; on an NVIDIA GPU it is asked for
    "cuda" (the stand-in torch below records the request's device and sees no GPU: the row
    says so, naming torch's version); a device torch_ref does not know is refused by name."""
    import json
    import subprocess
    import sys

    from fnn.bench import steps, torch_ref

    assert steps.torch_device() == "cpu"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    from jax.extend import backend

    monkeypatch.setattr(
        backend, "get_backend", lambda: type("B", (), {"platform_version": "cuda 13.0"})()
    )
    assert steps.torch_device() == "cuda"
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "__version__ = '0.0-stand-in'\n"
        "def manual_seed(s): pass\n"
        "class cuda:\n    is_available = staticmethod(lambda: False)\n"
    )
    (fake / "nn.py").write_text("")
    spec = bench.model_specs(quick=True)["mlp"]
    out = steps.torch_columns(
        spec,
        "float32",
        0,
        1,
        1e6,
        100.0,
        1.0,
        torch=True,
        torch_path=str(tmp_path),
        load_tolerance=0.5,
        attempts=1,
    )
    assert "device 'cuda' asked for" in out["torch_error"], out
    assert "0.0-stand-in" in out["torch_error"] and out["torch_ms"] is None
    request = {"spec": spec, "dtype": "float32", "reps": 1, "seed": 0, "device": "tpu"}
    r = subprocess.run(
        [sys.executable, torch_ref.__file__, json.dumps(request)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "device must be one of ('cpu', 'cuda'), got 'tpu'" in json.loads(r.stdout)["error"]


def test_a_side_is_timed_again_while_the_load_moves(monkeypatch):
    from fnn.bench import timing

    def loads(values):
        it = iter(values)
        monkeypatch.setattr(timing, "load_average", lambda: next(it))

    calls = []
    loads([1.0, 2.0, 2.0, 2.2])  # moved 1.0 (> 0.5): again; then 0.2
    result, info = timing.steady(lambda: calls.append(1) or len(calls), tolerance=0.5, attempts=3)
    assert (result, info) == (2, {"load": [[1.0, 2.0], [2.0, 2.2]], "chosen": 1, "steady": True})
    loads([1.0, 2.0, 2.0, 2.9, 3.0, 4.5])  # never steady: the least moved kept, flagged
    result, info = timing.steady(lambda: calls.append(1) or len(calls), tolerance=0.5, attempts=3)
    assert result == 4 and info["chosen"] == 1 and not info["steady"]
    assert len(info["load"]) == 3


def _targets_markdown(rows):
    """The Markdown of a run holding nothing but the targets of `rows`."""
    result = {"device": "d", "dtype": "float32", "reps": 1, "load": [1, 1], "rows": []}
    return bench.markdown({**result, "targets": bench.targets(rows)})


def test_spread_and_the_pytorch_targets():
    from fnn.bench.timing import summary

    s = summary([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median"], s["q1"], s["q3"], s["min"], s["max"], s["n"]) == (
        3.0,
        2.0,
        4.0,
        1.0,
        5.0,
        5,
    )
    assert summary([7.0])["q1"] == summary([7.0])["q3"] == 7.0
    row = {
        "kind": "step",
        "case": "lstm",
        "ratio": 0.9,
        "compile_ratio": 1.0,
        "torch_ratio": 1.6,
        "torch_speedup": 1 / 1.6,
        "matmul_share": 0.4,
        "torch_matmul_share": 0.8,
    }
    got = {t["what"]: (t["value"], t["limit"], t["met"]) for t in bench.targets([row])}
    assert got["lstm: fnn / PyTorch step time"] == (1.6, 1.0, False)
    # issue 25: the matmul-bound rows, the LSTM's included, at 85% of the matmul rate at least
    assert got["lstm: step GFLOP/s / matmul GFLOP/s"] == (0.4, 0.85, False)
    assert got["lstm: PyTorch step GFLOP/s / matmul GFLOP/s"] == (0.8, None, None)
    md = _targets_markdown([row])
    assert "| lstm: fnn / PyTorch step time | 1.600 | 1.0 | **no** |" in md
    assert "| lstm: step GFLOP/s / matmul GFLOP/s | 0.400 | 0.85 | **no** |" in md
    assert "| lstm: PyTorch step GFLOP/s / matmul GFLOP/s | 0.800 | n/a | reported |" in md


def test_the_any_jax_rows_of_issue_25_at_most_jax_grads_step_time():
    from fnn.bench.report import missed_by

    def row(case, ratio):
        return {"kind": "jax_model", "case": case, "ratio": ratio, "trace_compile_ratio": 1.0}

    rows = [row(c, 1.003) for c in ("flax_cnn", "lstm_scan", "transformer", "fno")]
    got = {t["what"]: t for t in bench.targets(rows)}
    for case in ("flax_cnn", "lstm_scan", "transformer"):  # issue 25: at most 1.0
        t = got[f"{case}: fnn.grad / jax.grad step time"]
        assert (t["limit"], t["met"], missed_by(t)) == (1.0, False, "0.3% over")
    assert got["fno: fnn.grad / jax.grad step time"]["met"] is True  # issue 11's 1.05
    assert bench.targets([row("transformer", 0.999)])[0]["met"] is True


def test_issue_25s_targets_and_by_how_much_each_is_missed():
    from fnn.bench.report import missed_by

    rows = [
        {
            "kind": "step",
            "case": "cnn",
            "ratio": 0.5,
            "compile_ratio": 1.0,
            "torch_ratio": 0.8,
            "torch_speedup": 1.25,
            "matmul_share": 0.4,
        },
        {
            "kind": "step",
            "case": "transformer",
            "ratio": 0.9,
            "compile_ratio": 1.0,
            "torch_ratio": 1.1,
            "torch_speedup": 1 / 1.1,
            "matmul_share": 0.68,
        },
    ]
    got = {t["what"]: t for t in bench.targets(rows)}
    speedup = got["cnn: PyTorch eager / hand-written step time"]
    assert (speedup["limit"], speedup["met"]) == (1.5, False)
    assert missed_by(speedup) == "17% short"
    share = got["transformer: step GFLOP/s / matmul GFLOP/s"]
    assert (share["limit"], share["met"], missed_by(share)) == (0.85, False, "20% short")
    assert missed_by(got["transformer: fnn / PyTorch step time"]) == "10% over"
    assert got["cnn: fnn / PyTorch step time"]["met"] is True
    md = _targets_markdown(rows)
    missed = [line for line in md.splitlines() if line.startswith("Missed by: ")]
    assert len(missed) == 1
    assert "cnn: PyTorch eager / hand-written step time 17% short (1.250 against 1.5)" in missed[0]
    assert "transformer: fnn / PyTorch step time 10% over (1.100 against 1.0)" in missed[0]
    assert "cnn: fnn / PyTorch" not in missed[0]


def test_the_profile_lists_xla_operations_and_says_what_it_covers():
    from fnn.bench.report import _profile_lines
    from fnn.bench.timing import profile

    a = jnp.ones((64, 64))
    step = jax.jit(lambda a: jnp.sum(jax.nn.relu(a @ a) * 2.0)).lower(a).compile()
    prof = profile(lambda: step(a), step.as_text(), calls=3, top=5)
    assert prof is not None and prof["ops"]
    hlo = step.as_text()
    for name, ms, shape in prof["ops"]:
        # an operation of the compiled program, never the runtime's or a Python function's event
        assert f"%{name} = " in hlo and shape, name
        assert ms >= 0
    assert prof["total_ms"] >= sum(ms for _, ms, _ in prof["ops"]) - 1e-9
    assert prof["wall_ms"] > 0
    lines = _profile_lines([{"case": "mlp", "profile": {"custom": prof, "builtin": None}}])
    assert lines[1] == (
        "Profile of the mlp step, custom gradients (XLA operations, ms per step summed over "
        "threads):"
    )
    assert sum(line.startswith("| ") for line in lines) == 1 + len(prof["ops"])
    assert lines[-1].startswith(f"The {len(prof['ops'])} listed: ")
    assert f"of the {prof['total_ms']:.2f} ms" in lines[-1]
    assert f"took {prof['wall_ms']:.2f} ms (wall)" in lines[-1]
