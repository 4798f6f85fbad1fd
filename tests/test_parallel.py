"""Data-parallel training over 8 host CPU devices, in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (the flag must be set before JAX starts):
20 steps split across 8 devices give the parameters of 20 steps on one device within 1e-5
(relative), for both gradient modes, through fit (the scanned epoch), make_train_step (one
jitted step) and `python -m fnn train --devices 8`. The same with sharded parameters
(shard="params", FSDP): the same losses and parameters, each device holding about 1/8 of the
parameters and of the optimizer state, and `train --shard params` resuming a run."""

import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = textwrap.dedent(r"""
    import dataclasses, json, os, sys
    import jax, jax.numpy as jnp, numpy as np
    from fnn import nn, train
    from fnn.cli import main
    from fnn.train.checkpoint import read_header
    from fnn.train.memory import footprint
    from fnn.train.parallel import data_parallel

    assert jax.device_count() == 8, jax.devices()
    out = {"rel": {}, "fraction": {}, "footprint": {}}
    # sharded parameters: with the default threshold (2**14 elements) these small models would
    # keep every leaf replicated, so split every leaf of >= 256 elements here
    fsdp = data_parallel(8, shard="params", min_shard_size=256)

    def per_device(tree):
        # bytes of device 0's shard of every leaf / bytes of the whole tree
        leaves = jax.tree_util.tree_leaves(tree)
        return (sum(x.addressable_shards[0].data.nbytes for x in leaves)
                / sum(x.nbytes for x in leaves))

    def rel(a, b):
        # per leaf max|a - b| / max|a|, the worst leaf
        return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / np.max(np.abs(x)))
                   for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))

    # 360 examples, 10% validation: 324 to train on, 10 batches of 32; 2 epochs = 20 steps
    data = train.load_dataset("digits", limit=360)
    data = dataclasses.replace(data, x_val=data.x_val[:0], y_val=data.y_val[:0])  # no evaluation
    models = {"mlp": lambda: nn.mlp((32,), dropout=0.1),
              "cnn": lambda: nn.cnn((4,), dense=(16,))}
    for name, build in models.items():
        for grad in ("custom", "builtin"):
            params, losses = {}, {}
            for devices in (None, 8, fsdp):
                before, whole = {id(a) for a in jax.live_arrays()}, []

                def look(ts, record):  # arrays made whole on one device during the sharded fit
                    big = {l.shape for l in jax.tree_util.tree_leaves(ts.params) if l.size >= 256}
                    whole.extend(a.shape for a in jax.live_arrays() if id(a) not in before
                                 and len(a.devices()) == 1 and a.shape in big)

                ts, hist = train.fit(build(), train.make_optimizer("adam", 3e-3), data, epochs=2,
                                     batch_size=32, grad=grad, seed=1, devices=devices,
                                     callback=look if devices is fsdp else None)
                assert not whole, (name, grad, whole)  # sharded params never whole on device 0
                assert ts.step == 20
                kind = "fsdp" if devices is fsdp else devices
                params[kind], losses[kind] = ts.params, [r["train_loss"] for r in hist]
                if devices is None:
                    alone = ts
                if devices is fsdp:
                    sharded = ts
            leaf = jax.tree_util.tree_leaves(params[8])[0]
            assert len(leaf.sharding.device_set) == 8 and leaf.sharding.is_fully_replicated
            out["rel"][f"fit {name} {grad}"] = rel(params[None], params[8])
            out["rel"][f"fit shard=params {name} {grad}"] = rel(params[None], params["fsdp"])
            out["rel"][f"fit shard=params {name} {grad} losses"] = max(
                abs(a - b) / abs(a) for a, b in zip(losses[None], losses["fsdp"]))
            # each weight split along one dimension; Adam's mu and nu split like it
            for (path, w), m in zip(jax.tree_util.tree_leaves_with_path(sharded.params),
                                    jax.tree_util.tree_leaves(sharded.opt_state[0].mu)):
                assert w.sharding == fsdp.param_sharding(w) == m.sharding, (path, w.sharding)
                assert ("fsdp" in w.sharding.spec) == (w.size >= 256), (path, w.sharding)
            out["fraction"][f"{name} {grad} params"] = per_device(sharded.params)
            out["fraction"][f"{name} {grad} opt_state"] = per_device(sharded.opt_state)
            if grad == "custom":  # the sizes an out-of-memory error gives: one device's
                one = footprint(build(), alone, data.input_shape, 32, 0)
                each = footprint(build(), sharded, data.input_shape, 32, 0, devices=8)
                out["footprint"][name] = [each.params / one.params,
                                          each.opt_state / one.opt_state,
                                          each.activations / one.activations, each.describe()]

    # the rule at its default threshold: the largest dimension divisible by 8 (ties: the first)
    rule = data_parallel(8, shard="params")
    specs = {shape: tuple(rule.param_sharding(jax.ShapeDtypeStruct(shape, "float32")).spec)
             for shape in [(64, 256), (256, 256), (3, 3, 64, 128), (100, 10), (16385,), ()]}
    assert specs == {(64, 256): (None, "fsdp"), (256, 256): ("fsdp",),
                     (3, 3, 64, 128): (None, None, None, "fsdp"), (100, 10): (), (16385,): (),
                     (): ()}, specs

    # one jitted step at a time: make_train_step(..., devices=8)
    model, opt = nn.mlp((32,)), train.make_optimizer("adam", 3e-3)
    x, y = jnp.asarray(data.x_train[:64]), jnp.asarray(data.y_train[:64])
    results = []
    for devices in (None, 8, fsdp):
        ts = train.init_train_state(model, opt, data.input_shape, seed=2)
        step = train.make_train_step(model, opt, grad="custom", devices=devices)
        p, s, o = ts.params, ts.state, ts.opt_state
        for i in range(20):
            p, s, o, m = step(p, s, o, (x, y), jax.random.PRNGKey(i))
        results.append(p)
    out["rel"]["make_train_step mlp custom"] = rel(*results[:2])
    out["rel"]["make_train_step shard=params mlp custom"] = rel(results[0], results[2])
    out["fraction"]["make_train_step params"] = per_device(results[2])

    # the epoch is one scan whose gradients are summed across the devices
    step = train.make_train_step(model, opt, jit=False)
    epoch = train.make_train_epoch(step, batch_size=32, devices=8, donate=False)
    dp = data_parallel(8)
    ts = train.init_train_state(model, opt, data.input_shape)
    args = dp.replicate((ts.params, ts.state, ts.opt_state, x, y))
    hlo = epoch.lower(*args, jax.random.PRNGKey(0)).compile().as_text()
    out["all_reduce"] = "all-reduce" in hlo
    # sharded: XLA gathers across the devices (weights, or activations for small batches)
    epoch = train.make_train_epoch(step, batch_size=32, devices=fsdp, donate=False)
    args = (*fsdp.place_params((ts.params,)), *dp.replicate((ts.state,)),
            *fsdp.place_params((ts.opt_state,)), *dp.replicate((x, y)))
    hlo = epoch.lower(*args, jax.random.PRNGKey(0)).compile().as_text()
    out["all_gather"] = "all-gather" in hlo

    # the command line
    run = os.path.join(sys.argv[1], "run")
    out["cli"] = main(["train", "--devices", "8", "--hidden", "256", "--limit", "160",
                       "--batch-size", "16", "--epochs", "1", "--no-progress", "--out", run])
    out["cli_bad"] = main(["train", "--devices", "8", "--batch-size", "30", "--limit", "200",
                           "--out", os.path.join(sys.argv[1], "bad")])
    # resumed with its 64x256 weight split across all 8 devices (no --devices: all of them)
    out["cli_resume"] = main(["train", "--resume", run, "--epochs", "2", "--shard", "params",
                              "--no-progress"])
    out["cli_resumed_epoch"] = read_header(os.path.join(run, "last.safetensors")).meta()["epoch"]
    out["cli_shard_bad"] = main(["train", "--devices", "1", "--shard", "params",
                                 "--out", os.path.join(sys.argv[1], "bad")])
    print("RESULT " + json.dumps(out))
""")


def test_eight_devices_match_one(tmp_path):
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8"
    )
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    for what, rel in out["rel"].items():
        print(
            f"8 devices vs 1, after 20 steps, max relative parameter difference, {what}: {rel:.1e}"
        )
        assert rel <= 1e-5, (what, rel)
    for what, fraction in out["fraction"].items():
        print(f"shard=params: device 0 holds {fraction:.3f} of the {what}")
        # about 1/8: the replicated biases (and the cnn's small conv and 16x10 head) add to it
        assert fraction < (0.3 if what.startswith("cnn") else 0.2), (what, fraction)
    assert len(out["rel"]) == 14 and len(out["fraction"]) == 9
    for name, (params, opt_state, activations, text) in out["footprint"].items():
        print(f"footprint per device, {name}: {text}")
        assert abs(params - out["fraction"][f"{name} custom params"]) < 1e-9, (name, params)
        assert abs(opt_state - out["fraction"][f"{name} custom opt_state"]) < 0.02, opt_state
        assert activations == 1 / 8 and text.startswith("per device, of 8: parameters ")
        assert "one batch of 32 (its 4 examples)" in text
    assert sorted(out["footprint"]) == ["cnn", "mlp"]
    assert out["all_reduce"] and out["all_gather"]
    assert out["cli"] == 0 and "x 8 (data parallel, batch 2 per device)" in r.stdout
    assert os.path.isfile(tmp_path / "run" / "last.safetensors")
    assert out["cli_bad"] == 1
    assert "--batch-size 30 is not divisible by the 8 devices" in r.stderr
    assert not os.path.exists(tmp_path / "bad")  # failed before making the run directory
    assert out["cli_resume"] == 0 and out["cli_resumed_epoch"] == 2
    assert (
        "x 8 (data parallel, batch 2 per device, parameters sharded: 1 of 4 leaves split"
        in r.stdout
    )
    assert out["cli_shard_bad"] == 1
    assert "shard='params' splits parameters across several devices" in r.stderr
