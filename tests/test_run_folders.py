"""Nothing a user has is ever lost or silently wrong (issue 24): each reproducer of the issue,
in the order it lists them. The fault-injection test (a real training process killed at random
moments and inside each write) is tests/test_kill_runs.py; the grep for writes that bypass
fnn.train.files is tests/test_safe_io.py.

Before: a --resume whose last.safetensors was gone restarted from scratch over the history
and best.safetensors; a new run overwrote results.json, plots, vocab.json and .lock of a
folder; a symlinked .lock or vocab.json.tmp had its target truncated; a renamed folder kept
being written by its run while a second run shared the old name; a corpus with a link loop was
read 41 times; other data of the same sizes resumed; seeds 0 and 2**32 drew the same feedback
matrices and samples; a full disk at the start left a folder that could be neither restarted
nor resumed; out of memory at init or save was a raw error or an abort; a damaged best was
found only after all training; sample read whole checkpoints and 2 GiB side files; and a
handful of raw tracebacks (sample --length 0, a metrics record with "epoch": "x")."""

import errno
import json
import os
import shutil
import signal
import threading
import time
import tracemalloc

import jax
import numpy as np
import pytest

import fnn
import fnn.train.run
from fnn import nn, train
from fnn.cli import main
from fnn.train import CheckpointError, DataError, RunDirError, RunLock, files
from fnn.train.text import Vocab, corpus_files, read_corpus

TINY = ["--hidden", "8", "--limit", "200", "--batch-size", "32", "--no-progress"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch run of a tiny MLP on 200 digits (copied by each test that uses it)."""
    out = str(tmp_path_factory.mktemp("runs") / "done")
    assert main(["train", "--out", out, "--epochs", "2", *TINY]) == 0
    return out


@pytest.fixture
def run_dir(finished, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(finished, out, symlinks=True)
    return out


def snapshot(folder):
    return {
        n: open(os.path.join(folder, n), "rb").read()
        for n in sorted(os.listdir(folder))
        if n != ".lock" and os.path.isfile(os.path.join(folder, n))
    }


def epochs_of(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["epoch"] for line in f]


def error_of(capsys):
    err = capsys.readouterr().err
    assert err.startswith("fnn train: error: ") and "Traceback" not in err, err
    return err


# ---- 1. a resume whose last checkpoint is gone --------------------------------------------------
@pytest.mark.parametrize("how", ["deleted", "dangling link"])
def test_a_lost_last_checkpoint_is_refused_not_restarted(run_dir, how, capsys):
    last = os.path.join(run_dir, "last.safetensors")
    os.remove(last)
    if how == "dangling link":
        os.symlink(os.path.join(run_dir, "nowhere.safetensors"), last)
    before = snapshot(run_dir)
    assert main(["train", "--resume", run_dir, "--no-progress"]) == 1
    err = error_of(capsys)
    if how == "deleted":
        assert (
            f"{last} is missing, but the run in {run_dir} has a history (metrics.jsonl "
            "(epochs 1..2), best.safetensors, results.json)" in err
        ), err
        assert f"`--resume {run_dir} --resume-from best`" in err
    else:
        assert f"{last} is a symbolic link (to {run_dir}/nowhere.safetensors)" in err, err
    assert snapshot(run_dir) == before


def test_resume_from_best_continues_from_it(run_dir, capsys):
    os.remove(os.path.join(run_dir, "last.safetensors"))
    best = train.read_checkpoint(os.path.join(run_dir, "best.safetensors"))[1]["epoch"]
    assert best == 1
    assert main(["train", "--resume", run_dir, "--resume-from", "best", "--no-progress"]) == 0
    assert (
        f"resuming {run_dir} after epoch 1 (optimizer step 5) from best.safetensors"
        in capsys.readouterr().out
    )
    assert epochs_of(run_dir) == [1, 2]
    assert train.read_checkpoint(os.path.join(run_dir, "last.safetensors"))[1]["epoch"] == 2
    assert main(["train", "--out", run_dir, "--resume-from", "best"]) == 2  # bad usage
    assert "--resume-from needs --resume" in error_of(capsys)


# ---- 2. a new run in a folder that holds files of a run -----------------------------------------
SIDE_FILES = {
    "results.json": b'{"test_acc": 0.9}\n',
    "curves.png": b"\x89PNG mine",
    "diagnostics.jsonl": b"not JSON at all\n",
    "diagnostics.png": b"\x89PNG mine",
    "vocab.json": b'{"kind": "bytes", "symbols": [10]}',
    ".lock": b"my notes\n",
}


def test_a_new_run_refuses_every_file_it_would_write(tmp_path, capsys):
    """Only config.json, metrics.jsonl, last and best used to be checked: the rest was
    silently overwritten, and a non-JSON diagnostics.jsonl failed the run after config.json
    was written."""
    for name, data in SIDE_FILES.items():
        out = tmp_path / name.strip(".")
        out.mkdir()
        (out / name).write_bytes(data)
        assert main(["train", "--out", str(out), "--epochs", "1", *TINY]) == 1
        err = error_of(capsys)
        if name == ".lock":
            assert f"{out}/.lock is not fnn's lock file" in err and "--overwrite" in err, err
        else:
            assert f"{out} already holds files a run writes ({name})" in err, err
            assert "pass --overwrite to replace them" in err
        assert (out / name).read_bytes() == data
        assert set(os.listdir(out)) <= {name, ".lock"}  # no config.json, nothing else
    out = tmp_path / "diagnostics.jsonl"
    assert main(["train", "--out", str(out), "--epochs", "1", "--overwrite", *TINY]) == 0
    assert "--overwrite: removed diagnostics.jsonl" in capsys.readouterr().out
    assert not (out / "diagnostics.jsonl").exists() and epochs_of(str(out)) == [1]
    assert main(["train", "--resume", str(out), "--overwrite"]) == 2  # bad usage
    assert "give one of them" in error_of(capsys)


# ---- 3. links inside the run folder ---------------------------------------------------------------
def test_links_in_a_run_folder_are_never_written_through(tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    out = tmp_path / "run"
    out.mkdir()
    os.symlink(victim, out / ".lock")
    assert main(["train", "--out", str(out), *TINY]) == 1
    assert f"{out}/.lock is a symbolic link (to {victim})" in error_of(capsys)
    os.remove(out / ".lock")
    os.symlink(victim, out / "vocab.json.tmp")  # the old fixed name of vocab.json's temporary
    Vocab((10, 97)).save(str(out))
    assert Vocab.load(str(out)) == Vocab((10, 97))
    os.remove(out / "vocab.json")
    for name in ("metrics.jsonl", "vocab.json"):
        os.symlink(victim, out / name)
        with pytest.raises(RunDirError, match=f"{name} is a symbolic link"):
            files.write_file(str(out / name), b"x\n", append=name.endswith("jsonl"))
        with pytest.raises((RunDirError, DataError), match="symbolic link"):
            files.read_file(str(out / name), limit=100)
        os.remove(out / name)
    assert victim.read_bytes() == b"precious"


# ---- 4. a renamed folder --------------------------------------------------------------------------
def test_the_lock_is_on_the_folder_and_moves_with_it(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    with RunLock(a) as held:
        os.rename(a, b)
        with RunLock(a):  # a new folder at the old name: its own lock, nothing shared
            pass
        with pytest.raises(
            RunDirError, match=f"run directory {b} is in use by process {os.getpid()}"
        ):
            RunLock(b).acquire()
        with pytest.raises(
            RunDirError,
            match=f"the run directory {a} was renamed, moved or "
            f"replaced while this process was using it",
        ):
            files.write_file("metrics.jsonl", b"{}\n", folder=held.folder, append=True)
    assert not os.path.exists(os.path.join(a, "metrics.jsonl"))


def test_a_run_whose_folder_is_renamed_stops(tmp_path, monkeypatch, capsys):
    """The run used to keep writing to the old path, where a second run then shared it: both
    exited 0 and metrics.jsonl read 1, 2, 2, 3, 3."""
    out, moved = str(tmp_path / "run"), str(tmp_path / "moved")
    real = fnn.train.run.jsonl.append

    def append_then_rename(*args, **kw):
        real(*args, **kw)
        if not os.path.exists(moved):
            os.rename(out, moved)

    monkeypatch.setattr(fnn.train.run.jsonl, "append", append_then_rename)
    assert main(["train", "--out", out, "--epochs", "3", *TINY]) == 1
    assert f"the run directory {out} was renamed, moved or replaced" in error_of(capsys)
    monkeypatch.undo()
    assert not os.path.exists(out) and epochs_of(moved) == [1]
    assert train.read_checkpoint(os.path.join(moved, "last.safetensors"))[1]["epoch"] == 1


# ---- 6. corpus folders with link loops ------------------------------------------------------------
def test_a_corpus_folder_is_walked_without_following_links(tmp_path):
    """One link loop used to read every file 41 times (the test text equal to the training
    text); two loops hung, memory growing."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_bytes(b"alpha\n")
    (tmp_path / "sub" / "b.txt").write_bytes(b"beta\n")
    os.symlink(tmp_path, tmp_path / "sub" / "loop")
    os.symlink(tmp_path / "sub", tmp_path / "loop2")
    os.symlink(tmp_path / "a.txt", tmp_path / "sub" / "same.txt")  # the same file again
    assert corpus_files(str(tmp_path)) == [str(tmp_path / "a.txt"), str(tmp_path / "sub" / "b.txt")]
    assert read_corpus(str(tmp_path))[0] == b"alpha\nbeta\n"


# ---- 7. a resume on other data of the same sizes ---------------------------------------------------
def test_a_resume_on_other_data_of_the_same_sizes_is_refused(tmp_path, capsys):
    from test_data import write_mnist

    write_mnist(tmp_path / "a", n_train=40, seed=0)
    write_mnist(tmp_path / "b", n_train=40, seed=1)  # other images and labels, same sizes
    out = str(tmp_path / "run")
    args = ["--dataset", "mnist", "--hidden", "4", "--batch-size", "8", "--no-progress"]
    assert (
        main(["train", "--out", out, "--data-dir", str(tmp_path / "a"), "--epochs", "1", *args])
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                "--resume",
                out,
                "--data-dir",
                str(tmp_path / "b"),
                "--epochs",
                "2",
                "--no-progress",
            ]
        )
        == 1
    )
    err = error_of(capsys)
    assert (
        "was trained on other data than this run loads (the same sizes but other "
        "contents: sha256" in err
    ), err
    text = tmp_path / "t.txt"
    text.write_bytes(b"abcdefgh" * 40)
    shuffled = tmp_path / "s.txt"
    shuffled.write_bytes(b"hgfedcba" * 40)
    kw = dict(context=8, val_fraction=0.1)
    assert (
        train.load_dataset("text", str(text), **kw).sha256
        != train.load_dataset("text", str(shuffled), **kw).sha256
    )


# ---- 8. seeds ----------------------------------------------------------------------------------
def test_every_draw_uses_the_whole_seed(capsys):
    from fnn.train.rule_specs import make_rules

    params = nn.mlp((8,)).init(jax.random.PRNGKey(0), (4,))[0]
    fa = {
        s: make_rules(["affine=feedback_alignment"], params, s)["affine"]
        for s in (0, 2**32, 2**63, 2**64 - 1)
    }
    matrices = {s: np.asarray(r.feedback["1_dense"]).tobytes() for s, r in fa.items()}
    assert len(set(matrices.values())) == 4
    with pytest.raises(SystemExit):
        main(["sample", "nowhere", "--seed", str(2**64)])
    assert (
        "--seed: must be an integer between 0 and 2**64-1, got '18446744073709551616'"
        in capsys.readouterr().err
    )
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64-1\]"):
        train.sample.sample_run("nowhere", seed=-1)


# ---- 9. a failure at the start ------------------------------------------------------------------
@pytest.mark.parametrize("failing", [1, 2, 3])
def test_a_full_disk_at_the_start_leaves_a_folder_that_resumes(
    tmp_path, monkeypatch, failing, capsys
):
    """A failure between writing metrics.jsonl and config.json used to leave a folder that
    could be neither restarted nor resumed. Write `failing` of the run (the lock's record
    first) fails with a full disk; the folder then restarts or resumes."""
    out = str(tmp_path / "run")
    real, count = files.write_file, [0]

    def full(*args, **kw):
        count[0] += 1
        if count[0] == failing:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kw)

    for module in (fnn.train.lock, fnn.train.run, fnn.train.jsonl, fnn.train.text):
        monkeypatch.setattr(module, "write_file", full)
    assert main(["train", "--out", out, "--epochs", "1", *TINY]) == 1
    assert "No space left on device" in error_of(capsys)
    monkeypatch.undo()
    if os.path.exists(os.path.join(out, "config.json")):
        assert main(["train", "--resume", out, "--no-progress"]) == 0
        assert epochs_of(out) == [1]
    elif os.path.exists(out):  # a new run may start there
        with files.Folder(out) as folder:
            assert fnn.train.run._check_new(folder, overwrite=False) == []


# ---- 10. out of memory outside the training step -----------------------------------------------
def resource_exhausted():
    try:
        return jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1 bytes")
    except TypeError:
        pytest.skip("this jaxlib's JaxRuntimeError cannot be made by hand")


def test_out_of_memory_at_init_and_save_is_explained(tmp_path, monkeypatch, capsys):
    error = resource_exhausted()

    def exhausted(*a, **k):
        raise error

    monkeypatch.setattr(fnn.train.run, "init_train_state", exhausted)
    out = str(tmp_path / "run")
    assert main(["train", "--out", out, "--epochs", "1", *TINY]) == 1
    err = error_of(capsys)
    assert "out of memory while initializing the parameters (XLA: RESOURCE_EXHAUSTED" in err
    assert "The run needs parameters 2.4 KiB, optimizer state" in err and "--batch-size" in err
    monkeypatch.undo()
    ts = train.init_train_state(nn.mlp((8,)), train.make_optimizer(), (4,), 0)
    path = str(tmp_path / "x.safetensors")
    train.save_train_state(path, ts)
    before = open(path, "rb").read()

    def no_memory(*a, **k):
        raise MemoryError

    monkeypatch.setattr(fnn.train.checkpoint, "safetensors_chunks", no_memory)
    with pytest.raises(
        train.OutOfMemoryError,
        match=r"out of memory while saving .*x.safetensors"
        r".*the previous x.safetensors is unchanged",
    ):
        train.save_train_state(path, ts)
    assert open(path, "rb").read() == before
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


# ---- 11. a damaged best checkpoint --------------------------------------------------------------
def test_a_damaged_best_is_found_at_once(run_dir, tmp_path, monkeypatch, capsys):
    best = os.path.join(run_dir, "best.safetensors")
    data = bytearray(open(best, "rb").read())
    data[-3] ^= 0xFF
    open(best, "wb").write(bytes(data))
    before = snapshot(run_dir)
    assert main(["train", "--resume", run_dir, "--epochs", "3", "--no-progress"]) == 1
    err = error_of(capsys)
    assert f"{best} is damaged: the sha256" in err and f"remove {best} to resume" in err, err
    assert snapshot(run_dir) == before
    # damaged as it is written (a failing disk): found when it is written (the run directory
    # saves best with verify=True), and it never replaces the previous one
    real = files.write_file

    def flipping(path, data, **kw):
        blob = bytearray(b"".join(bytes(c) for c in data))
        blob[-1] ^= 1
        return real(path, bytes(blob), **kw)

    ts = train.init_train_state(nn.mlp((8,)), train.make_optimizer(), (4,), 0)
    path = str(tmp_path / "best.safetensors")
    train.save_train_state(path, ts)
    before = open(path, "rb").read()
    monkeypatch.setattr(fnn.train.checkpoint, "write_file", flipping)
    with pytest.raises(
        CheckpointError,
        match=f"{path} was damaged as it was written .* the previous best.safetensors is unchanged",
    ):
        train.save_train_state(path, ts, verify=True)
    assert open(path, "rb").read() == before


# ---- 12. bounded reads of what sample and --resume read -----------------------------------------
def test_side_files_are_read_with_a_bound(run_dir, capsys):
    for name in ("config.json", "metrics.jsonl"):
        path = os.path.join(run_dir, name)
        keep = open(path, "rb").read()
        with open(path, "r+b") as f:
            f.truncate(2 << 30)  # a sparse 2 GiB file: used to be read whole (4.4-5 GB)
        assert main(["train", "--resume", run_dir, "--no-progress"]) == 1
        assert f"{path} holds 2.0 GiB, more than the" in error_of(capsys)
        open(path, "wb").write(keep)
    vocab = os.path.join(run_dir, "vocab.json")
    with open(vocab, "wb") as f:
        f.truncate(2 << 30)
    with pytest.raises(DataError, match="vocab.json holds 2.0 GiB, more than the 64.0 KiB"):
        Vocab.load(run_dir)


def test_a_checkpoint_is_read_keeping_only_what_is_asked(tmp_path):
    """sample used to read a whole checkpoint before checking it (a 5 GB sparse file cost 5 GB
    of memory): the data is now read tensor by tensor, only the templates' kept."""
    model = nn.mlp((8,))
    params = model.init(jax.random.PRNGKey(0), (4,))[0]
    path = str(tmp_path / "big.safetensors")
    junk = np.zeros(48 << 20, np.uint8)  # 48 MiB that nobody asked for
    train.save_checkpoint(path, {"params": params, "junk": {"x": junk}})
    del junk
    tracemalloc.start()
    try:
        trees, _ = train.load_checkpoint(path, {"params": params})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak
    np.testing.assert_array_equal(trees["params"]["1_dense"]["w"], params["1_dense"]["w"])
    with open(path, "r+b") as f:  # and the digest still covers all of it
        f.seek(-10, os.SEEK_END)
        f.write(b"\1")
    with pytest.raises(CheckpointError, match="is damaged: the sha256"):
        train.load_checkpoint(path, {"params": params})


# ---- 13. raw tracebacks and silent ignores -----------------------------------------------------
@pytest.mark.parametrize("value", ['"x"', "null", "0", "true"])
def test_a_metrics_record_with_a_bad_epoch_is_named(run_dir, value, capsys):
    path = os.path.join(run_dir, "metrics.jsonl")
    lines = open(path).read().splitlines()
    lines[0] = lines[0].replace('"epoch": 1', f'"epoch": {value}')
    open(path, "w").write("\n".join(lines) + "\n")
    assert main(["train", "--resume", run_dir, "--epochs", "3", "--no-progress"]) == 1
    assert f"{path}: record 1: field 'epoch' must be an integer >= 1, got " in error_of(capsys)


def test_an_older_checkpoint_resumes_with_a_note(run_dir, capsys):
    """Runs of an older fnn used to resume unverified without a word."""
    from fnn.train.checkpoint import digest, read_header, safetensors_chunks

    last = os.path.join(run_dir, "last.safetensors")
    tensors, _ = train.read_checkpoint(last)
    raw = dict(read_header(last).raw_meta)
    data = json.loads(raw["data"])
    del data["sha256"]
    raw["data"] = json.dumps(data)
    raw["sha256"] = json.dumps(digest(tensors, raw))
    files.write_file(last, safetensors_chunks(tensors, raw))
    assert main(["train", "--resume", run_dir, "--no-progress"]) == 0
    assert (
        f"note: {last} records no fingerprint of its data (an older fnn)" in capsys.readouterr().out
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sample", "x", "--length", "0"], "--length: must be an integer >= 1 (bytes to generate)"),
        (["train", "--hidden", ""], "hidden must list one or more widths"),
        (["train", "--channels", "8"], "--channels does not apply to --model mlp"),
        (["train", "--context", "16"], "--context does not apply to --dataset digits"),
        (["train", "--data-dir", "x"], "--data-dir does not apply to --dataset digits"),
        (["train", "--model", "cnn", "--hidden", "8"], "--hidden does not apply to --model cnn"),
        (
            ["train", "--model", "transformer", "--activation", "tanh"],
            "--activation does not apply to --model transformer",
        ),
    ],
)
def test_options_out_of_range_or_not_applying_are_refused(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own error
        code = e.code
    assert code in (1, 2)
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_sigterm_saves_the_running_epoch_like_ctrl_c(tmp_path, capsys):
    """SIGTERM used to kill the run without saving the running epoch."""
    out = str(tmp_path / "run")
    last = os.path.join(out, "last.safetensors")

    def terminate_once_training():
        for _ in range(600):
            if os.path.exists(last):  # fit runs: its handler is in place
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    timer = threading.Thread(target=terminate_once_training, daemon=True)
    timer.start()
    code = main(["train", "--out", out, "--epochs", "100000", "--chunk-seconds", "0", *TINY])
    timer.join()
    assert code == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "s after SIGTERM and saved" in err and f"--resume {out}" in err, err
    assert os.path.isfile(os.path.join(out, "last.safetensors"))


def test_ctrl_c_while_xla_compiles_stops_within_a_second(monkeypatch):
    """It used to wait for the compilation (4.4 s seen)."""
    real, release = fnn.train.loop.interruptible, threading.Event()

    def slow(fn, stop, poll=0.05, tick=None):
        def compile_slowly():
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while XLA compiles (10 s here)
            release.wait(10)
            return fn()

        return real(compile_slowly, stop, poll, tick)

    monkeypatch.setattr(fnn.train.loop, "interruptible", slow)
    data = train.load_dataset("digits", limit=100)
    saved = []
    hook = type("Save", (train.Hook,), {"on_interrupt": lambda self, ts: saved.append(ts)})()
    t0 = time.perf_counter()
    with pytest.raises(train.TrainingInterrupted) as e:
        train.fit(nn.mlp((8,)), train.make_optimizer(), data, epochs=1, batch_size=16, hooks=[hook])
    assert time.perf_counter() - t0 < 8 and e.value.waited_s < 1.0
    assert saved and saved[0].epoch == 0 and saved[0].step == 0
    workers = fnn.train.interrupt.abandoned()
    assert len(workers) == 1  # still compiling: `python -m fnn` ends with os._exit then
    release.set()
    workers[0].join(60)
    assert not fnn.train.interrupt.abandoned()


def test_nan_parameters_never_start_training_nor_become_best(tmp_path):
    model, opt = nn.mlp((8,)), train.make_optimizer()
    data = train.load_dataset("digits", limit=100)
    ts = train.init_train_state(model, opt, data.input_shape, 0)
    bad = ts.params["1_dense"]["w"].at[0, 0].set(np.nan).at[1, 1].set(np.inf)
    broken = train.TrainState(
        {**ts.params, "1_dense": {**ts.params["1_dense"], "w": bad}}, ts.state, ts.opt_state, ts.key
    )
    with pytest.raises(
        DataError,
        match=r"start: the training state holds NaN/inf values in "
        r"params/1_dense/w \(1 NaN, 1 inf of 512\)",
    ):
        train.fit(model, opt, data, epochs=1, start=broken)
    notes = []
    with files.Folder(str(tmp_path), create=True) as folder:
        hook = fnn.train.run.RunDirectory(
            str(tmp_path),
            train.TrainConfig(),
            best_acc=0.1,
            health=fnn.train.run.HealthLog(str(tmp_path), folder=folder),
            primary=True,
            log=notes.append,
            folder=folder,
        )
        hook.on_epoch_end(broken, {"epoch": 1, "val_acc": 0.5, "val_loss": 1.0})
    assert not (tmp_path / "best.safetensors").exists() and (tmp_path / "last.safetensors").exists()
    assert "its parameters hold NaN/inf (params/1_dense/w (1 NaN, 1 inf of 512))" in notes[0]


def test_rule_scopes_reach_worker_threads_through_copy_context():
    """`with fnn.rules(...)` is per thread (a contextvar); contextvars.copy_context carries it."""
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    def loss(x):
        return fnn.ops.relu(x).sum()  # relu's own rule: dx = g * 1[x > 0]

    x = jax.numpy.array([-1.0, 2.0])
    with fnn.rules(relu=fnn.rulebook.straight_through), ThreadPoolExecutor(1) as pool:
        here = fnn.grad(loss)(x)
        bare = pool.submit(fnn.grad(loss), x).result()
        carried = pool.submit(contextvars.copy_context().run, fnn.grad(loss), x).result()
    np.testing.assert_array_equal(here, [1.0, 1.0])
    np.testing.assert_array_equal(carried, [1.0, 1.0])
    np.testing.assert_array_equal(bare, [0.0, 1.0])


def test_float_validation_labels_are_refused_before_training():
    d = train.load_dataset("digits", limit=100)
    import dataclasses

    wrong = dataclasses.replace(d, y_val=d.y_val.astype(np.float32))
    with pytest.raises(
        DataError,
        match=r"y_val holds float targets \(float32\) but y_train "
        r"integer class labels \(int32\)",
    ):
        train.fit(
            nn.mlp((8,)),
            train.make_optimizer(),
            wrong,
            epochs=1,
            callback=lambda ts, r: pytest.fail("trained"),
        )


def test_sample_draws_with_the_whole_seed(tmp_path, capsys):
    """sample --seed used PRNGKey(seed): seed 0 sampled what seed 2**32 did, and seeds >= 2**63
    raised a raw OverflowError. (A text run made by hand: its config, vocabulary and an
    untrained checkpoint, which is all sample reads.)"""
    out = str(tmp_path / "lm")
    config = train.TrainConfig(model="rnn", dataset="text", hidden=(8,), context=8)
    os.mkdir(out)
    files.write_file(os.path.join(out, "config.json"), json.dumps(config.to_dict()).encode())
    vocab = Vocab(tuple(range(97, 123)))
    vocab.save(out)
    model = nn.build_model("rnn", len(vocab), **config.model_options())
    params, state, _ = model.init(jax.random.PRNGKey(0), (8,))
    train.save_checkpoint(os.path.join(out, "best.safetensors"), {"params": params, "state": state})
    kw = dict(length=24, temperature=1.0)
    texts = {s: train.sample.sample_run(out, "ab", seed=s, **kw) for s in (0, 2**32)}
    assert (
        main(
            [
                "sample",
                out,
                "--prompt",
                "ab",
                "--length",
                "24",
                "--temperature",
                "1",
                "--seed",
                str(2**63),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out.encode()
    assert printed.startswith(b"ab") and printed.endswith(b"\n")
    texts[2**63] = printed[2:-1]
    assert len(set(texts.values())) == 3 and all(len(t) == 24 for t in texts.values())
    assert main(["sample", out, "--top-k", "27"]) == 1
    assert "top_k must be at most the vocabulary's 26 bytes, got 27" in capsys.readouterr().err
