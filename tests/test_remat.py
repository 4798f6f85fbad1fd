"""Rematerialization (issue 15, item 5): fnn.checkpoint, fnn.nn.remat, the models' remat=True,
make_train_step/fit(remat=) and `train --remat`.

Gradients with remat equal those without (float64; fnn.grad and jax.grad against jax.grad of
the function without checkpoints); the recomputation really happens in the backward (the
forward's ops appear twice in the differentiated program, the fnn tape holds one remat gate
where a user's checkpoint was and the gate itself where an fnn gate was called); the compiled
temp memory of a deep MLP's step is smaller with it; bad inputs get clear errors. Every
checkpoint policy, and checkpoint_name: tests/test_remat_policies.py."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn import nn, train
from fnn.cli import main
from fnn.train.config import ConfigError, TrainConfig, resume_config
from fnn.train.step import make_train_step, remat_model, uses_remat

CE = fnn.registry["softmax_cross_entropy"]


def _body(w, x):  # fnn gates and plain jnp together
    return jnp.sin(fnn.ops.tanh(x @ w) * 2.0) + fnn.ops.relu(x)[:, :1]


def _loss(body):
    def loss(w, x):
        h = body(w, x)
        return jnp.sum(body(w * 0.5, h) ** 2)

    return loss


def _max_diff(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    return max((float(jnp.max(jnp.abs(x - y))) for x, y in zip(la, lb)), default=0.0)


def _count(jaxpr, name) -> int:
    """How many equations of primitive `name` a jaxpr holds, nested jaxprs included."""
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == name
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            n += _count(sub, name)
    return n


@pytest.fixture
def w_x(x64):
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.normal(size=(4, 4))), jnp.asarray(rng.normal(size=(3, 4)))


def test_checkpoint_gradients_equal_those_without(w_x):
    w, x = w_x
    want = jax.grad(_loss(_body), argnums=(0, 1))(w, x)
    for policy in (
        None,
        jax.checkpoint_policies.nothing_saveable,
        jax.checkpoint_policies.everything_saveable,
        jax.checkpoint_policies.checkpoint_dots,
    ):
        ck = _loss(fnn.checkpoint(_body, policy=policy))
        for grad in (fnn.grad, jax.grad):
            got = jax.jit(grad(ck, argnums=(0, 1)))(w, x)
            assert _max_diff(got, want) < 1e-12, (grad, policy)


def test_the_backward_recomputes_the_forward(w_x):
    """fnn.grad of a checkpointed function runs its forward again in the backward (tanh, whose
    gate saves its output, twice per call of the body instead of once); policy
    everything_saveable keeps it instead. What is recomputed is what JAX's program recomputes
    (sin, whose output the backward does not need, is not)."""
    w, x = w_x
    counts = {}
    for policy in ("plain", None, jax.checkpoint_policies.everything_saveable):
        f = _loss(_body) if policy == "plain" else _loss(fnn.checkpoint(_body, policy=policy))
        for grad in (fnn.grad, jax.grad):
            jaxpr = jax.make_jaxpr(grad(f))(w, x).jaxpr
            counts[policy, grad] = [_count(jaxpr, p) for p in ("tanh", "sin", "dot_general")]
        assert counts[policy, fnn.grad] == counts[policy, jax.grad], policy
    assert counts["plain", fnn.grad] == [2, 2, 5]
    assert counts[None, fnn.grad] == [4, 2, 7]
    assert counts[jax.checkpoint_policies.everything_saveable, fnn.grad] == [2, 2, 5]


def test_a_checkpoint_is_one_remat_gate_and_an_fnn_gate_is_itself(w_x):
    """A user's checkpoint is recorded as the remat gate; an fnn gate (whose call is also a
    `remat` equation in the jaxpr, with a GateCall policy) as the gate itself, not as a
    checkpoint, inside a checkpoint too."""
    w, x = w_x
    outer = lambda w: jnp.sum(fnn.checkpoint(lambda v: fnn.ops.softplus(v) * 3.0)(w))
    names = [r.gate.name for r in fnn.trace(outer, w).tape.records]
    assert names.count("lax.remat2") == 1 and "softplus" not in names
    names = [r.gate.name for r in fnn.trace(lambda w: jnp.sum(fnn.ops.softplus(w)), w).tape.records]
    assert "softplus" in names and "lax.remat2" not in names
    # inside: the checkpoint's body runs fnn's softplus gate (its hand-written rule), as
    # fnn.rules sees: an override of softplus's backward reaches into the checkpoint
    doubled = fnn.grad(outer, rules={"softplus": lambda g, x, out: (2 * g * jax.nn.sigmoid(x),)})(w)
    assert _max_diff(doubled, 2 * jax.grad(outer)(w)) < 1e-12


def test_bad_inputs_get_clear_errors():
    with pytest.raises(TypeError, match="fnn.checkpoint: fun must be a function, got int"):
        fnn.checkpoint(3)
    with pytest.raises(TypeError, match="prevent_cse must be True or False"):
        fnn.checkpoint(jnp.sin, prevent_cse="yes")
    with pytest.raises(TypeError, match="static_argnums must be an int or a tuple of ints"):
        fnn.checkpoint(jnp.sin, static_argnums="0")
    with pytest.raises(TypeError, match="policy must be None or a checkpoint policy"):
        fnn.checkpoint(jnp.sin, policy="dots")
    with pytest.raises(TypeError, match="remat\\(\\): layer must be a fnn.nn Layer, got str"):
        nn.remat("dense")
    with pytest.raises(ValueError, match="dense is a leaf layer"):
        nn.remat(nn.Dense(3), 2)
    chain = nn.serial(nn.Dense(3), nn.Relu(), nn.Dense(2))
    with pytest.raises(ValueError, match="segments must be at least 1"):
        nn.remat(chain, 0)
    with pytest.raises(ValueError, match="adding up to its 3 layers, got \\[1, 1\\]"):
        nn.remat(chain, [1, 1])
    with pytest.raises(ValueError, match="adding up to its 3 layers, got 'sqrtx'"):
        nn.remat(chain, "sqrtx")
    with pytest.raises(ValueError, match="checkpointed already"):
        nn.remat(nn.mlp((4, 4), remat=True), 2)
    with pytest.raises(ValueError, match="remat must be True, False or a positive int"):
        make_train_step(chain, optax.sgd(0.1), remat="yes")
    with pytest.raises(TypeError, match="mlp: remat must be True or False"):
        nn.mlp((4,), remat=1)
    with pytest.raises(ConfigError, match="remat must be true or false, got 'yes'"):
        TrainConfig(remat="yes")


def _f64(tree):
    return jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
    )


def nested(remat: bool):
    inner = nn.serial(nn.Dense(4), nn.Tanh(), name="inner")
    return nn.serial(
        nn.Dense(4),
        nn.Relu(),
        nn.remat(inner) if remat else inner,
        nn.Dense(4),
        nn.Relu(),
        nn.Dense(3),
        name="net",
    )


MODELS = {  # name: (builder of the model with/without remat, one example's shape, input)
    "mlp": (lambda r: nn.mlp((6, 5), 3, batch_norm=True, dropout=0.2, remat=r), (4,), "float"),
    "cnn": (lambda r: nn.cnn((2,), 3, dense=(4,), remat=r), (6, 6, 1), "float"),
    "resnet": (lambda r: nn.resnet((2,), 3, remat=r), (4, 4, 2), "float"),
    "lstm": (lambda r: nn.rnn_lm("lstm", 5, hidden=(3,), embed=2, remat=r), (3,), "tokens"),
    "transformer": (
        lambda r: nn.transformer_lm(5, width=4, depth=1, heads=2, remat=r),
        (3,),
        "tokens",
    ),
    # nested: runs of about sqrt(n) layers, one holding a layer checkpointed whole
    "nn.remat(serial, 'sqrt'), nn.remat(layer) inside": (
        lambda r: nn.remat(nested(r), "sqrt") if r else nested(r),
        (4,),
        "float",
    ),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_remat_models_have_the_same_params_and_gradients(name, x64):
    build, shape, kind = MODELS[name]
    plain, remat = build(False), build(True)
    assert any(layer.remat for layer in [remat] + [l for _, l in nn.named_layers(remat)])
    assert not plain.remat
    params, state, _ = plain.init(jax.random.PRNGKey(0), shape)
    params, state = _f64(params), _f64(state)
    assert jax.tree_util.tree_structure(
        remat.init(jax.random.PRNGKey(0), shape)[0]
    ) == jax.tree_util.tree_structure(params)  # checkpoints load either way
    if kind == "tokens":
        x = jax.random.randint(jax.random.PRNGKey(1), (2,) + shape, 0, 5)
        y = jax.random.randint(jax.random.PRNGKey(2), (2,) + shape, 0, 5)
    else:
        x = jax.random.normal(jax.random.PRNGKey(1), (2,) + shape, jnp.float64)
        y = jnp.array([0, 2])
    key = jax.random.PRNGKey(3)

    def loss(model):
        def f(p):
            scores, new_state = model.apply(p, state, x, key=key, train=True)
            return CE(scores, y), new_state

        return f

    @jax.jit  # one program for the three: compiling is most of this test's time
    def all_three(params):
        return [
            vg(loss(model), has_aux=True)(params)
            for vg, model in (
                (jax.value_and_grad, plain),
                (fnn.value_and_grad, remat),
                (jax.value_and_grad, remat),
            )
        ]

    ((want, want_state), want_g), *got = all_three(params)
    for ((value, new_state), g), by in zip(got, ("fnn.grad", "jax.grad")):
        assert abs(float(value - want)) < 1e-12
        assert _max_diff(g, want_g) < 1e-10, by
        assert _max_diff(new_state, want_state) < 1e-12  # BatchNorm statistics come out


def test_observe_sees_the_same_layers_and_values_through_remat():
    plain, remat, shape = nested(False), nn.remat(nested(True), "sqrt"), (4,)
    params, state, _ = plain.init(jax.random.PRNGKey(0), shape)
    x = jax.random.normal(jax.random.PRNGKey(1), (2,) + shape)
    seen = {}
    for model in (plain, remat):
        acts = seen[model.remat] = {}
        model.apply(
            params,
            state,
            x,
            train=True,
            observe=lambda path, layer, y: acts.update(  # noqa: B023 (called in this iteration)
                {"/".join(path): y}
            ),
        )
    assert list(seen[True]) == list(seen[False]) and len(seen[True]) == 8
    assert _max_diff(seen[True], seen[False]) == 0


def test_remat_model_wraps_what_it_can():
    chain = nn.mlp((4,) * 8, 3)  # 18 top-level layers: runs of 4
    assert remat_model(chain, False) is chain
    assert remat_model(nn.mlp((4,), remat=True)).remat  # its own blocks, kept
    assert remat_model(chain).remat and remat_model(chain, 2).remat
    leaf = nn.Dense(3)
    assert remat_model(leaf).remat and remat_model(leaf).children == ()


def test_remat_keeps_what_a_wrapper_of_a_serial_adds():
    """A layer with a serial's kind and children but an apply of its own (the bench's bfloat16
    wrapper: casts around the model) is checkpointed whole, never rebuilt from its children
    (which would drop the casts), and its remat flag survives the wrapper."""
    from fnn.bench.cases import in_dtype

    wrapped = in_dtype(nn.mlp((4, 4), 3), jnp.bfloat16)
    assert wrapped.kind == "serial" and not nn.is_plain_serial(wrapped)
    with pytest.raises(ValueError, match="does more than chain its children"):
        nn.remat(wrapped, 2)
    step = make_train_step(wrapped, optax.sgd(0.1), remat=True, jit=False)
    params, state, _ = wrapped.init(jax.random.PRNGKey(0), (4,))
    batch = (jnp.ones((2, 4)), jnp.zeros((2,), jnp.int32))
    jaxpr = str(
        jax.make_jaxpr(step)(
            params, state, optax.sgd(0.1).init(params), batch, jax.random.PRNGKey(1)
        )
    )
    assert "bf16" in jaxpr and "optimization_barrier" in jaxpr  # the remat gate recomputes
    assert uses_remat(in_dtype(nn.mlp((4,), remat=True), jnp.bfloat16))


def _temp(step, model, opt, x, y):
    params, state, _ = model.init(jax.random.PRNGKey(0), x.shape[1:])
    lowered = step.lower(params, state, opt.init(params), (x, y), jax.random.PRNGKey(1))
    return lowered.compile().memory_analysis().temp_size_in_bytes


def test_remat_makes_the_compiled_step_of_a_deep_mlp_smaller():
    """XLA's temp memory (a compile-time figure) of the train step of a 10-layer MLP (width 64,
    batch 256): the activations of runs of layers are recomputed instead of kept."""
    from fnn.runtime import REMAT_CPU_OPTIONS, remat_compiler_options

    assert (
        remat_compiler_options("cpu") == REMAT_CPU_OPTIONS and remat_compiler_options("gpu") == {}
    )
    model, opt = nn.mlp((64,) * 10, 10), optax.sgd(0.1)
    x, y = jnp.ones((256, 64)), jnp.zeros((256,), jnp.int32)
    for grad in ("custom", "builtin"):
        plain = _temp(make_train_step(model, opt, grad=grad), model, opt, x, y)
        remat = _temp(make_train_step(model, opt, grad=grad, remat=True), model, opt, x, y)
        assert remat * 2 < plain, (grad, plain, remat)
    # a whole epoch (make_train_epoch) of a remat step: smaller only with the options
    step = make_train_step(model, opt, remat=True, jit=False)
    params, state, _ = model.init(jax.random.PRNGKey(0), x.shape[1:])
    args = (params, state, opt.init(params), x, y, jax.random.PRNGKey(1))
    temps = [
        train.make_train_epoch(step, batch_size=256, compiler_options=options)
        .lower(*args)
        .compile()
        .memory_analysis()
        .temp_size_in_bytes
        for options in (None, remat_compiler_options())
    ]
    assert temps[1] < 0.7 * temps[0], temps  # 0.53 measured


@pytest.fixture(scope="module")
def digits():
    return train.load_dataset("digits", limit=160)


def test_train_steps_and_fit_give_the_same_losses_with_remat(digits):
    model, opt = nn.mlp((16, 16), 10), optax.sgd(0.1)
    x, y = jnp.asarray(digits.x_train[:32]), jnp.asarray(digits.y_train[:32])
    params, state, _ = model.init(jax.random.PRNGKey(0), digits.input_shape)
    for grad in ("custom", "builtin"):
        steps = [
            make_train_step(model, opt, grad=grad, jit=False, remat=remat)
            for remat in (False, True)
        ]

        @jax.jit  # both steps in one program (make_train_step's jit=True: the memory test)
        def both(states, key):
            return [step(*ts, (x, y), key) for step, ts in zip(steps, states)]  # noqa: B023 (called in this iteration)

        states, losses = [(params, state, opt.init(params))] * 2, []
        for i in range(3):
            out = both(states, jax.random.PRNGKey(i))
            states = [o[:3] for o in out]
            losses.append([float(o[3]["loss"]) for o in out])
        losses = np.array(losses)
        np.testing.assert_allclose(losses[:, 1], losses[:, 0], rtol=1e-5)
        assert losses[-1, 1] < losses[0, 1]
    runs = [
        train.fit(model, opt, digits, epochs=2, batch_size=32, remat=remat)[1]
        for remat in (False, True)
    ]
    np.testing.assert_allclose(
        [r["train_loss"] for r in runs[1]], [r["train_loss"] for r in runs[0]], rtol=1e-5
    )


def test_train_remat_flag_round_trip(tmp_path):
    """`train --remat` is saved in config.json; --resume keeps it (resume_config), or changes it
    with --no-remat (it changes no value, only memory and time)."""
    saved = TrainConfig(remat=True)
    assert resume_config(saved, saved, {}).remat is True
    assert resume_config(saved, saved, {"remat": False}).remat is False
    out = str(tmp_path / "run")
    tiny = ["--hidden", "8", "--limit", "100", "--batch-size", "32", "--no-progress"]
    assert main(["train", "--out", out, "--epochs", "1", "--remat", *tiny]) == 0
    config = lambda: json.load(open(os.path.join(out, "config.json")))
    assert config()["remat"] is True
    assert main(["train", "--resume", out, "--epochs", "2", "--no-remat", "--no-progress"]) == 0
    assert config()["remat"] is False and config()["epochs"] == 2
    with open(os.path.join(out, "metrics.jsonl")) as f:
        assert [json.loads(line)["epoch"] for line in f] == [1, 2]
