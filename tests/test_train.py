"""Training: optimizers and schedules by name, the compiled step and epoch, evaluation, fit, and
the parity of hand-written (custom) and JAX (builtin) gradients over 100 steps in float32."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fnn import nn
from fnn.train import (
    OPTIMIZERS,
    fit,
    init_train_state,
    load_dataset,
    make_eval_step,
    make_evaluate,
    make_loss_fn,
    make_optimizer,
    make_schedule,
    make_train_epoch,
    make_train_step,
)
from fnn.train.step import per_example_loss


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def toy_params():
    return {"w": jnp.full((3, 2), 2.0), "b": jnp.full((2,), -2.0)}


def toy_loss(p):
    return jnp.sum((p["w"] - 1.0) ** 2) + jnp.sum((p["b"] + 1.0) ** 2)


# ---- optimizers and schedules -----------------------------------------------------------------
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizers_by_name_reduce_a_quadratic(name):
    opt = make_optimizer(
        name, 0.05, schedule="cosine", total_steps=40, clip=10.0, weight_decay=1e-4
    )

    @jax.jit
    def run(p):
        def body(carry, _):
            p, s = carry
            updates, s = opt.update(jax.grad(toy_loss)(p), s, p)
            return (optax.apply_updates(p, updates), s), None

        return jax.lax.scan(body, (p, opt.init(p)), None, length=40)[0][0]

    p = toy_params()
    assert float(toy_loss(run(p))) < 0.5 * float(toy_loss(p))


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown optimizer 'adagrad'.*adamw"):
        make_optimizer("adagrad")
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        make_schedule("linear", 0.1, total_steps=10)
    with pytest.raises(ValueError, match="total_steps"):
        make_schedule("cosine", 0.1)
    model = nn.mlp((4,))
    with pytest.raises(ValueError, match="grad must be one of custom, builtin"):
        make_train_step(model, optax.sgd(0.1), grad="numeric")
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss_fn(model, "hinge2")


def test_schedules():
    const = make_schedule("constant", 0.1)
    assert float(const(0)) == pytest.approx(0.1) and float(const(10**6)) == pytest.approx(0.1)
    cos = make_schedule("cosine", 0.1, total_steps=100)
    assert [float(cos(s)) for s in (0, 50, 100)] == pytest.approx([0.1, 0.05, 0.0], abs=1e-7)
    step = make_schedule("step", 0.1, total_steps=90)
    assert [float(step(s)) for s in (0, 29, 30, 60, 89)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.001, 0.001], rel=1e-5
    )
    step = make_schedule("step", 1.0, step_every=5, decay=0.5)
    assert float(step(10)) == pytest.approx(0.25)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_applies_to_kernels_only(name):
    p = toy_params()
    opt = make_optimizer(name, 1.0, weight_decay=0.1)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, p)
    updates, _ = opt.update(zeros, opt.init(p), p)
    new = optax.apply_updates(p, updates)
    np.testing.assert_allclose(new["w"], 0.9 * p["w"], rtol=1e-6)
    np.testing.assert_allclose(new["b"], p["b"])


def test_gradient_clipping():
    p = toy_params()
    opt = make_optimizer("sgd", 1.0, clip=1.0)
    grads = jax.tree_util.tree_map(lambda x: jnp.full_like(x, 10.0), p)
    updates, _ = opt.update(grads, opt.init(p), p)
    norm = jnp.sqrt(sum(jnp.sum(u**2) for u in jax.tree_util.tree_leaves(updates)))
    assert float(norm) == pytest.approx(1.0, rel=1e-5)


# ---- step, epoch, evaluation -------------------------------------------------------------------
@pytest.mark.parametrize("grad", ["custom", "builtin"])
def test_jit_step_learns_and_donates(digits, grad):
    model = nn.mlp((32,))
    opt = make_optimizer("adam", 1e-2)
    ts = init_train_state(model, opt, digits.input_shape, seed=0)
    step = make_train_step(model, opt, grad=grad)
    batch = (jnp.asarray(digits.x_train[:64]), jnp.asarray(digits.y_train[:64]))
    params, state, opt_state = ts.params, ts.state, ts.opt_state
    first = params["1_dense"]["w"]
    losses = []
    for i in range(20):
        params, state, opt_state, m = step(params, state, opt_state, batch, jax.random.PRNGKey(i))
        losses.append(float(m["loss"]))
    assert set(m) == {"loss", "accuracy"}
    assert losses[-1] < 0.2 * losses[0] and float(m["accuracy"]) > 0.9
    assert first.is_deleted()  # params were donated to the step


def test_l2_penalty_and_svm_loss(digits):
    model = nn.mlp((8,))
    params, state, _ = model.init(jax.random.PRNGKey(0), digits.input_shape)
    x, y = jnp.asarray(digits.x_train[:16]), jnp.asarray(digits.y_train[:16])
    base, _ = make_loss_fn(model)(params, state, x, y, None)
    reg, _ = make_loss_fn(model, l2=0.01)(params, state, x, y, None)
    weights = sum(float(jnp.sum(w**2)) for w in jax.tree_util.tree_leaves(params) if w.ndim == 2)
    assert float(reg - base) == pytest.approx(0.01 * weights, rel=1e-5)
    svm, _ = make_loss_fn(model, "svm")(params, state, x, y, None)
    assert float(svm) > 0
    per = per_example_loss("svm", jnp.ones((3, 4)) * jnp.arange(4.0), jnp.array([0, 3, 1]))
    # scores (0, 1, 2, 3) per row: margins s_j - s_y + 1 over j != y, clipped at 0
    np.testing.assert_allclose(per, [2 + 3 + 4, 0, 0 + 2 + 3])


def test_epoch_is_one_scan_and_deterministic(digits):
    model = nn.mlp((16,), dropout=0.1)
    opt = make_optimizer("sgd", 0.1)
    step = make_train_step(model, opt, grad="custom", jit=False)
    epoch = make_train_epoch(step, batch_size=100, donate=False)
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    ts = init_train_state(model, opt, digits.input_shape)
    out1 = epoch(ts.params, ts.state, ts.opt_state, x, y, jax.random.PRNGKey(1))
    out2 = epoch(ts.params, ts.state, ts.opt_state, x, y, jax.random.PRNGKey(1))
    out3 = epoch(ts.params, ts.state, ts.opt_state, x, y, jax.random.PRNGKey(2))
    assert out1[3]["loss"].shape == (len(digits.x_train) // 100,)
    w = [o[0]["1_dense"]["w"] for o in (out1, out2, out3)]
    np.testing.assert_array_equal(w[0], w[1])
    assert not np.array_equal(w[0], w[2])
    assert float(out1[3]["loss"][-1]) < float(out1[3]["loss"][0])
    with pytest.raises(ValueError, match="batch size 5000"):
        make_train_epoch(step, batch_size=5000)(
            ts.params, ts.state, ts.opt_state, x, y, jax.random.PRNGKey(0)
        )


def test_evaluate_pads_and_masks(digits):
    model = nn.mlp((8,), batch_norm=True)
    params, state, _ = model.init(jax.random.PRNGKey(0), digits.input_shape)
    x, y = jnp.asarray(digits.x_val[:30]), jnp.asarray(digits.y_val[:30])
    got = make_evaluate(model, batch_size=7)(params, state, x, y)  # 5 batches, 5 padded rows
    ref = make_eval_step(model)(params, state, (x, y))
    assert float(got["loss"]) == pytest.approx(float(ref["loss"]), rel=1e-5)
    assert float(got["accuracy"]) == pytest.approx(float(ref["accuracy"]))


def test_fit_history(digits):
    model = nn.mlp((32,))
    schedule = make_schedule("cosine", 3e-3, total_steps=2 * (len(digits.x_train) // 128))
    lines = []
    ts, history = fit(
        model,
        make_optimizer("adam", schedule),
        digits,
        epochs=2,
        batch_size=128,
        schedule=schedule,
        log=lines.append,
    )
    assert ts.epoch == 2 and ts.step == 2 * (len(digits.x_train) // 128)
    assert [r["epoch"] for r in history] == [1, 2] and "compile_s" in history[0]
    for key in (
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "lr",
        "steps_per_s",
        "examples_per_s",
        "time_s",
    ):
        assert key in history[1]
    assert history[1]["val_acc"] > 0.5 and len(lines) == 2 and "val loss" in lines[0]


# ---- parity ------------------------------------------------------------------------------------
def test_custom_and_builtin_losses_agree_over_100_steps(digits):
    """Same seed, same model and data: the hand-written and JAX gradients give losses that agree
    within 1e-4 (relative) at each of the first 100 steps, in float32."""
    model = nn.mlp((256,))
    opt = make_optimizer("adam", 1e-3, schedule="cosine", total_steps=1000)
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    assert x.dtype == jnp.float32 and len(x) // 12 >= 100
    losses = {}
    for grad in ("custom", "builtin"):
        ts = init_train_state(model, opt, digits.input_shape, seed=0)
        step = make_train_step(model, opt, grad=grad, jit=False)
        epoch = make_train_epoch(step, batch_size=12)
        *_, metrics = epoch(ts.params, ts.state, ts.opt_state, x, y, jax.random.PRNGKey(0))
        losses[grad] = np.asarray(metrics["loss"][:100])
    assert losses["custom"].dtype == np.float32
    rel = np.abs(losses["custom"] - losses["builtin"]) / np.abs(losses["builtin"])
    print(f"max relative loss difference over 100 steps: {rel.max():.2e}")
    assert rel.max() <= 1e-4, rel.max()
    assert losses["custom"][-10:].mean() < 0.3 * losses["custom"][:10].mean()  # it learned


# ---- fit's hooks ---------------------------------------------------------------------------------
def test_a_hook_sees_every_epoch_in_order(digits):
    from fnn.train import Hook

    class Seen(Hook):
        def __init__(self):
            self.calls = []

        def on_epoch_start(self, ts, n_steps):
            self.calls.append(("start", ts.epoch + 1, n_steps))

        def after_epoch(self, before, params, losses, key):
            self.calls.append(("after", before.epoch + 1, len(losses)))

        def on_epoch_end(self, ts, record):
            self.calls.append(("end", ts.epoch, record["epoch"]))

    seen = Seen()
    n = len(digits.x_train) // 256
    ts, history = fit(
        nn.mlp((8,)), make_optimizer("adam", 1e-2), digits, epochs=2, batch_size=256, hooks=[seen]
    )
    assert seen.calls == [
        ("start", 1, n),
        ("after", 1, n),
        ("end", 1, 1),
        ("start", 2, n),
        ("after", 2, n),
        ("end", 2, 2),
    ]
    assert [r["epoch"] for r in history] == [1, 2] and ts.epoch == 2


@pytest.mark.parametrize("how", ["handler", "raise"])
def test_ctrl_c_inside_the_compiled_epoch_is_a_keyboard_interrupt(digits, how):
    """Ctrl-C while a progress callback runs inside the compiled epoch reaches fit wrapped in
    JAX's runtime error; fit raises KeyboardInterrupt (decided by a note, not by the text).
    "handler": the SIGINT handler runs there, as when the signal lands in the callback (a real
    os.kill is delivered whenever the OS and JAX's threads let it, so it is not used here)."""
    import signal

    from fnn.train import Hook

    class CtrlC(Hook):
        progress = True

        def on_progress(self, done):
            if how == "handler":
                signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
            else:
                raise KeyboardInterrupt

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        fit(
            nn.mlp((8,)),
            make_optimizer("adam", 1e-2),
            digits,
            epochs=1,
            batch_size=256,
            hooks=[CtrlC()],
        )
    assert signal.getsignal(signal.SIGINT) is before  # fit's handler is gone again


def test_an_error_in_a_callback_stays_an_error(digits):
    from fnn.train import Hook

    class Broken(Hook):
        progress = True

        def on_progress(self, done):
            raise RuntimeError("not an interrupt")

    with pytest.raises(Exception, match="not an interrupt") as info:
        fit(
            nn.mlp((8,)),
            make_optimizer("adam", 1e-2),
            digits,
            epochs=1,
            batch_size=256,
            hooks=[Broken()],
        )
    assert not isinstance(info.value, KeyboardInterrupt)
